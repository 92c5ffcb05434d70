"""The evaluate stage: pure metric functions and the report, no torch.

metrics.py  vectorised metrics, bootstrap confidence intervals, exact chance baselines
summary.py  every number of an evaluation in one JSON-ready dict
report.py   that dict as terminal text, metrics.json, predictions.csv and pictures
"""
