"""A table's settings: which model, weights, vocabulary, l1 and image mean its rows are computed with.

Ingest and decompose both read and record them here, so the two can never describe a table differently.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .store import ImageStore


# =========================================================================================== helpers
def package_version() -> str:
    from .. import __version__

    return __version__


def resolve_encoder(model, pretrained, device, batch_size):
    if not isinstance(model, str):  # an encoder object (tests, notebooks)
        return model
    from ..models.encoder import load_encoder

    return load_encoder(model, pretrained, device=device, batch_size=batch_size)


def resolve_vocabulary(vocab):
    if vocab is None:
        return None
    from ..concepts.vocabulary import load_vocabulary

    return load_vocabulary(vocab)


def encoder_metadata(enc) -> dict:
    d = {}
    if hasattr(enc, "describe"):
        try:
            d.update(enc.describe())
        except Exception:
            pass
    d.setdefault("model_name", getattr(enc, "model_name", type(enc).__name__))
    d.setdefault("pretrained", None if getattr(enc, "pretrained", None) is None else str(enc.pretrained))
    d.setdefault("model_fingerprint", getattr(enc, "fingerprint", None))
    d.setdefault("embed_dim", int(getattr(enc, "embed_dim")))
    return d


def vocabulary_metadata(vocab, l1, template) -> dict:
    if vocab is None:
        return {"vocabulary": None, "vocabulary_digest": None, "vocabulary_size": 0, "l1_penalty": None,
                "prompt_template": None}
    return {"vocabulary": vocab.name, "vocabulary_digest": vocab.digest, "vocabulary_size": len(vocab),
            "vocabulary_source": getattr(vocab, "source", None), "l1_penalty": float(l1),
            "prompt_template": template}


def load_mean(image_mean, dim: int) -> np.ndarray | None:
    if image_mean is None or (isinstance(image_mean, str) and image_mean in ("estimate", "table")):
        return None
    if isinstance(image_mean, (str, os.PathLike)):
        try:
            m = np.load(os.fspath(image_mean))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image mean {image_mean!r}: {exc}") from None
    else:
        m = np.asarray(image_mean)
    m = np.asarray(m, dtype=np.float32).reshape(-1)
    if m.shape[0] != dim:
        raise InputError(f"image mean has dimension {m.shape[0]}, the model's embeddings {dim}")
    return m


def concepts_table_matches(store: ImageStore, digest: str) -> bool:
    from .store import decode_metadata, table_names

    if store.concepts_name not in table_names(store.conn):
        return False
    t = store.conn.open_table(store.concepts_name)
    return decode_metadata(t.schema).get("vocabulary_digest") == digest and t.count_rows() > 0
