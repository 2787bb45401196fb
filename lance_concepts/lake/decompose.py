"""Recompute a table's concept columns from its stored embeddings (new vocabulary, l1 or image mean).

No image is read again: decomposition is cheap next to decoding, so changing the vocabulary is a
column rewrite recorded as a new concept version.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Mapping

import numpy as np
import pyarrow.compute as pc

from ..errors import InputError
from .batch import ConceptStep, concept_columns, embedding_matrix, postings_from_rows
from .rollup import refresh_rollup
from .settings import load_mean, package_version, resolve_encoder, resolve_vocabulary, vocabulary_metadata
from .store import ImageStore, utc_now
from .summary import DecomposeSummary
from ..concepts.splice import l1_for_target_l0


# =========================================================================================== decompose
def decompose_table(
    db,
    vocab,
    l1: float = 0.25,
    *,
    table: str = "images",
    model: str | None = None,
    pretrained: str | None = None,
    encoder=None,
    prompt_template: str | None = None,
    image_mean=None,
    storage_options: Mapping[str, str] | None = None,
    batch_size: int = 4096,
    device: str = "auto",
    quiet: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    target_l0: int | None = None,
) -> DecomposeSummary:
    """Recompute the concept columns of ``table`` from its stored embeddings (no image is re-encoded).

    The text embeddings of ``vocab`` come from the table's own model (``model``/``pretrained`` override
    where the recorded name cannot be loaded; the fingerprint must match). ``image_mean``: None keeps the
    table's recorded mean, ``"estimate"`` re-estimates it from all stored embeddings, or a vector/.npy.
    The images' concept columns are replaced in one commit, the concepts and postings tables are
    rewritten, and the metadata records the new concept version (earlier ones stay reachable through
    Lance table versions, listed in ``concept_history``).

    ``engine="ray"`` decomposes fragment by fragment on Ray actors and rewrites only the concept
    columns of each fragment (the embeddings are not rewritten), one commit for the table; the postings
    are rebuilt with lance-ray (:mod:`lance_concepts.lake.engines.ray`). ``ray_address`` / ``ray_actors``
    as for :func:`ingest`.

    ``target_l0``: instead of ``l1``, pick the l1 whose decompositions have a median of ``target_l0``
    non-zero concepts on a sample of the stored embeddings (the SpLiCE paper reports results at fixed
    sparsity); the chosen l1 and the target are recorded with the table.
    """
    t0 = time.perf_counter()
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from .engines.ray import require_ray

        require_ray()
    if not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 > 0):
        raise InputError(f"l1 must be a positive number, got {l1!r}")
    store = ImageStore(db, table, storage_options)
    if not store.exists():
        raise InputError(f"no table {table!r} in {db}")
    meta = store.metadata()
    if not meta:
        raise InputError(f"table {table!r} has no lance_concepts metadata: was it written by `lance-concepts ingest`?")
    voc = resolve_vocabulary(vocab)
    if voc is None:
        raise InputError("decompose needs a vocabulary")
    if encoder is None:
        name = model or meta.get("model_name")
        pre = pretrained if model else meta.get("pretrained")
        encoder = resolve_encoder(name, pre, device, 64)
    fp = getattr(encoder, "fingerprint", None)
    if meta.get("model_fingerprint") and fp != meta["model_fingerprint"]:
        raise InputError(
            f"the embeddings in {table!r} come from model fingerprint {meta['model_fingerprint']} "
            f"({meta.get('model_name')}, {meta.get('pretrained')}); the loaded model has {fp}. Pass the same "
            "model/pretrained the table was ingested with."
        )
    dim = int(meta.get("embed_dim") or encoder.embed_dim)
    ds = store.table.to_lance()
    mean = load_mean(image_mean, dim)
    mean_source = "given" if mean is not None else meta.get("image_mean_source")
    if mean is None and image_mean != "estimate" and meta.get("image_mean") is not None:
        mean = np.asarray(meta["image_mean"], np.float32)
    if mean is None:  # estimate from every stored embedding (one streaming pass)
        s, cnt = np.zeros(dim, np.float64), 0
        for b in ds.to_batches(columns=["embedding"], filter="status = 'ok'", batch_size=batch_size):
            e = embedding_matrix(b.column(0), dim)
            nrm = np.linalg.norm(e, axis=1, keepdims=True)
            nrm[nrm == 0] = 1
            s += (e / nrm).sum(0)
            cnt += len(e)
        if cnt == 0:
            raise InputError(f"table {table!r} has no ok rows to decompose")
        mean = (s / cnt).astype(np.float32)
        mean_source = f"estimated from all {cnt} stored embeddings"
    text = np.asarray(voc.embed(encoder, template=prompt_template), dtype=np.float32)
    if target_l0 is not None:
        l1 = _l1_for_target(ds, text, mean, dim, int(target_l0))
    concepts = ConceptStep(text, voc, l1, mean)
    old_version = int(meta.get("concept_version") or 0)
    lance_version = int(ds.version)
    pending = {**meta, "decompose_in_progress": {"vocabulary": voc.name, "vocabulary_digest": voc.digest,
                                                 "l1_penalty": float(l1), "started": utc_now()}}
    store.write_metadata(pending, tables=[table])
    if engine == "ray":
        from .engines import ray as distributed

        with distributed.ray_session(ray_address):
            stats = distributed.decompose_on_ray(store, store.refresh().table.to_lance(), text=text, vocab=voc, l1=l1, mean=mean, dim=dim,
                                                 batch_size=batch_size, actors=ray_actors, quiet=quiet)
        n_post = stats["postings"]
    else:
        stats = {"rows": 0, "l0": 0.0, "cos": 0.0}
        n_ok = store.count("status = 'ok'")
        bar = None
        if not quiet:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_ok, unit="img", desc="decompose", dynamic_ncols=True, file=sys.stderr)

        def batches():
            for b in ds.to_batches(columns=["id", "embedding"], filter="status = 'ok'", batch_size=batch_size):
                if b.num_rows == 0:
                    continue
                cols = concept_columns(concepts, b, dim)
                stats["rows"] += cols.num_rows
                stats["l0"] += float(pc.sum(cols.column("l0")).as_py() or 0)
                stats["cos"] += float(pc.sum(cols.column("splice_cosine")).as_py() or 0)
                if bar is not None:
                    bar.update(cols.num_rows)
                yield cols

        try:
            store.update_concept_columns(batches())
        finally:
            if bar is not None:
                bar.close()
        # postings from the updated table, concepts table, metadata
        new_ds = store.table.to_lance()

        def postings():
            for b in new_ds.to_batches(columns=["id", "concept_ids", "concept_weights"], filter="status = 'ok'",
                                       batch_size=batch_size):
                yield postings_from_rows(b)

        n_post = store.replace_postings(postings())
    history = list(meta.get("concept_history") or [])
    history.append({"concept_version": old_version, "vocabulary": meta.get("vocabulary"),
                    "vocabulary_digest": meta.get("vocabulary_digest"), "l1_penalty": meta.get("l1_penalty"),
                    "prompt_template": meta.get("prompt_template"), "lance_version": lance_version})
    new_meta = {k: v for k, v in meta.items() if k != "decompose_in_progress"}
    new_meta.update(vocabulary_metadata(voc, l1, prompt_template), target_l0=target_l0)
    new_meta.update(concept_version=old_version + 1, concept_history=history, image_mean=mean.tolist(),
                    image_mean_source=mean_source, package_version=package_version())
    store.write_concepts(list(voc), concepts.text, voc.name, new_meta)
    store.write_metadata(new_meta)
    try:
        store.ensure_indexes(force=True)
    except Exception:
        pass
    refresh_rollup(store, mode=True, quiet=quiet)
    rows = stats["rows"]
    return DecomposeSummary(db=str(db), table=table, rows=rows, vocabulary=f"{voc.name} ({len(voc)} concepts)",
                            l1_penalty=float(l1), concept_version=old_version + 1,
                            seconds=time.perf_counter() - t0, mean_l0=stats["l0"] / max(rows, 1),
                            mean_cosine=stats["cos"] / max(rows, 1), postings=n_post)


def _l1_for_target(ds, text: np.ndarray, mean: np.ndarray, dim: int, target: int, sample_rows: int = 2048) -> float:
    """l1 giving a median of ``target`` concepts on (at most) the first ``sample_rows`` ok embeddings."""
    t = ds.to_table(columns=["embedding"], filter="status = 'ok'", limit=sample_rows)
    if t.num_rows == 0:
        raise InputError("target_l0 needs ok rows to sample embeddings from")
    return float(l1_for_target_l0(embedding_matrix(t.column(0), dim), text, target, image_mean=mean))
