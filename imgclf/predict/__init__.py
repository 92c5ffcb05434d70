"""Running a Predictor over inputs: what `--predict` does, and what the report runs on its images.

inputs.py      --predict arguments (files, folders, URLs) → items; bounded URL fetch
batches.py     a DataLoader over items: decode + preprocess in workers, per-item errors, timings
prediction.py  --predict: top-k per image with latency, as JSON-ready dict or text
"""
