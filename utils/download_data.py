"""Download labelled image URLs into `<out>/<label>/` with a manifest, or import an archive.

Usage:
    python utils/download_data.py --urls data/urls --out data/images
    python utils/download_data.py --urls list.csv --out data/images --resize 512 --retry-failed
    python utils/download_data.py --import fetched.zip --out data/images
    python utils/download_data.py --help          # every option with its default

Exit codes: 0 done (per-URL failures are rows in manifest.csv), 2 bad argument or input file,
130 interrupted (Ctrl-C; the manifest is flushed, rerun to resume).
"""

import sys

from imgclf.commands.download import main

if __name__ == "__main__":
    sys.exit(main())
