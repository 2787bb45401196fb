"""Retrieval index: recall, latency and build time of the default vector index, and how to prefilter on concepts.

Usage:
    .venv/bin/python benchmarks/bench_index.py [--n 200000] [--dim 512] [--db /tmp/bench_index.lancedb]
                                               [--queries 200] [--index IVF_PQ,IVF_HNSW_SQ] [--json out.json]

Data: synthetic CLIP-like vectors, clustered on the unit sphere (a shared "mean image" direction, 50 topics,
1,000 sub-topics, per-image variation, all anisotropic with a power-law spectrum; raw norms vary around 10
as CLIP's do), with SpLiCE-like sparse concept
columns (7-30 concepts per image over a 10,000-concept vocabulary, most drawn from the image's sub-topic,
the rest Zipf-distributed) and planted filters:

* ``common``    concept('c0') > 0.05           (the most frequent concept; about 9% of rows)
* ``medium``    concept(<a sub-topic concept>) > 0.05 AND label = <its topic's label>  (well under 1%)
* ``threshold`` concept('thr') > 0.3            (2% of rows carry 'thr', exactly 12 above 0.3)
* ``rare``      concept('rare') > 0                (exactly 7 rows, scattered over the whole table)
* ``none``      concept('absent') > 0              (a vocabulary concept on no row)

Ground truth is exact cosine search in numpy over the rows that pass the filter (the filter evaluated in
numpy from the concept lists, independently of the filter string under test). Queries are held-out points
drawn from the same generator.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

os.environ.setdefault("LANCE_LOG", "error")
warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lance_concepts.retrieval.searcher import Searcher, _vector_query
from lance_concepts.retrieval.where import compile_where, concept_resolver
from lance_concepts.retrieval.index import index_params, build_vector_index, build_scalar_indexes

N_CONCEPTS = 10_000


# --------------------------------------------------------------------------------------------- data
def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_vectors(n, d, rng, n_topics=50, n_sub=1000):
    """Unit vectors times CLIP-like norms: a shared mean direction, topics, sub-topics and per-image
    variation, all drawn with a power-law spectrum (variance of the i-th direction ~ 1/i) in a random
    basis, as CLIP embeddings are anisotropic rather than uniform on the sphere."""
    basis, _ = np.linalg.qr(np.random.default_rng(12345).normal(size=(d, d)))
    spec = 1.0 / np.sqrt(np.arange(1, d + 1))
    spec /= np.linalg.norm(spec)

    def draw(m, r):
        return (r.normal(size=(m, d)) * spec) @ basis.T  # expected norm 1

    mean = unit(np.random.default_rng(54321).normal(size=d))
    topics = draw(n_topics, np.random.default_rng(777))
    subs = draw(n_sub, np.random.default_rng(778))
    sub_topic = np.random.default_rng(779).integers(0, n_topics, n_sub)
    sub = rng.integers(0, n_sub, n)
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 20_000):
        s = sub[i:i + 20_000]
        x = 0.55 * mean + 0.45 * topics[sub_topic[s]] + 0.5 * subs[s] + 0.45 * draw(len(s), rng)
        out[i:i + 20_000] = unit(x) * rng.normal(10, 1, size=(len(s), 1))
    return out, sub, sub_topic


def make_concepts(n, sub, n_sub, rng):
    """Sparse concept lists: (offsets, ids, weights) sorted by weight descending per row."""
    ranks = np.arange(1, N_CONCEPTS + 1)
    zipf = 1.0 / ranks
    zipf /= zipf.sum()
    topic_concepts = rng.choice(np.arange(20, N_CONCEPTS - 10), size=(n_sub, 20), replace=True)
    l0 = rng.integers(7, 31, n)
    rows = np.repeat(np.arange(n), l0)
    from_topic = rng.random(len(rows)) < 0.6
    cids = np.where(from_topic, topic_concepts[sub[rows], rng.integers(0, 20, len(rows))],
                    rng.choice(N_CONCEPTS, len(rows), p=zipf))
    reserved = (cids >= N_CONCEPTS - 10)  # the last 10 ids are kept for planted concepts
    cids = np.where(reserved, cids - 10, cids)
    key = rows.astype(np.int64) * N_CONCEPTS + cids
    key = np.unique(key)
    rows, cids = key // N_CONCEPTS, (key % N_CONCEPTS).astype(np.int32)
    w = (rng.exponential(0.06, len(rows)) + 0.005).astype(np.float32)
    return rows, cids, w


def plant(rows, cids, w, n, rng):
    thr, rare, absent = N_CONCEPTS - 1, N_CONCEPTS - 2, N_CONCEPTS - 3
    extra_rows, extra_c, extra_w = [], [], []
    thr_rows = rng.choice(n, n // 50, replace=False)
    tw = rng.uniform(0.01, 0.29, len(thr_rows)).astype(np.float32)
    tw[:12] = rng.uniform(0.31, 0.6, 12)
    tw[12:20] = np.float32(0.3)  # exactly on the threshold: must NOT match "> 0.3"
    extra_rows.append(thr_rows); extra_c.append(np.full(len(thr_rows), thr)); extra_w.append(tw)
    rare_rows = rng.choice(n, 7, replace=False)
    extra_rows.append(rare_rows); extra_c.append(np.full(7, rare)); extra_w.append(rng.uniform(0.01, 0.2, 7).astype(np.float32))
    rows = np.concatenate([rows] + extra_rows)
    cids = np.concatenate([cids] + [c.astype(np.int32) for c in extra_c])
    w = np.concatenate([w] + extra_w).astype(np.float32)
    # per row, by weight descending
    order = np.lexsort((-w, rows))
    return rows[order], cids[order], w[order], {"thr": thr, "rare": rare, "absent": absent}


def concept_names(planted):
    names = [f"c{i}" for i in range(N_CONCEPTS)]
    for name, cid in planted.items():
        names[cid] = name
    return names


def build_table(db_path, n, d, seed):
    import lancedb

    rng = np.random.default_rng(seed)
    X, sub, sub_topic = make_vectors(n, d, rng)
    rows, cids, w, planted = plant(*make_concepts(n, sub, len(sub_topic), rng), n, rng)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    labels = np.array([f"label{t % 20}" for t in sub_topic[sub]])
    flip = rng.random(n) < 0.1
    labels[flip] = np.array([f"label{i}" for i in rng.integers(0, 20, flip.sum())])
    table = pa.table({
        "id": pa.array([f"img{i:07d}" for i in range(n)]),
        "label": pa.array(labels),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d),
        "concept_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(cids, pa.int32())),
        "concept_weights": pa.ListArray.from_arrays(pa.array(offsets), pa.array(w, pa.float32())),
    })
    if Path(db_path).exists():
        shutil.rmtree(db_path)
    db = lancedb.connect(db_path)
    db.create_table("images", table)
    db.create_table("image_concepts", pa.table({
        "image_id": pa.array([f"img{i:07d}" for i in rows]), "concept_id": pa.array(cids, pa.int32()),
        "weight": pa.array(w, pa.float32())}))
    names = concept_names(planted)
    db.create_table("concepts", pa.table({"concept_id": pa.array(np.arange(N_CONCEPTS, dtype=np.int32)),
                                         "concept": pa.array(names)}))
    # held-out queries from the same generator
    Q, qsub, _ = make_vectors(4000, d, np.random.default_rng(seed + 1))  # same topics, new images
    np.save(Path(db_path) / "queries.npy", Q)
    np.savez(Path(db_path) / "truth.npz", rows=rows, cids=cids, w=w, offsets=offsets, sub=sub, sub_topic=sub_topic)
    (Path(db_path) / "bench.json").write_text(json.dumps({"n": n, "d": d, "seed": seed}))


# ------------------------------------------------------------------------------------------- helpers
def median_ms(xs):
    return round(1000 * statistics.median(xs), 2)


def exact_topk(Xn, q, k, mask=None):
    s = Xn @ unit(q)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
        k = min(k, int(mask.sum()))
    if k == 0:
        return np.array([], dtype=np.int64)
    idx = np.argpartition(-s, k - 1)[:k]
    return idx[np.argsort(-s[idx])]


def concept_mask(truth, n, cid, op, t):
    rows, cids, w = truth["rows"], truth["cids"], truth["w"]
    sel = cids == cid
    t = np.float32(t)  # thresholds compare in float32, the precision weights are stored in
    ok = {">": w[sel] > t, ">=": w[sel] >= t}[op]
    m = np.zeros(n, bool)
    m[rows[sel][ok]] = True
    return m


def run_query(ds, q, k, where=None, params=None, prefilter=True, select=("id",)):
    return _vector_query(ds, q, k=k, where=where, params=params or {}, prefilter=prefilter,
                         vector_column="embedding", select=list(select))


# ------------------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--db", default="/tmp/bench_index.lancedb")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--filtered-queries", type=int, default=50)
    ap.add_argument("--index", default="IVF_PQ,IVF_HNSW_SQ")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse-index", action="store_true",
                    help="Keep a vector index of the requested kind if the table has one (no build time then).")
    ap.add_argument("--no-sweep", action="store_true", help="Skip the query-parameter sweep.")
    args = ap.parse_args()
    import lancedb

    meta_file = Path(args.db) / "bench.json"
    want = {"n": args.n, "d": args.dim, "seed": args.seed}
    if args.rebuild or not meta_file.exists() or json.loads(meta_file.read_text()) != want:
        t0 = time.perf_counter()
        build_table(args.db, args.n, args.dim, args.seed)
        print(f"generated {args.n} x {args.dim} in {time.perf_counter() - t0:.1f}s", flush=True)
    db = lancedb.connect(args.db)
    tbl = db.open_table("images")
    postings = db.open_table("image_concepts")
    names = db.open_table("concepts").to_arrow()["concept"].to_pylist()
    resolve = concept_resolver(names)
    truth = dict(np.load(Path(args.db) / "truth.npz"))
    n = tbl.count_rows()
    X = tbl.to_lance().to_table(columns=["embedding"])["embedding"].combine_chunks().values.to_numpy().reshape(n, -1)
    Xn = unit(X.astype(np.float32))
    Q = np.load(Path(args.db) / "queries.npy")[: args.queries]
    labels = np.array(tbl.to_lance().to_table(columns=["label"])["label"].to_pylist())
    report = {"n": n, "dim": args.dim, "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
              "python": platform.python_version(), "lancedb": lancedb.__version__}

    # ---- scalar indexes (the concept prefilter's)
    t0 = time.perf_counter()
    build_scalar_indexes(tbl, columns=["concept_ids", "label", "id"])
    report["scalar_index_build_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    postings.create_scalar_index("concept_id", index_type="BTREE", replace=True)
    report["postings_index_build_s"] = round(time.perf_counter() - t0, 1)
    print("scalar indexes", report["scalar_index_build_s"], "s", flush=True)

    # ---- filters: (name, where, numpy mask)
    common = int(np.bincount(truth["cids"], minlength=N_CONCEPTS).argmax())
    sub_concept_counts = np.bincount(truth["cids"], minlength=N_CONCEPTS)
    medium = int(np.argsort(sub_concept_counts)[-200])
    med_rows = truth["rows"][(truth["cids"] == medium)]
    med_label = str(statistics.mode(labels[med_rows]))
    filters = {
        "common": (f"concept('{names[common]}') > 0.05", concept_mask(truth, n, common, ">", 0.05)),
        "medium": (f"concept('{names[medium]}') > 0.05 AND label = '{med_label}'",
                   concept_mask(truth, n, medium, ">", 0.05) & (labels == med_label)),
        "threshold": ("concept('thr') > 0.3", concept_mask(truth, n, resolve("thr"), ">", 0.3)),
        "rare": ("concept('rare') > 0", concept_mask(truth, n, resolve("rare"), ">", 0.0)),
        "none": ("concept('absent') > 0", np.zeros(n, bool)),
    }
    report["filters"] = {k: {"where": w, "matching_rows": int(m.sum())} for k, (w, m) in filters.items()}
    print(json.dumps(report["filters"], indent=1), flush=True)
    FQ = Q[: args.filtered_queries]
    truth_unf = [exact_topk(Xn, q, 10) for q in Q]
    truth_f = {k: [exact_topk(Xn, q, 10, m) for q in FQ] for k, (_, m) in filters.items()}
    id_of = lambda r: np.array([int(s[3:]) for s in r["id"].to_pylist()], dtype=np.int64)  # noqa: E731

    def recall(got, want):
        if len(want) == 0:
            return 1.0 if len(got) == 0 else 0.0
        return len(set(got.tolist()) & set(want.tolist())) / len(want)

    # ---- exact search through LanceDB (no index) for the side-by-side baseline
    ds = tbl.to_lance()
    flat = []
    for q in Q[:20]:
        t0 = time.perf_counter(); run_query(ds, q, 10, params={"index_type": None}); flat.append(time.perf_counter() - t0)
    report["flat_query_ms"] = median_ms(flat)
    print("flat", report["flat_query_ms"], "ms", flush=True)

    report["indexes"] = {}
    for kind in [s.strip().upper() for s in args.index.split(",") if s.strip()]:
        p = index_params(n, args.dim, kind)
        have = {ix.index_type for ix in tbl.list_indices() if list(ix.columns) == ["embedding"]}
        lance_kind = {"IVF_PQ": "IvfPq", "IVF_HNSW_SQ": "IvfHnswSq"}[kind]
        if args.reuse_index and lance_kind in have:
            build_s = None
        else:
            t0 = time.perf_counter()
            build_vector_index(tbl, "embedding", p)
            build_s = round(time.perf_counter() - t0, 1)
        tbl = db.open_table("images")
        ds = tbl.to_lance()
        r = {"params": p, "build_s": build_s}
        print(kind, p, "built in", r["build_s"], "s", flush=True)
        # warm-up (index cache)
        for q in Q[:5]:
            run_query(ds, q, 10, params=p)
        # sweep query-time parameters
        if kind == "IVF_PQ":
            sweep = [{"nprobes": a, "refine_factor": b} for a in (10, 20, 40) for b in (None, 5, 10, 20)]
        else:
            sweep = [{"ef": e} for e in (50, 100, 200, 400)]
        r["sweep"] = []
        for extra in ([] if args.no_sweep else sweep):
            pp = dict(p, **extra)
            times, recs = [], []
            for q, want in zip(Q, truth_unf):
                t0 = time.perf_counter(); res = run_query(ds, q, 10, params=pp); times.append(time.perf_counter() - t0)
                recs.append(recall(id_of(res), want))
            r["sweep"].append({**extra, "recall@10": round(float(np.mean(recs)), 4), "median_ms": median_ms(times)})
            print("  ", r["sweep"][-1], flush=True)
        # defaults
        times, recs = [], []
        for q, want in zip(Q, truth_unf):
            t0 = time.perf_counter(); res = run_query(ds, q, 10, params=p); times.append(time.perf_counter() - t0)
            recs.append(recall(id_of(res), want))
        r["default"] = {"recall@10": round(float(np.mean(recs)), 4), "median_ms": median_ms(times),
                        "p90_ms": round(1000 * float(np.quantile(times, 0.9)), 2)}
        print("  default", r["default"], flush=True)
        # the product's query path, unfiltered
        searcher = Searcher(args.db)
        times = []
        for q in Q[:50]:
            t0 = time.perf_counter(); searcher.search(vector=q, k=10); times.append(time.perf_counter() - t0)
        r["search_unfiltered_ms"] = median_ms(times)
        # concept-filtered queries: the product's plan vs single-strategy LanceDB queries
        r["filtered"] = {}
        pooled = []
        for fname, (where, mask) in filters.items():
            sql = compile_where(where, tbl.schema, resolve)
            unindexed = sql.replace("[CAST(", "[CAST(CAST(").replace(" AS INT)]", " AS INT) AS BIGINT)]")
            row = {}
            times, recs, counts, plans = [], [], [], set()
            for q, want in zip(FQ, truth_f[fname]):
                t0 = time.perf_counter(); res = searcher.search(vector=q, where=where, k=10, concepts=0)
                times.append(time.perf_counter() - t0)
                got = id_of(res)
                assert mask[got].all(), f"search {fname}: a returned row does not pass the filter"
                recs.append(recall(got, want)); counts.append(len(got))
                plans.add(json.loads(res.schema.metadata[b"query"])["plan"].split(" (")[0])
            search_times = list(times)
            row["search()"] = {"median_ms": median_ms(times), "recall@10": round(float(np.mean(recs)), 4),
                               "min_rows": int(min(counts)), "expected_rows": int(min(10, mask.sum())),
                               "plans": sorted(plans)}
            for how, w_sql, pre in (("lance prefilter, LABEL_LIST", sql, True),
                                    ("lance prefilter, no index", unindexed, True),
                                    ("lance postfilter", sql, False)):
                times, recs, counts = [], [], []
                for q, want in zip(FQ, truth_f[fname]):
                    t0 = time.perf_counter(); res = run_query(ds, q, 10, where=w_sql, params=p, prefilter=pre)
                    times.append(time.perf_counter() - t0)
                    got = id_of(res)
                    recs.append(recall(got, want)); counts.append(len(got))
                    if pre:
                        assert mask[got].all(), f"{how} {fname}: a returned row does not pass the filter"
                row[how] = {"median_ms": median_ms(times), "recall@10": round(float(np.mean(recs)), 4),
                            "min_rows": int(min(counts)), "expected_rows": int(min(10, mask.sum()))}
            # postings table: ids first, then an IN list on the images table
            times, recs = [], []
            cid_where = {"common": f"concept_id = {common} AND weight > 0.05",
                         "medium": f"concept_id = {medium} AND weight > 0.05",
                         "threshold": f"concept_id = {resolve('thr')} AND weight > CAST(0.3 AS FLOAT)",
                         "rare": f"concept_id = {resolve('rare')}", "none": f"concept_id = {resolve('absent')}"}[fname]
            for q, want in zip(FQ[:10], truth_f[fname][:10]):
                t0 = time.perf_counter()
                ids = postings.search().where(cid_where).select(["image_id"]).limit(None).to_arrow()["image_id"].to_pylist()
                extra = f" AND label = '{med_label}'" if fname == "medium" else ""
                if ids:
                    w_sql = "id IN (" + ",".join(f"'{i}'" for i in ids) + ")" + extra
                    got = id_of(run_query(ds, q, 10, where=w_sql, params=p))
                else:
                    got = np.array([], dtype=np.int64)
                times.append(time.perf_counter() - t0)
                recs.append(recall(got, want))
            row["postings ids, then id IN (...)"] = {"median_ms": median_ms(times),
                                                     "recall@10": round(float(np.mean(recs)), 4)}
            r["filtered"][fname] = row
            pooled.extend(search_times)
            print("  ", fname, json.dumps(row), flush=True)
        r["search_filtered_pooled_median_ms"] = median_ms(pooled)
        report["indexes"][kind] = r
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
