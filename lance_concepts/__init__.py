"""lance-concepts: make an image collection interpretable and queryable.

CLIP embeddings, SpLiCE concept decompositions and FALCON feature labels stored in LanceDB and
queried with DuckDB. The functions below are the ones the CLI commands of the same name call; heavy
modules (torch, open_clip, lancedb) are imported on first use so ``import lance_concepts`` is cheap.

    import lance_concepts as lc
    lc.ingest("photos/", "lake.lancedb")
    lc.filter("lake.lancedb", "desert", 0.1)
    lc.search("lake.lancedb", "a camel", where="concept('desert') < 0.05")
    con = lc.connect("lake.lancedb")          # DuckDB connection with images/concepts views

The package is laid out by the data flow (see README, "Architecture"): ``models`` -> ``concepts`` ->
``lake`` (sources, decode, batch, ingest, store, rollup) -> ``query`` / ``retrieval`` -> ``cli``.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("lance-concepts")
except PackageNotFoundError:  # running from a source checkout without installation
    __version__ = "0.0.0+unknown"

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "load_encoder": "models.encoder", "ClipEncoder": "models.encoder",
    "load_vocabulary": "concepts.vocabulary", "Vocabulary": "concepts.vocabulary",
    "build_vocabulary": "concepts.vocabulary",
    "SpliceDecomposer": "concepts.splice", "decompose": "concepts.splice",
    "FalconExplainer": "concepts.falcon",
    "ingest": "lake.ingest", "decompose_table": "lake.decompose", "rollup": "lake.rollup",
    "repair": "lake.repair",
    "falcon": "lake.features",
    "connect": "query.connection", "prepare": "query.connection", "sql": "query.named",
    "filter": "query.filter", "drift": "query.drift", "spurious": "query.spurious", "report": "query.html",
    "slices": "query.slices", "quality": "query.quality", "duplicates": "retrieval.duplicates",
    "backfill_quality": "lake.backfill",
    "check": "query.check",
    "search": "retrieval.searcher", "index": "retrieval.index", "edit": "retrieval.edit",
    "serve": "serve.server",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lance_concepts' has no attribute {name!r}")


# Plain-LanceDB users get `table.search("text")` on ingested tables: register the embedding
# function as soon as lancedb is imported (this import is cheap: no torch, no lancedb).
from .retrieval.registration import install_lancedb_hook as _install_lancedb_hook  # noqa: E402

_install_lancedb_hook()
