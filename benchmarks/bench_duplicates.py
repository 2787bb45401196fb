"""Near-duplicate groups at scale: synthetic CLIP-like embeddings with planted near-copies.

    python benchmarks/bench_duplicates.py --n 200000 --dim 512

Reports the time of near_duplicate_pairs + union-find and the recall of the planted pairs (a copy
is its source plus small noise, cosine ~0.97) against their exact cosine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from lance_concepts.retrieval.duplicates import group_labels, near_duplicate_pairs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--copies", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--lance", default=None, help="also write a LanceDB table here and time lc.duplicates on it")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    # clustered like real embeddings: 1000 topics, images around them
    topics = rng.standard_normal((1000, a.dim)).astype(np.float32)
    x = topics[rng.integers(0, 1000, a.n - a.copies)] + 0.8 * rng.standard_normal((a.n - a.copies, a.dim)).astype(
        np.float32)
    src = rng.choice(len(x), a.copies, replace=False)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cp = x[src] + 0.2 / np.sqrt(a.dim) * rng.standard_normal((a.copies, a.dim)).astype(np.float32)
    x = np.vstack([x, cp])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    planted_cos = (xn[src] * xn[len(x) - a.copies:]).sum(axis=1)
    want = planted_cos >= a.threshold
    t0 = time.perf_counter()
    i, j = near_duplicate_pairs(x, a.threshold)
    t1 = time.perf_counter()
    lab = group_labels(len(x), i, j)
    t2 = time.perf_counter()
    copy_idx = np.arange(len(x) - a.copies, len(x))
    found = lab[src] == lab[copy_idx]
    print(f"n={len(x)} dim={a.dim}: pairs {t1 - t0:.1f} s, union-find {t2 - t1:.1f} s, total {t2 - t0:.1f} s; "
          f"{len(i)} pairs >= {a.threshold}; planted pairs above threshold {int(want.sum())}, "
          f"recall {found[want].mean():.4f}")
    if a.lance:
        end_to_end(a.lance, x, a.threshold)


def end_to_end(db, x, threshold):
    """lc.duplicates on a table: read the embeddings, search, union-find, write duplicate_groups."""
    import shutil

    import lancedb
    import pyarrow as pa

    from lance_concepts.retrieval.duplicates import duplicates

    shutil.rmtree(db, ignore_errors=True)
    n = len(x)
    t = pa.table({"id": pa.array([f"i{k:07d}" for k in range(n)]), "uri": pa.array([f"u/{k}.jpg" for k in range(n)]),
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), x.shape[1])})
    lancedb.connect(db).create_table("images", t)
    t0 = time.perf_counter()
    g = duplicates(db, threshold)
    print(f"lc.duplicates on a {n}-row LanceDB table: {time.perf_counter() - t0:.1f} s, "
          f"{len(set(g['group_id'].to_pylist()))} groups written")


if __name__ == "__main__":
    main()
