"""imgclf: image URL lists to a trained, evaluated torchvision classifier.

Stages, one subpackage each, imported forward along the flow only:
acquire (no torch) → dataset → train (Catalyst) → evaluate (numpy/sklearn) → serve.
Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
