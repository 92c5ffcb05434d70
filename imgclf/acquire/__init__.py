"""Image acquisition: URL lists in, validated images + `manifest.csv` out (no torch here).

    reader     URL lists (CSV / TSV / JSON Lines / `<label>.txt` folders, `.gz` too), streamed
    importer   `--import`: a zip, tar or folder of `<label>/<image>` files as input rows
    fetcher    asyncio + aiohttp: limits, timeouts, redirects, retries, byte cap, opt-out
    batching   validation work handed to the worker processes in batches, from asyncio
    validator  in worker processes: sniff format, pixel limit before decode, strict full decode
    layout     where things live under `--out`: file names from the URL, staging, cleanup
    labels     class labels → safe folder names, no two labels in one folder
    manifest   `<out>/manifest.csv`, one row per input URL in input order; resuming from it
    reasons    the fixed vocabulary of `status` and `reason` values
    stats      run statistics: `download_stats.json` and the printed summary
    pipeline   `run_download`: one run, reader → fetcher → validator → files + manifest
    shards     the list cut into shards, one `run_download` per shard, part manifests merged
    distributed  `--distributor ray`: shards on one runner actor per core, retries, one bar

`imgclf.commands.download.main` is what `utils/download_data.py` calls.
"""
