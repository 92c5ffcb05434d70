"""Fixtures from tests/support/trained.py: real weights files on a tiny image folder."""

from tests.support.trained import fitted_weights, mobilenet_weights, tiny_root

__all__ = ["fitted_weights", "mobilenet_weights", "tiny_root"]
