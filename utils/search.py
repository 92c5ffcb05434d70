"""Similar images and new classes without retraining, on a trained model's embeddings.

Index a data folder (incremental: only new images are embedded; a stopped build resumes):
    python utils/search.py build [--weights weights/mobilenet_v3_small.pth] [--data data/images]
                                 [--index index/] [--index-kind auto|exact|approximate]
The k nearest gallery images of files, folders and http(s) URLs (and pictures/similar.png):
    python utils/search.py query PATH_OR_URL [...] [--index index/] [--k 5] [--json]
Retrieval metrics (reports/retrieval.json, pictures/embeddings.png):
    python utils/search.py evaluate [--index index/] [--data DIR] [--split test]
A new class from a few images:
    python utils/search.py add-class NAME DIR_OR_FILES... [--index index/]

Exit codes: 0 done, 1 some images failed (listed), 2 bad argument or input file, 130 interrupted.
"""

import sys

from imgclf.commands.search import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
