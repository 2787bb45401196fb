"""Text embeddings cached per (model fingerprint, text), so that commands which need a few text
vectors (a search query, the label names spurious compares with concepts) skip loading torch and
open_clip (~5-9 s) when they have embedded the same text with the same weights before.

The key is the fingerprint of the weights, not the model's name: vectors from other weights never
answer. Only an encoder whose own fingerprint equals the key may fill the cache.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def text_cache_dir() -> Path:
    """``$LANCE_CONCEPTS_CACHE/query_text`` (the same root as the vocabulary embedding cache)."""
    root = os.environ.get("LANCE_CONCEPTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lance_concepts")
    return Path(root) / "query_text"


def _path(fingerprint: str, text: str) -> Path:
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    safe_fp = hashlib.sha256(str(fingerprint).encode()).hexdigest()[:20]
    return text_cache_dir() / safe_fp / f"{key}.npy"


def cached_text_embeddings(fingerprint: str, texts: Sequence[str], load_encoder: Callable[[], object]) -> np.ndarray:
    """``(len(texts), d)`` float32 embeddings; ``load_encoder()`` is called only for texts not cached
    (and its ``fingerprint`` must equal ``fingerprint``, else ValueError)."""
    texts = list(texts)
    out: list[np.ndarray | None] = []
    for t in texts:
        p = _path(fingerprint, t)
        try:
            out.append(np.load(p) if p.is_file() else None)
        except (OSError, ValueError):  # a torn or foreign file: embed again
            out.append(None)
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        enc = load_encoder()
        if getattr(enc, "fingerprint", None) != fingerprint:
            raise ValueError(f"the encoder's fingerprint {getattr(enc, 'fingerprint', None)} is not {fingerprint}")
        new = np.asarray(enc.encode_text([texts[i] for i in missing]), dtype=np.float32)
        for i, v in zip(missing, new):
            out[i] = v
            _store(_path(fingerprint, texts[i]), v)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _store(path: Path, vec: np.ndarray) -> None:
    """Write atomically; a read-only or full cache only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, vec)
        os.replace(tmp, path)
    except OSError:
        pass
