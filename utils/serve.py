"""Serve a trained model over HTTP: prediction, health, metrics (FastAPI on uvicorn).

    python utils/serve.py [--weights weights/mobilenet_v3_small.pth] [--index index/]
                          [--host 127.0.0.1] [--port 8000] [--backend onnxruntime]
    curl -F file=@photo.jpg http://127.0.0.1:8000/predict
    curl -F file=@photo.jpg 'http://127.0.0.1:8000/search?k=5'

Endpoints: POST /predict, POST /search, GET /health/live, /health/ready, /metrics, /info; the
OpenAPI page is /docs. SIGTERM drains the requests in progress, then exits 0.
Exit codes: 0 stopped by a signal after draining, 2 bad argument, weights file or --index
folder (damaged, or built with other weights).
"""

import sys

from imgclf.commands.serve import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
