"""The command line: one thin click command per Python function, and all output formatting.

Each module registers its commands on the :func:`main` group when imported; ``main`` is the
``lance-concepts`` entry point.
"""
from . import check, demo, falcon, ingest, quality, repair, reports, search, serve, slices, vocab  # noqa: F401  (register their commands)
from .group import main

__all__ = ["main"]
