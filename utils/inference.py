"""Evaluate a trained model, classify images, or export the model.

Report on the held-out split stored with the weights (or on --data DIR):
    python utils/inference.py [--weights weights/mobilenet_v3_small.pth] [--data DIR]
                              [--split test] [--out reports/] [--pictures pictures/]
Classify image files, folders and http(s) URLs:
    python utils/inference.py --predict PATH [PATH ...] [--topk 5] [--json]
Export next to the weights (class names and preprocessing embedded):
    python utils/inference.py --export onnx|torchscript [--weights ...]
Any of them with --backend torch|torchscript|onnxruntime; report and --predict also with --tta
(test-time augmentation: each image's probabilities averaged with its horizontal mirror's).

Exit codes: 0 done, 1 some images failed (listed), 2 bad argument or input file, 130 interrupted.
"""

import sys

from imgclf.commands.inference import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
