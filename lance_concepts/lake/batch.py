"""The per-batch step both engines call: encode decoded images, decompose them into concepts, build rows.

The local process pool and the Ray actors run exactly these functions, so a row is computed the same
way whichever engine wrote it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..errors import LanceConceptsError
from .decode import Decoder
from .quality import quality_table
from .sources import Source, error_id


def error_kind(msg: str) -> str:
    for sep in (":", " ("):
        if sep in msg:
            msg = msg.split(sep, 1)[0]
    return msg.strip()


def estimate_mean(embeddings: np.ndarray) -> np.ndarray:
    X = np.asarray(embeddings, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (X / n).mean(0).astype(np.float32)


class ConceptStep:
    """The vocabulary's dictionary + a SpliceDecomposer with a fixed image mean."""

    def __init__(self, text: np.ndarray, vocab, l1: float, mean: np.ndarray):
        from ..concepts.splice import SpliceDecomposer

        self.vocab = vocab
        self.text = text
        self.dec = SpliceDecomposer(self.text, image_mean=np.asarray(mean, np.float32), l1_penalty=float(l1),
                                    concepts=list(vocab)).fit()

    def columns(self, emb: np.ndarray, ids: Sequence[str]):
        """-> (concept_ids ListArray, concept_weights ListArray, l0, cosine, postings table)"""
        import scipy.sparse as sp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: the weights are still feasible
            W = self.dec.decompose(emb)
            cos = np.asarray(self.dec.cosine(emb, W), dtype=np.float32).reshape(-1)
        W = sp.csr_matrix(W, dtype=np.float32)
        W.eliminate_zeros()
        indptr = W.indptr.astype(np.int64)
        counts = np.diff(indptr)
        rows = np.repeat(np.arange(W.shape[0]), counts)
        order = np.lexsort((-W.data, rows))  # by row, weight descending
        cids = W.indices[order].astype(np.int32)
        ws = W.data[order].astype(np.float32)
        off = pa.array(indptr.astype(np.int32))
        c_arr = pa.ListArray.from_arrays(off, pa.array(cids, pa.int32()))
        w_arr = pa.ListArray.from_arrays(off, pa.array(ws, pa.float32()))
        post = pa.table({
            "image_id": pa.array(np.asarray(ids, dtype=object)[rows], pa.string()) if len(rows) else
            pa.array([], pa.string()),
            "concept_id": pa.array(cids, pa.int32()),
            "weight": pa.array(ws, pa.float32()),
        })
        return c_arr, w_arr, counts.astype(np.int32), cos, post


# =========================================================================================== pipeline
@dataclass
class WorkItem:
    row: int  # source row
    uri: str
    id: str | None  # from the source or the uri, or None (content hash after reading: tables keyed by content)
    quality: dict | None = None  # lake.quality columns, set after decoding
    content_sha256: str | None = None  # hex SHA-256 of the file bytes, set once read


# =========================================================================================== one batch
# The per-batch work of both engines. The local pipeline runs the three steps in a decode pool, the
# main thread and a writer thread; the Ray engine (lance_concepts.lake.engines.ray) runs them one after
# the other in an actor per batch (process_batch). Same functions, same rows.
def split_decoded(items: Sequence[WorkItem], results) -> tuple[list, list, list]:
    """Decoder results of ``items`` -> (ok [(item, id)], preprocessed arrays, errors [(item, id, message)])."""
    ok, xs, errs = [], [], []
    for k, digest, x, err, *quality in results:
        item = items[k]
        item.quality = quality[0] if quality else None
        item.content_sha256 = digest
        if err is None:
            ok.append((item, item.id or (digest[:32] if digest else None)))
            xs.append(x)
        else:
            errs.append((item, item.id or error_id(item.uri), err))
    return ok, xs, errs


def encode_batch(enc, ok_items, xs, errs, dim: int):
    """Encode one batch. An id twice in the batch keeps its first image; error rows whose id is
    also an ok row or repeats are dropped. -> (ok_items, embeddings or None, errs, n_duplicates)"""
    dups = 0
    emb = None
    if ok_items:
        seen, keep = set(), []
        for j, (_, ident) in enumerate(ok_items):
            if ident in seen:
                dups += 1
            else:
                seen.add(ident)
                keep.append(j)
        if len(keep) < len(ok_items):
            ok_items = [ok_items[j] for j in keep]
            xs = [xs[j] for j in keep]
        import torch

        batch = torch.from_numpy(np.stack(xs))
        emb = np.asarray(enc.encode_images(batch), dtype=np.float32)
        if emb.shape != (len(ok_items), int(dim)):
            raise LanceConceptsError(f"encoder returned shape {emb.shape} for {len(ok_items)} images")
    okids = {ident for _, ident in ok_items}
    seen_e, errs2 = set(), []
    for e in errs:
        if e[1] in okids or e[1] in seen_e:
            dups += 1
            continue
        seen_e.add(e[1])
        errs2.append(e)
    return ok_items, emb, errs2, dups


def build_rows(ok_items, emb, errs, concepts: "ConceptStep | None", src_meta: pa.Table | None, dim: int):
    """Rows of the images table for one encoded batch (ok rows first, then error rows), and their
    postings. ``src_meta``: the source's metadata columns, indexed by ``item.row``. ``concepts``:
    None for embeddings only (the concept columns are then left out: the store fills nulls)."""
    n_ok, n_err = len(ok_items), len(errs)
    ids = [ident for _, ident in ok_items] + [e[1] for e in errs]
    uris = [it.uri for it, _ in ok_items] + [e[0].uri for e in errs]
    rows = [it.row for it, _ in ok_items] + [e[0].row for e in errs]
    n = n_ok + n_err
    d = int(dim)
    cols = {"id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string())}
    cols["content_sha256"] = pa.array([it.content_sha256 for it, _ in ok_items] +
                                      [e[0].content_sha256 for e in errs], pa.string())
    if src_meta is not None and src_meta.num_columns:
        sub = src_meta.take(pa.array(rows, pa.int64()))
        for name in src_meta.column_names:
            cols[name] = sub.column(name)
    emb_all = np.zeros((n, d), np.float32)
    if n_ok:
        emb_all[:n_ok] = emb
    valid = np.arange(n) < n_ok
    mask = pa.array(~valid)
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb_all.reshape(-1)), d, mask=mask)
    postings = None
    if concepts is not None and n_ok:
        c_arr, w_arr, l0, cos, postings = concepts.columns(emb, ids[:n_ok])
        cols["concept_ids"] = pa.concat_arrays([c_arr, pa.nulls(n_err, c_arr.type)])
        cols["concept_weights"] = pa.concat_arrays([w_arr, pa.nulls(n_err, w_arr.type)])
        cols["l0"] = pa.array(np.concatenate([l0, np.zeros(n_err, np.int32)]), pa.int32(), mask=~valid)
        cols["splice_cosine"] = pa.array(np.concatenate([cos, np.zeros(n_err, np.float32)]), pa.float32(),
                                         mask=~valid)
    q = quality_table([it.quality for it, _ in ok_items] + [None] * n_err)
    for name in q.column_names:  # a source's own metadata column of the same name wins
        cols.setdefault(name, q.column(name))
    cols["status"] = pa.array(["ok"] * n_ok + ["error"] * n_err, pa.string())
    cols["error"] = pa.array([None] * n_ok + [e[2] for e in errs], pa.string())
    return pa.table(cols), postings


def process_batch(items: Sequence[WorkItem], tasks, decoder: "Decoder", enc, concepts: "ConceptStep | None",
                  src_meta: pa.Table | None, dim: int):
    """decode -> encode -> decompose for one batch: the steps above in one call (the Ray engine's
    per-batch function). -> (rows, postings, n_duplicates)"""
    ok, xs, errs = split_decoded(items, decoder(tasks))
    ok, emb, errs, dups = encode_batch(enc, ok, xs, errs, dim)
    rows, postings = build_rows(ok, emb, errs, concepts, src_meta, dim)
    return rows, postings, dups


def postings_from_rows(batch) -> pa.Table:
    """The postings (image_id, concept_id, weight) of image rows with id, concept_ids, concept_weights."""
    cids = batch.column("concept_ids")
    counts = pa.compute.list_value_length(cids).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(batch.num_rows), counts)
    return pa.table({"image_id": batch.column("id").take(pa.array(rows, pa.int64())),
                     "concept_id": pa.compute.list_flatten(cids),
                     "weight": pa.compute.list_flatten(batch.column("concept_weights"))})


def decode_tasks(src: Source, items: Sequence[WorkItem]) -> list:
    """Decoder tasks (position, uri, bytes or None) of source items."""
    if src.bytes_dataset is not None:
        blobs = src.read_bytes([it.row for it in items])
        return [(k, it.uri, b if b is not None else b"") for k, (it, b) in enumerate(zip(items, blobs))]
    return [(k, it.uri, None) for k, it in enumerate(items)]


def embedding_matrix(col, dim: int) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten() if col.offset == 0 and col.null_count == 0 else col.values.slice(col.offset * dim,
                                                                                          len(col) * dim)
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), dim)


def concept_columns(concepts: ConceptStep, batch: pa.RecordBatch, dim: int) -> pa.Table:
    """The new concept columns (``id`` + concept_ids, concept_weights, l0, splice_cosine) of a batch of
    (id, embedding) rows: what ``decompose_table`` writes back, on either engine."""
    e = embedding_matrix(batch.column(1), dim)
    c_arr, w_arr, l0, cos, _ = concepts.columns(e, batch.column(0).to_pylist())
    return pa.table({"id": batch.column(0), "concept_ids": c_arr, "concept_weights": w_arr,
                     "l0": pa.array(l0, pa.int32()), "splice_cosine": pa.array(cos, pa.float32())})
