"""FALCON labelling speed on synthetic activations (no crops).

    .venv/bin/python benchmarks/bench_falcon.py                      # 100,000 images x 2,048 features
    .venv/bin/python benchmarks/bench_falcon.py --n 20000 --repeats 3
    .venv/bin/python benchmarks/bench_falcon.py --db /tmp/falcon-bench.lancedb   # + end to end in LanceDB

The synthetic representation is ReLU-like: every image has a dense positive background on all
features plus strong activations on the few features of its 1-3 latent "concepts" (1,500 latent
concepts, each driving 1-2 features), so that the global mean + 5 std threshold finds realistic
groups. Image embeddings (d = 512) and a 10,000-term vocabulary are synthetic CLIP-like vectors.
Prints the stage timings of ``FalconExplainer.fit`` and the median over repeats. With ``--db`` the
same data is written once to an images table (``embedding`` 512-d + ``features`` 2048-d column +
concepts table; not timed) and ``falcon(db, "features")`` is timed end to end: reading the columns,
labelling, writing the ``features``, ``feature_concepts`` and ``image_features`` tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def synthetic(n: int, m: int, d: int = 512, n_terms: int = 10_000, n_latent: int = 1500, seed: int = 0):
    rng = np.random.default_rng(seed)
    R = np.abs(rng.standard_normal((n, m), dtype=np.float32)) * np.float32(0.5)
    feats = rng.integers(m, size=(n_latent, 2))
    feats[rng.random(n_latent) < 0.5, 1] = -1                        # 1 or 2 features per latent
    popularity = rng.dirichlet(np.full(n_latent, 0.5))
    lat = rng.choice(n_latent, size=(n, 3), p=popularity)
    lat[np.arange(3)[None, :] >= rng.integers(1, 4, size=n)[:, None]] = -1   # 1-3 latents per image
    terms = rng.standard_normal((n_terms, d), dtype=np.float32)
    terms /= np.linalg.norm(terms, axis=1, keepdims=True)
    latent_term = rng.integers(n_terms, size=n_latent)
    emb = rng.standard_normal((n, d), dtype=np.float32) * np.float32(0.3)
    emb += rng.standard_normal(d, dtype=np.float32)[None, :]
    for j in range(3):
        ok = lat[:, j] >= 0
        rows = np.flatnonzero(ok)
        emb[rows] += terms[latent_term[lat[rows, j]]]
        for k in range(2):
            f = feats[lat[rows, j], k]
            sel = f >= 0
            R[rows[sel], f[sel]] += np.float32(8.0) + rng.random(int(sel.sum()), dtype=np.float32)
    concepts = [f"term{i}" if i % 5 else f"term{i} phrase" for i in range(n_terms)]
    return R, emb, terms, concepts


def _write_db(path, R, emb, terms, concepts):
    import shutil

    import pyarrow as pa

    from lance_concepts.lake import store as S
    from lance_concepts.lake.features import add_features_column

    shutil.rmtree(path, ignore_errors=True)
    st = S.ImageStore(path)
    n, d = emb.shape
    st.create_or_open(S.images_schema(d, [], {"model_name": "synthetic", "model_fingerprint": "bench"}))
    ids = [f"img{i:06d}" for i in range(n)]
    for s in range(0, n, 20000):
        e = emb[s:s + 20000]
        st.write_batch(pa.table({"id": ids[s:s + 20000], "uri": ids[s:s + 20000], "status": ["ok"] * len(e),
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), d)}))
    st.write_concepts(concepts, terms, "synthetic")
    add_features_column(st, ids, R, "features")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--terms", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--db", default=None, help="also time falcon() end to end on a LanceDB table written here")
    args = ap.parse_args()

    from lance_concepts.concepts.falcon import FalconExplainer
    from lance_concepts.lake.features import falcon

    t = time.perf_counter()
    R, emb, terms, concepts = synthetic(args.n, args.m, n_terms=args.terms)
    print(f"synthetic data: {time.perf_counter() - t:.1f} s (not timed below)", flush=True)
    times = []
    for r in range(args.repeats):
        t = time.perf_counter()
        fx = FalconExplainer().fit(R, emb, terms, concepts)
        times.append(time.perf_counter() - t)
        print(f"fit run {r}: {times[-1]:.2f} s  stages: {json.dumps({k: round(v, 2) for k, v in fx.timings_.items()})}",
              flush=True)
    s = fx.summary_
    print(json.dumps({k: s[k] for k in ("n_groups", "n_single_feature_groups", "n_images_in_groups",
                                        "n_highly_activating_images")}))
    print(f"FalconExplainer.fit: median {statistics.median(times):.2f} s for {args.n} images x {args.m} features, "
          f"{args.terms} terms", flush=True)
    if args.db:
        t = time.perf_counter()
        _write_db(args.db, R, emb, terms, concepts)
        print(f"LanceDB table written: {time.perf_counter() - t:.1f} s (not timed below)", flush=True)
        del R
        e2e = []
        for r in range(args.repeats):
            t = time.perf_counter()
            res = falcon(args.db, "features")
            e2e.append(time.perf_counter() - t)
            print(f"falcon() run {r}: {e2e[-1]:.2f} s ({len(res.records)} groups written)", flush=True)
        print(f"falcon(db) end to end: median {statistics.median(e2e):.2f} s")


if __name__ == "__main__":
    main()
