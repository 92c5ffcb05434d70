"""Fixtures from tests/support/trained.py: real weights files on a tiny image folder, and `cli`,
utils/inference.py loaded as a module so `cli.main([...])` runs it in-process."""

from tests.support.trained import cli, fitted_weights, mobilenet_weights, tiny_root

__all__ = ["cli", "fitted_weights", "mobilenet_weights", "tiny_root"]
