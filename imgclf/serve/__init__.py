"""The HTTP service over a trained model (issue 12); inference itself is imgclf/model."""
