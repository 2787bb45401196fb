"""LanceDB's embedding-function registry: ``table.search("text")`` for plain lancedb users.

The table's CLIP model is registered under ``lance-concepts-clip``; the registration is installed as an
import hook so that ``import lance_concepts`` stays cheap (no lancedb, no torch until a text query).
"""
from __future__ import annotations

from typing import Mapping

from .table import load_checked_encoder

EMBEDDING_FUNCTION_NAME = "lance-concepts-clip"


def lancedb_registration_ready() -> tuple[bool, str]:
    """Whether recording the embedding function in a table's metadata is safe for the project's writers.

    LanceDB looks the recorded function up on every write to the table (``add``, ``merge_insert``): a
    process that has not registered it fails with ``KeyError: 'lance-concepts-clip'``; and LanceDB
    then validates the vector column (rejecting the null vectors of error rows) and tries to compute
    it for writes that leave it out (column-subset updates fail on the missing source column). Safe
    when ``import lance_concepts`` registers the function and store.py writes through the Lance
    dataset API, which ignores LanceDB's embedding functions.
    """
    from ..lake import store

    if not getattr(store, "WRITES_BYPASS_LANCEDB_EMBEDDINGS", False):
        return False, ("store.py writes through LanceDB's embedding-function path (error rows' null vectors "
                       "and column-subset updates would be rejected)")
    return True, ""


# =====================================================================================================
# LanceDB embedding-function registry
# =====================================================================================================
def embedding_function_metadata(meta: Mapping, *, vector_column: str = "embedding",
                                source_column: str = "uri") -> list[dict]:
    """The ``embedding_functions`` schema-metadata entry for a table's model, with explicit arguments."""
    return [{
        "name": EMBEDDING_FUNCTION_NAME,
        "model": {"model": meta.get("model_name"), "pretrained": meta.get("pretrained"),
                  "fingerprint": meta.get("model_fingerprint"), "device": "auto"},
        "source_column": source_column,
        "vector_column": vector_column,
    }]


_REGISTERED = False


def register_embedding_function() -> None:
    """Register ``lance-concepts-clip`` in LanceDB's embedding-function registry (idempotent).

    Tables indexed by :func:`index` name it in their ``embedding_functions`` schema metadata, so that
    ``table.search("a dog on the beach")`` embeds the text with the table's own CLIP model (checked
    against the recorded fingerprint). LanceDB looks the name up whenever it opens such a table for a
    text query or a write, so any process that queries or writes it with plain ``lancedb`` must have
    imported ``lance_concepts`` first (the import installs a hook that registers the function as soon
    as ``lancedb`` is imported; it does not import ``lancedb`` itself).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from typing import List, Optional

    from lancedb.embeddings.base import EmbeddingFunction
    from lancedb.embeddings.registry import EmbeddingFunctionRegistry

    registry = EmbeddingFunctionRegistry.get_instance()
    try:
        registry.get(EMBEDDING_FUNCTION_NAME)
        _REGISTERED = True
        return
    except KeyError:
        pass

    class LanceConceptsCLIP(EmbeddingFunction):
        """The CLIP model of a lance-concepts table (open_clip, or the offline demo model)."""

        model: str = "ViT-B-32"
        pretrained: Optional[str] = "laion2b_s34b_b79k"
        fingerprint: Optional[str] = None
        device: str = "auto"

        def _encoder(self):
            return load_checked_encoder(self.model, self.pretrained, self.fingerprint, self.device)

        def ndims(self) -> int:
            return int(self._encoder().embed_dim)

        def compute_query_embeddings(self, query, *args, **kwargs) -> List:
            from PIL import Image

            enc = self._encoder()
            if isinstance(query, str):
                return [enc.encode_text([query])[0]]
            if isinstance(query, Image.Image):
                return [enc.encode_images([query.convert("RGB")])[0]]
            raise TypeError("lance-concepts-clip embeds a text string or a PIL image")

        def compute_source_embeddings(self, sources, *args, **kwargs) -> List:
            """Always ``None``: image embeddings come from ``lance-concepts ingest`` (decode workers,
            error rows, concept decomposition), never from LanceDB's write path. A row written through
            plain lancedb without a vector keeps a null one, like an error row."""
            return [None] * len(self.sanitize_input(sources))

    LanceConceptsCLIP.__module__ = __name__
    registry.register(EMBEDDING_FUNCTION_NAME)(LanceConceptsCLIP)
    _REGISTERED = True


class _RegisterAfterImport:
    """``sys.meta_path`` hook: registers the embedding function right after LanceDB's registry module
    is imported, so that ``import lance_concepts`` does not have to import lancedb (seconds)."""

    target = "lancedb.embeddings.registry"

    def find_spec(self, fullname, path=None, target=None):
        import sys

        if fullname != self.target:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec

        class _Loader:
            def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
                return getattr(loader, name)

            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                _uninstall_hook()
                try:
                    register_embedding_function()
                except Exception as exc:  # never break `import lancedb`
                    import warnings

                    warnings.warn(f"lance-concepts could not register its LanceDB embedding function: {exc}")

        spec.loader = _Loader()
        return spec


_HOOK = _RegisterAfterImport()


def _uninstall_hook() -> None:
    import sys

    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install_lancedb_hook() -> None:
    """Register the embedding function now if lancedb is loaded, else as soon as it is imported."""
    import sys

    if "lancedb.embeddings.registry" in sys.modules:
        register_embedding_function()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


install_lancedb_hook()
