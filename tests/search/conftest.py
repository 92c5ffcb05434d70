"""Real weights files (tests/support/trained.py) for the search command tests."""

from tests.support.trained import fitted_weights, mobilenet_weights, tiny_root

__all__ = ["fitted_weights", "mobilenet_weights", "tiny_root"]
