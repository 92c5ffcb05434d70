"""The serve stage: run a trained model on images and export it.

spec.py        class names + preprocessing that travel inside every exported file
export.py      weights file → ONNX (opset 18, dynamic batch) or TorchScript
predictor.py   Predictor = spec + engine (eager torch, TorchScript, ONNX Runtime)
decoding.py    image bytes → uint8 RGB tensor, open_rgb's pixels (JPEG fast path)
single_image.py  the eval preset written into a reused engine input (Predictor.classify)
inputs.py      --predict arguments (files, folders, URLs) → items; bounded URL fetch
batches.py     DataLoader over items, per-item errors and timings
evaluation.py  the report on the stored split or --data (what utils/inference.py runs by default)
prediction.py  --predict: top-k per image with latency, as text or JSON
"""
