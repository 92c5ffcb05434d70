"""Image acquisition: URL lists in, validated images + `manifest.csv` out (no torch here).

The flow, one module per stage:

    reader     URL lists (CSV / TSV / JSON Lines / `<label>.txt` folders, `.gz` too), streamed
    fetcher    asyncio + aiohttp: limits, timeouts, redirects, retries, byte cap, opt-out
    validator  worker processes: sniff format, pixel limit before decode, strict full decode
    writer     staged files renamed into `<out>/<label>/<key>.<ext>` in input order, manifest rows

`pipeline.run_download` wires them together; `cli.main` is what `utils/download_data.py` calls.
"""
