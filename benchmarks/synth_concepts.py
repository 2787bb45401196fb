"""Synthetic concept tables shaped like the real thing, written without running CLIP.

``generate`` draws N images' worth of SpLiCE-like concept columns: about ``nnz`` non-zero weights per
image over ``n_concepts`` concepts with Zipf-like concept frequencies (a few concepts in most images,
most concepts rare), ``n_labels`` labels, a train/test split and timestamps spread over ``months``
months. It also plants structure so that the reports have something true to find:

* every label has ``assoc_per_label`` associated concepts that its images carry far more often
  (what ``spurious`` should report);
* ``n_drift`` concepts whose share of images rises linearly over the months (what ``drift`` should
  flag), the first of them named ``red``.

``write_tables`` writes the tables in the project's schema (design contract; ``store.py`` owns it):

* ``images``: id, uri, label, split, timestamp, concept_ids list<int32>, concept_weights list<float32>
  (parallel, by weight descending), l0, splice_cosine, status, error [, embedding];
* ``concepts``: concept_id, concept, source, embedding (random unit vectors unless given);
* ``image_concepts``: image_id, concept_id, weight (long postings, sorted by concept_id);
* optionally ``images_naive``: the same images with one ``concepts list<struct<concept_id, weight>>``
  column, the naive layout the SQL benchmark compares against.

    .venv/bin/python benchmarks/synth_concepts.py --n 100000 --out /tmp/synth.lancedb
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

os.environ.setdefault("LANCE_LOG", "error")

METADATA_KEY = b"lance_concepts"


@dataclass
class SynthConcepts:
    """Sparse image x concept weights plus per-image metadata (numpy, CSR-like)."""

    offsets: np.ndarray  # (n + 1,) int64
    concept_ids: np.ndarray  # (nnz,) int32, per image sorted by weight descending
    weights: np.ndarray  # (nnz,) float32 > 0
    labels: np.ndarray  # (n,) int
    months: np.ndarray  # (n,) int
    timestamps_us: np.ndarray  # (n,) int64
    split: np.ndarray  # (n,) bool (True = test)
    concept_names: list[str]
    label_names: list[str]
    assoc: np.ndarray  # (n_labels, assoc_per_label) concept ids planted per label
    drift_concepts: np.ndarray  # concept ids planted to rise over time
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.offsets) - 1


def concept_names(n_concepts: int) -> list[str]:
    """Readable, unique synthetic concept names; a few real words first (used by the planted effects)."""
    words = ["red", "grass", "desert", "snow", "water", "circle", "square", "sky", "wood", "stone"]
    out = list(words[: min(len(words), n_concepts)])
    out += [f"concept {i:05d}" for i in range(len(out), n_concepts)]
    return out


def generate(n: int = 100_000, n_concepts: int = 10_000, nnz: int = 20, n_labels: int = 100, months: int = 24,
             seed: int = 0, zipf_s: float = 1.0, assoc_per_label: int = 3, assoc_prob: float = 0.6,
             n_drift: int = 3, drift_from: float = 0.1, drift_to: float = 0.7,
             start: str = "2023-01-01", test_fraction: float = 0.2) -> SynthConcepts:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, size=n)
    month = rng.integers(0, months, size=n)
    # background concepts: Zipf over the unnamed concepts (the named ones are only planted)
    n_named = min(10, n_concepts - 1)
    ranks = np.arange(1, n_concepts - n_named + 1, dtype=np.float64)
    p = ranks ** (-zipf_s)
    p /= p.sum()
    k = np.clip(rng.poisson(nnz, size=n), 1, None)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cids = n_named + rng.choice(n_concepts - n_named, size=rows.size, p=p).astype(np.int64)
    extra_r, extra_c = [rows], [cids]
    # planted drift: concept d present with probability rising linearly over the months
    drift = np.arange(min(n_drift, n_named), dtype=np.int64)  # concept 0 is 'red'
    share = drift_from + (drift_to - drift_from) * month / max(months - 1, 1)
    for d in drift:
        hit = rng.random(n) < share
        extra_r.append(np.flatnonzero(hit))
        extra_c.append(np.full(hit.sum(), d))
    # planted label associations: each label's images carry its concepts with probability assoc_prob
    assoc = (n_named + rng.choice(n_concepts - n_named, size=n_labels * assoc_per_label, replace=False)
             ).reshape(n_labels, assoc_per_label)
    for j in range(assoc_per_label):
        hit = rng.random(n) < assoc_prob
        extra_r.append(np.flatnonzero(hit))
        extra_c.append(assoc[labels[hit], j])
    rows = np.concatenate(extra_r)
    cids = np.concatenate(extra_c)
    key = np.unique(rows * n_concepts + cids)
    rows = key // n_concepts
    cids = (key % n_concepts).astype(np.int32)
    w = (rng.exponential(0.06, size=rows.size) + 0.005).astype(np.float32)
    order = np.lexsort((-w, rows))
    rows, cids, w = rows[order], cids[order], w[order]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    # timestamps: uniformly inside the month
    t0 = datetime.fromisoformat(start).replace(tzinfo=timezone.utc)
    month_starts = []
    for m in range(months + 1):
        y, mm = divmod(t0.month - 1 + m, 12)
        month_starts.append(datetime(t0.year + y, mm + 1, 1, tzinfo=timezone.utc).timestamp())
    month_starts = np.array(month_starts)
    ts = month_starts[month] + rng.random(n) * (month_starts[month + 1] - month_starts[month] - 1)
    return SynthConcepts(
        offsets=offsets, concept_ids=cids, weights=w, labels=labels, months=month,
        timestamps_us=(ts * 1e6).astype(np.int64), split=rng.random(n) < test_fraction,
        concept_names=concept_names(n_concepts), label_names=[f"label{j:03d}" for j in range(n_labels)],
        assoc=assoc, drift_concepts=drift,
        meta={"n": n, "n_concepts": n_concepts, "nnz": nnz, "seed": seed, "zipf_s": zipf_s},
    )


def _metadata(dim: int) -> dict:
    return {"model_name": "synthetic", "pretrained": None, "model_fingerprint": "synthetic",
            "vocabulary": "synthetic", "vocabulary_digest": "synthetic", "l1_penalty": 0.25,
            "image_mean": None, "prompt_template": None, "package_version": "bench", "embed_dim": dim}


def image_ids(n: int) -> pa.Array:
    return pa.array(np.char.add("img", np.char.zfill(np.arange(n).astype(str), 7)).astype(object), pa.string())


def write_tables(db_uri: str, s: SynthConcepts, *, dim: int = 0, concept_dim: int = 64, naive: bool = False,
                 mode: str = "overwrite", indexes: bool = True) -> dict:
    """Write images / concepts / image_concepts (and images_naive) into the LanceDB at ``db_uri``.

    ``dim`` > 0 adds a random image ``embedding`` column of that width (never read by the SQL queries;
    it makes the row width realistic). ``indexes`` builds the indexes ``store.ImageStore.ensure_indexes``
    builds: BITMAP on image_concepts.concept_id, BTREE on images.id, LABEL_LIST on images.concept_ids. Returns the seconds each step took.
    """
    import lancedb

    n = s.n
    rng = np.random.default_rng(1)
    ids = image_ids(n)
    off = pa.array(s.offsets.astype(np.int32))
    meta = {METADATA_KEY: json.dumps(_metadata(dim)).encode()}
    cols = {
        "id": ids,
        "uri": pa.compute.binary_join_element_wise("s3://bucket/images/", ids, ".jpg", ""),
        "label": pa.DictionaryArray.from_arrays(pa.array(s.labels.astype(np.int32)),
                                                pa.array(s.label_names)).dictionary_decode(),
        "split": pa.array(np.where(s.split, "test", "train").astype(object), pa.string()),
        "timestamp": pa.array(s.timestamps_us, pa.timestamp("us")),
        "concept_ids": pa.ListArray.from_arrays(off, pa.array(s.concept_ids, pa.int32())),
        "concept_weights": pa.ListArray.from_arrays(off, pa.array(s.weights, pa.float32())),
        "l0": pa.array(np.diff(s.offsets).astype(np.int32)),
        "splice_cosine": pa.array(rng.uniform(0.45, 0.6, size=n).astype(np.float32)),
        "status": pa.array(np.full(n, "ok", dtype=object), pa.string()),
        "error": pa.nulls(n, pa.string()),
    }
    if dim:
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
    images = pa.table(cols).replace_schema_metadata(meta)
    cemb = rng.standard_normal((len(s.concept_names), concept_dim), dtype=np.float32)
    cemb /= np.linalg.norm(cemb, axis=1, keepdims=True)
    concepts = pa.table({
        "concept_id": pa.array(np.arange(len(s.concept_names), dtype=np.int32)),
        "concept": pa.array(s.concept_names, pa.string()),
        "source": pa.array(["synthetic"] * len(s.concept_names), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(cemb.reshape(-1)), concept_dim),
    }).replace_schema_metadata(meta)
    rows = np.repeat(np.arange(n), np.diff(s.offsets))
    by_c = np.argsort(s.concept_ids, kind="stable")
    postings = pa.table({
        "image_id": ids.take(pa.array(rows[by_c])),
        "concept_id": pa.array(s.concept_ids[by_c], pa.int32()),
        "weight": pa.array(s.weights[by_c], pa.float32()),
    }).replace_schema_metadata(meta)
    db = lancedb.connect(db_uri)
    took = {}
    t = time.perf_counter()
    db.create_table("images", images, mode=mode)
    db.create_table("concepts", concepts, mode=mode)
    db.create_table("image_concepts", postings, mode=mode)
    took["write_s"] = time.perf_counter() - t
    if naive:
        structs = pa.StructArray.from_arrays([pa.array(s.concept_ids, pa.int32()), pa.array(s.weights, pa.float32())],
                                             names=["concept_id", "weight"])
        nv = images.drop_columns(["concept_ids", "concept_weights"] + (["embedding"] if dim else []))
        nv = nv.append_column("concepts", pa.ListArray.from_arrays(off, structs))
        t = time.perf_counter()
        db.create_table("images_naive", nv, mode=mode)
        took["write_naive_s"] = time.perf_counter() - t
    if indexes:  # the indexes store.ImageStore.ensure_indexes builds
        from lancedb.index import Bitmap, BTree, LabelList

        t = time.perf_counter()
        db.open_table("image_concepts").create_index("concept_id", config=Bitmap(), replace=True)
        db.open_table("images").create_index("id", config=BTree(), replace=True)
        db.open_table("images").create_index("concept_ids", config=LabelList(), replace=True)
        took["index_s"] = time.perf_counter() - t
    return took


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--concepts", type=int, default=10_000)
    ap.add_argument("--nnz", type=int, default=20)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--dim", type=int, default=0, help="add a random image embedding column of this width")
    ap.add_argument("--naive", action="store_true", help="also write images_naive (list<struct>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="LanceDB directory to write")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    s = generate(a.n, a.concepts, a.nnz, a.labels, a.months, seed=a.seed)
    gen = time.perf_counter() - t
    took = write_tables(a.out, s, dim=a.dim, naive=a.naive)
    print(f"{s.n} images, {len(s.weights)} postings ({len(s.weights) / s.n:.1f}/image); generated in {gen:.1f}s; "
          + ", ".join(f"{k} {v:.1f}" for k, v in took.items()))


if __name__ == "__main__":
    main()
