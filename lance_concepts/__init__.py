"""lance-concepts: make an image collection interpretable and queryable.

CLIP embeddings, SpLiCE concept decompositions and FALCON feature labels stored in LanceDB and
queried with DuckDB. The public functions below are the same ones the CLI commands call; heavy
modules (torch, open_clip, lancedb) are imported on first use so ``import lance_concepts`` is cheap.

    import lance_concepts as lc
    from lance_concepts.ingest import ingest
    ingest("photos/", "lake.lancedb")
    con = lc.connect("lake.lancedb")          # DuckDB connection with images/concepts views
    lc.filter("lake.lancedb", "desert", 0.1)
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("lance-concepts")
except PackageNotFoundError:  # running from a source checkout without installation
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_EXPORTS = {
    "load_encoder": "encoder", "ClipEncoder": "encoder",
    "load_vocabulary": "vocabulary", "Vocabulary": "vocabulary", "build_vocabulary": "vocabulary",
    "SpliceDecomposer": "splice", "decompose": "splice",
    "decompose_table": "ingest", "connect": "sql",
    "filter": "reports", "drift": "reports", "spurious": "reports", "report": "reports",
    "FalconExplainer": "falcon", "index": "search", "edit": "search",
}
# ingest(), sql(), rollup(), falcon(), search() and demo() share their module's name: call them as
# lance_concepts.ingest.ingest(...) etc. (or `from lance_concepts.ingest import ingest`).

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lance_concepts' has no attribute {name!r}")

# Plain-LanceDB users get `table.search("text")` on ingested tables: register the embedding
# function as soon as lancedb is imported (this import is cheap: no torch, no lancedb).
from .search import install_lancedb_hook as _install_lancedb_hook  # noqa: E402

_install_lancedb_hook()
