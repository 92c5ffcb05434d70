"""The evaluate stage: pure metric functions, the report, and the driver that runs a model.

metrics.py  vectorised metrics, bootstrap confidence intervals, exact chance baselines
summary.py  every number of an evaluation in one JSON-ready dict
report.py   that dict as terminal text, metrics.json, predictions.csv and pictures
evaluation.py  the report driver (`python utils/inference.py`): held-out images → predictor →
               summary → report files; the only module here that imports torch (via predict)
"""
