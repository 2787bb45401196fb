"""lance-concepts: make an image collection interpretable and queryable.

CLIP embeddings, SpLiCE concept decompositions and FALCON feature labels stored in LanceDB and
queried with DuckDB. Heavy modules (torch, open_clip, lancedb) are imported lazily so that
``import lance_concepts`` stays cheap.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("lance-concepts")
except PackageNotFoundError:  # running from a source checkout without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
