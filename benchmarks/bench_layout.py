"""Concept-weight layout benchmark: which layout of the SpLiCE weights serves the queries best?

Synthetic but shaped like the real thing: N images, C concepts, about NNZ non-zero weights per image
drawn Zipf-like over the concepts (a few concepts are in most images, most are rare), weights sorted
descending, 100 labels, timestamps over 12 months, a D-dimensional embedding for vector search.

Candidates (all in one LanceDB `images` table except the postings):
  parallel    concept_ids list<int32> + concept_weights list<float32>       (DuckDB list functions)
  parallel+LL the same, with a LABEL_LIST scalar index on concept_ids       (LanceDB where())
  thresh+LL   concepts_top list<int32>: ids with weight >= TAU, LABEL_LIST index (no weights)
  postings    image_concepts(image_id, concept_id, weight), BITMAP index on concept_id
  map         concept_map map<int32, float32>
  structs     concept_structs list<struct<concept_id int32, weight float32>>

Queries (the SQL issue's): concept filter (id, label, weight of concept c above TAU), drift (mean
weight of c per month), per-label prevalence of c, top-5 concepts per label by mean weight (all
concepts), and LanceDB where() filters: a plain filtered scan and a k=10 vector search prefiltered
on "contains concept c". DuckDB reads the Lance datasets through its Arrow scan (projection and
filter pushdown), the same path lance_concepts.sql uses.

    .venv/bin/python benchmarks/bench_layout.py                  # 200k images, ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_layout.py --n 20000 --repeats 3   # quick look

Prints a markdown table; --json writes the raw numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

warnings.filterwarnings("ignore")
os.environ.setdefault("LANCEDB_LOG", "error")  # silence the Rust-side deprecation warnings

TAU = 0.05


def generate(n: int, c: int, nnz: int, dim: int, seed: int = 0, zipf_s: float = 1.0):
    """Return (image columns dict, flat postings arrays)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, c + 1, dtype=np.float64)
    p = ranks ** (-zipf_s)
    p /= p.sum()
    k = np.clip(rng.poisson(nnz, size=n), 1, None)
    rows = np.repeat(np.arange(n), k)
    cids = rng.choice(c, size=rows.size, p=p).astype(np.int32)
    # dedupe (row, concept) pairs: sampling with replacement then unique gives ~nnz distinct per row
    key = rows.astype(np.int64) * c + cids
    key = np.unique(key)
    rows = (key // c).astype(np.int64)
    cids = (key % c).astype(np.int32)
    w = rng.exponential(0.08, size=rows.size).astype(np.float32) + np.float32(1e-3)
    order = np.lexsort((-w, rows))  # by row, weight descending
    rows, cids, w = rows[order], cids[order], w[order]
    counts = np.bincount(rows, minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    ids = pa.array([f"img{i:07d}" for i in range(n)])
    labels = pa.array([f"label{j:03d}" for j in rng.integers(0, 100, size=n)])
    start = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
    ts = (start + rng.uniform(0, 365 * 86400, size=n)) * 1e6
    timestamps = pa.array(ts.astype("int64"), pa.timestamp("us"))
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
    off = pa.array(offsets)
    concept_ids = pa.ListArray.from_arrays(off, pa.array(cids))
    concept_weights = pa.ListArray.from_arrays(off, pa.array(w))
    keep = w >= TAU
    top_counts = np.bincount(rows[keep], minlength=n)
    top_off = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(top_counts, out=top_off[1:])
    concepts_top = pa.ListArray.from_arrays(pa.array(top_off), pa.array(cids[keep]))
    concept_map = pa.MapArray.from_arrays(off, pa.array(cids), pa.array(w))
    structs = pa.StructArray.from_arrays([pa.array(cids), pa.array(w)], names=["concept_id", "weight"])
    concept_structs = pa.ListArray.from_arrays(off, structs)
    images = pa.table(
        {
            "id": ids,
            "label": labels,
            "timestamp": timestamps,
            "embedding": embedding,
            "concept_ids": concept_ids,
            "concept_weights": concept_weights,
            "concepts_top": concepts_top,
            "concept_map": concept_map,
            "concept_structs": concept_structs,
        }
    )
    postings = pa.table(
        {"image_id": ids.take(pa.array(rows)), "concept_id": pa.array(cids), "weight": pa.array(w)}
    )
    return images, postings, emb[:5].copy()


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def timed(fn, repeats: int):
    fn()  # warm-up (page cache, plan caches)
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def duckdb_queries(c: int):
    """SQL per query per layout. $c is the concept id, $t the weight threshold."""
    has_p = "list_contains(concept_ids, $c)"
    w_p = "coalesce(concept_weights[list_position(concept_ids, $c)], 0)"
    w_m = "coalesce(concept_map[$c], 0)"
    w_s = "coalesce(list_filter(concept_structs, lambda x: x.concept_id = $c)[1].weight, 0)"
    post_c = "(SELECT image_id, weight FROM image_concepts WHERE concept_id = $c)"
    return {
        "filter": {
            "parallel": f"SELECT id, label, {w_p} AS w FROM images WHERE {has_p} AND {w_p} > $t",
            "thresh": "SELECT id, label FROM images WHERE list_contains(concepts_top, $c)",
            "postings": "SELECT i.id, i.label, p.weight FROM image_concepts p JOIN images i ON i.id = p.image_id "
            "WHERE p.concept_id = $c AND p.weight > $t",
            "map": f"SELECT id, label, {w_m} AS w FROM images WHERE {w_m} > $t",
            "structs": f"SELECT id, label, {w_s} AS w FROM images WHERE {w_s} > $t",
        },
        "drift": {
            "parallel": f"SELECT date_trunc('month', timestamp) m, avg({w_p}) FROM images GROUP BY m ORDER BY m",
            "thresh": "SELECT date_trunc('month', timestamp) m, avg(list_contains(concepts_top, $c)::INT) "
            "FROM images GROUP BY m ORDER BY m",
            "postings": f"SELECT date_trunc('month', i.timestamp) m, coalesce(sum(p.weight), 0) / count(*) "
            f"FROM images i LEFT JOIN {post_c} p ON p.image_id = i.id GROUP BY m ORDER BY m",
            "map": f"SELECT date_trunc('month', timestamp) m, avg({w_m}) FROM images GROUP BY m ORDER BY m",
            "structs": f"SELECT date_trunc('month', timestamp) m, avg({w_s}) FROM images GROUP BY m ORDER BY m",
        },
        "prevalence": {
            "parallel": f"SELECT label, avg({has_p}::INT) FROM images GROUP BY label ORDER BY label",
            "thresh": "SELECT label, avg(list_contains(concepts_top, $c)::INT) FROM images GROUP BY label ORDER BY label",
            "postings": f"SELECT i.label, avg((p.image_id IS NOT NULL)::INT) FROM images i LEFT JOIN {post_c} p "
            "ON p.image_id = i.id GROUP BY i.label ORDER BY i.label",
            "map": "SELECT label, avg((concept_map[$c] IS NOT NULL)::INT) FROM images GROUP BY label ORDER BY label",
            "structs": "SELECT label, avg((len(list_filter(concept_structs, lambda x: x.concept_id = $c)) > 0)::INT) "
            "FROM images GROUP BY label ORDER BY label",
        },
        "top_per_label": {
            layout: f"WITH u AS ({src}), s AS (SELECT label, cid, sum(w) AS sw FROM u GROUP BY label, cid), "
            "n AS (SELECT label, count(*) AS n FROM images GROUP BY label) "
            "SELECT label, cid, sw / n AS score FROM s JOIN n USING (label) "
            "QUALIFY row_number() OVER (PARTITION BY label ORDER BY score DESC) <= 5 ORDER BY label, score DESC"
            for layout, src in {
                "parallel": "SELECT label, unnest(concept_ids) AS cid, unnest(concept_weights) AS w FROM images",
                "postings": "SELECT i.label, p.concept_id AS cid, p.weight AS w FROM image_concepts p "
                "JOIN images i ON i.id = p.image_id",
                "map": "SELECT label, unnest(map_keys(concept_map)) AS cid, unnest(map_values(concept_map)) AS w "
                "FROM images",
                "structs": "SELECT label, x.concept_id AS cid, x.weight AS w "
                "FROM (SELECT label, unnest(concept_structs) AS x FROM images)",
            }.items()
        },
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--concepts", type=int, default=10_000)
    ap.add_argument("--nnz", type=int, default=20)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="where to write the Lance tables (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write raw results here")
    args = ap.parse_args(argv)

    import duckdb
    import lancedb
    from lancedb.index import Bitmap, BTree, LabelList

    work = args.workdir or tempfile.mkdtemp(prefix="bench_layout_")
    dbdir = os.path.join(work, "layout.lancedb")
    shutil.rmtree(dbdir, ignore_errors=True)
    t0 = time.perf_counter()
    images, postings, qvecs = generate(args.n, args.concepts, args.nnz, args.dim)
    gen_s = time.perf_counter() - t0
    nnz_mean = postings.num_rows / args.n
    print(f"generated {args.n} images, {postings.num_rows} postings ({nnz_mean:.1f}/image) in {gen_s:.1f}s")

    db = lancedb.connect(dbdir)
    t0 = time.perf_counter()
    tbl = db.create_table("images", images)
    ptbl = db.create_table("image_concepts", postings)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tbl.create_index("concept_ids", config=LabelList())
    ll_s = time.perf_counter() - t0
    tbl.create_index("concepts_top", config=LabelList())
    tbl.create_index("id", config=BTree())
    t0 = time.perf_counter()
    ptbl.create_index("concept_id", config=Bitmap())
    bm_s = time.perf_counter() - t0
    print(f"wrote tables in {write_s:.1f}s; LABEL_LIST index {ll_s:.1f}s; BITMAP index {bm_s:.1f}s")

    # storage per layout: write each layout's columns alone (with the id) and measure the directory
    sizes = {}
    size_db = lancedb.connect(os.path.join(work, "sizes.lancedb"))
    for name, cols in {
        "parallel": ["id", "concept_ids", "concept_weights"],
        "thresh": ["id", "concepts_top"],
        "map": ["id", "concept_map"],
        "structs": ["id", "concept_structs"],
    }.items():
        size_db.create_table(name, images.select(cols), mode="overwrite")
        sizes[name] = dir_bytes(os.path.join(work, "sizes.lancedb", f"{name}.lance"))
    sizes["postings"] = dir_bytes(os.path.join(dbdir, "image_concepts.lance"))
    shutil.rmtree(os.path.join(work, "sizes.lancedb"), ignore_errors=True)

    # concepts of different frequency: rank 5 (frequent), 200 (mid), 5000 (rare)
    pc = np.bincount(postings.column("concept_id").to_numpy(), minlength=args.concepts)
    probe = {"frequent": 5, "mid": 200, "rare": min(5000, args.concepts - 1)}
    share = {k: float(pc[v]) / args.n for k, v in probe.items()}
    print("share of images containing the probe concepts:", {k: f"{v:.2%}" for k, v in share.items()})

    results = {"n": args.n, "concepts": args.concepts, "nnz_mean": nnz_mean, "dim": args.dim, "sizes": sizes,
               "share": share, "duckdb": {}, "lancedb": {}, "index_build_s": {"label_list": ll_s, "bitmap": bm_s}}

    # ---- DuckDB over the Lance datasets (Arrow scan with projection / filter pushdown)
    con = duckdb.connect()
    con.register("images", tbl.to_lance())
    con.register("image_concepts", ptbl.to_lance())
    for qname, per_layout in duckdb_queries(0).items():
        for which, cid in probe.items():
            if qname == "top_per_label" and which != "frequent":
                continue  # independent of the probe concept
            for layout, sql in per_layout.items():
                params = {k: v for k, v in {"c": cid, "t": TAU}.items() if f"${k}" in sql}
                med, out = timed(lambda: con.execute(sql, params).to_arrow_table(), args.repeats)
                key = f"{qname}/{which}" if qname != "top_per_label" else qname
                results["duckdb"].setdefault(key, {})[layout] = {"s": med, "rows": out.num_rows}
                print(f"duckdb {key:24s} {layout:9s} {med * 1000:9.1f} ms  rows={out.num_rows}")

    # ---- LanceDB where(): plain filtered scan and prefiltered vector search (flat, k=10)
    q = qvecs[0]

    def lance_filters(cid):
        c32 = f"arrow_cast({cid}, 'Int32')"
        return {
            "parallel": f"array_contains(concept_ids, {cid})",  # Int64 literal: the index is NOT used
            "parallel+LL": f"array_has(concept_ids, {c32})",  # Int32 literal: LABEL_LIST index used
            "parallel+LL+w": f"array_has(concept_ids, {c32}) AND "
            f"concept_weights[CAST(array_position(concept_ids, {c32}) AS BIGINT)] > {TAU}",
            "thresh+LL": f"array_has(concepts_top, {c32})",
            "map": f"concept_map[{c32}] > {TAU}",
        }

    def postings_ids(cid):
        return (
            ptbl.search().where(f"concept_id = {cid}").select(["image_id"]).limit(None).to_arrow().column("image_id")
        )

    for which, cid in probe.items():
        for layout, flt in lance_filters(cid).items():
            def scan(flt=flt):
                return tbl.search().where(flt).select(["id"]).limit(None).to_arrow()

            def vec(flt=flt):
                return tbl.search(q).where(flt, prefilter=True).select(["id"]).limit(10).to_arrow()

            try:
                plan = tbl.search().where(flt).select(["id"]).limit(None).explain_plan(True)
                uses_index = "ScalarIndexQuery" in plan
                ms, out_s = timed(scan, args.repeats)
                mv, out_v = timed(vec, args.repeats)
                results["lancedb"].setdefault(f"scan/{which}", {})[layout] = {"s": ms, "rows": out_s.num_rows,
                                                                             "index": uses_index}
                results["lancedb"].setdefault(f"vector/{which}", {})[layout] = {"s": mv, "rows": out_v.num_rows}
                print(f"lancedb {which:9s} {layout:14s} scan {ms * 1000:8.1f} ms rows={out_s.num_rows:6d} "
                      f"index={uses_index}  vector {mv * 1000:8.1f} ms")
            except Exception as exc:  # a layout LanceDB cannot filter on
                results["lancedb"].setdefault(f"scan/{which}", {})[layout] = {"error": str(exc)[:200]}
                print(f"lancedb {which:9s} {layout:14s} ERROR {str(exc)[:120]}")

        # postings: two steps (ids from the BITMAP-indexed postings, then `id IN (...)` on images)
        def p_scan(cid=cid):
            return postings_ids(cid)

        def p_vec(cid=cid):
            ids = postings_ids(cid).to_pylist()
            lits = ",".join("'" + s + "'" for s in ids)
            return tbl.search(q).where(f"id IN ({lits})", prefilter=True).select(["id"]).limit(10).to_arrow()

        ms, out_s = timed(p_scan, args.repeats)
        try:
            mv, out_v = timed(p_vec, max(1, args.repeats // 2))
            vres = {"s": mv, "rows": out_v.num_rows}
            vtxt = f"{mv * 1000:8.1f} ms"
        except Exception as exc:
            vres = {"error": str(exc)[:200]}
            vtxt = "ERROR " + str(exc)[:80]
        results["lancedb"].setdefault(f"scan/{which}", {})["postings+BM"] = {"s": ms, "rows": len(out_s)}
        results["lancedb"].setdefault(f"vector/{which}", {})["postings+BM"] = vres
        print(f"lancedb {which:9s} {'postings+BM':14s} scan {ms * 1000:8.1f} ms rows={len(out_s):6d}  vector {vtxt}")

    # unfiltered vector search for reference
    mv, _ = timed(lambda: tbl.search(q).select(["id"]).limit(10).to_arrow(), args.repeats)
    results["lancedb"]["vector/unfiltered"] = {"none": {"s": mv}}
    print(f"lancedb unfiltered vector search {mv * 1000:.1f} ms")

    print_markdown(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_markdown(r):
    def ms(cell):
        if cell is None:
            return "n/a"
        if "error" in cell:
            return "unsupported"
        return f"{cell['s'] * 1000:.0f}"

    print()
    print(f"N = {r['n']:,} images, {r['concepts']:,} concepts, {r['nnz_mean']:.1f} non-zeros/image, d = {r['dim']}")
    print("probe concept shares: " + ", ".join(f"{k} {v:.1%}" for k, v in r["share"].items()))
    print()
    layouts = ["parallel", "thresh", "postings", "map", "structs"]
    print("DuckDB, median ms | " + " | ".join(layouts) + " |")
    print("|---|" + "---:|" * len(layouts))
    for key, cells in r["duckdb"].items():
        print(f"| {key} | " + " | ".join(ms(cells.get(lay)) for lay in layouts) + " |")
    print()
    layouts = ["parallel", "parallel+LL", "parallel+LL+w", "thresh+LL", "postings+BM", "map"]
    print("LanceDB where(), median ms | " + " | ".join(layouts) + " |")
    print("|---|" + "---:|" * len(layouts))
    for key, cells in r["lancedb"].items():
        if key == "vector/unfiltered":
            continue
        print(f"| {key} | " + " | ".join(ms(cells.get(lay)) for lay in layouts) + " |")
    print(f"unfiltered flat vector search (k=10): {r['lancedb']['vector/unfiltered']['none']['s'] * 1000:.0f} ms")
    print()
    print("storage MiB: " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in r["sizes"].items()))


if __name__ == "__main__":
    main()
