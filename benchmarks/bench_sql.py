"""SQL queries at a million images: lance_concepts.sql / reports against the naive layout.

The table (benchmarks/synth_concepts.py, no CLIP): N images, ~20 non-zero concept weights per image
over 10,000 concepts with Zipf-like frequencies, 100 labels, 24 months of timestamps, a train/test
split, planted label associations and three drifting concepts. The database holds the project's
layout (images with parallel concept_ids / concept_weights lists, concepts, image_concepts postings
with its BITMAP index, the BTREE / LABEL_LIST indexes store.py builds) and, side by side, the naive
layout: ``images_naive`` with one ``concepts list<struct<concept_id int32, weight float32>>``
column, queried by unnesting it through DuckDB's Arrow scan of the Lance dataset.

Cases (ours = the lance_concepts function a user calls, end to end; naive = the SQL a user would
write against the naive layout, aggregation only, no statistics, which favours the naive side):

  filter_ids     ids + weights of the images whose weight for a ~1%-frequency concept is > 0.05
  filter_top100  the same, strongest 100, with uri and label  (reports.filter(..., limit=100))
  filter_rows    the same, all matches, with uri and label     (reports.filter(...))
  drift          monthly drift of the top 50 concepts over 24 months: reports.drift(top=50)
                 (prevalence + Wilson, mean weight + CI, tests vs reference, BH, homogeneity
                 test, alerts, rising/falling, JS divergence) vs the naive (month, concept) counts
  spurious       spurious report over 100 labels: reports.spurious (lift, nPMI, one-sided tests,
                 BH, label-name exclusion by string) vs the naive (label, concept) counts
  drift_counts, spurious_counts   the (window|label, concept) counts and weight sums alone, read
                 from the rollup: like for like with the naive side (no statistics on either side)
  drift_scan, spurious_scan   the same two reports with engine="lance": counted from the images
                 table in one pass instead of read from the rollup (images_rollup, built by
                 ingest; here by ensure_rollup, timed once)

Timings: medians of --repeats runs after one warm-up, ours and naive interleaved (A B A B ...) in
one process so that both see the same machine load; the ratio is naive / ours. Peak memory: each
variant once more in its own fresh process: peak RSS (VmHWM, reset after connecting) minus the RSS
after connecting, i.e. the extra memory one (warm) run of the query needed.
The sql/ library queries (pure DuckDB over our layout) are timed once for reference.

    .venv/bin/python benchmarks/bench_sql.py                         # N = 1,000,000 (writes ~1 GB)
    .venv/bin/python benchmarks/bench_sql.py --n 100000 --repeats 3  # quick look
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("LANCE_LOG", "error")
warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CASES = ["filter_ids", "filter_top100", "filter_rows", "drift", "drift_scan", "drift_counts", "spurious",
         "spurious_scan", "spurious_counts"]
THRESHOLD = 0.05


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _variants(db: str, probe: dict):
    """(ours, naive) callables for each case, sharing one connection."""
    from lance_concepts.query.drift import drift
    from lance_concepts.query.filter import filter
    from lance_concepts.query.spurious import spurious
    from lance_concepts.query.crosstab import concept_crosstab
    from lance_concepts.query.connection import concept_names, connect, run_query
    from lance_concepts.query.named import load_query

    con = connect(db)
    name, cid = probe["name"], probe["cid"]
    unnest = "SELECT id, uri, label, unnest(concepts) AS x FROM images_naive"
    naive_filter = f"SELECT id, x.weight AS weight FROM ({unnest}) WHERE x.concept_id = $c AND x.weight > $t"
    naive_rows = (f"SELECT id, uri, label, x.weight AS weight FROM ({unnest}) WHERE x.concept_id = $c "
                  "AND x.weight > $t ORDER BY weight DESC, id")
    naive_drift = ("SELECT date_trunc('month', timestamp) AS m, x.concept_id AS cid, count(*) FILTER "
                   "(WHERE x.weight > 0) AS n_present, sum(x.weight) AS s, sum(x.weight * x.weight) AS s2 "
                   "FROM (SELECT timestamp, unnest(concepts) AS x FROM images_naive) GROUP BY ALL")
    naive_spur = ("SELECT label, x.concept_id AS cid, count(*) FILTER (WHERE x.weight > 0) AS n_present, "
                  "sum(x.weight) AS s FROM (SELECT label, unnest(concepts) AS x FROM images_naive) GROUP BY ALL")

    def q(sql, params=None):
        return lambda: run_query(con, sql, params).num_rows

    cases = {
        "filter_ids": (q("SELECT image_id, weight FROM concept_images($n, $t)", {"n": name, "t": THRESHOLD}),
                       q(naive_filter, {"c": cid, "t": THRESHOLD})),
        "filter_top100": (lambda: filter(con, name, THRESHOLD, limit=100, columns=["uri", "label"]).num_rows,
                          q(naive_rows + " LIMIT 100", {"c": cid, "t": THRESHOLD})),
        "filter_rows": (lambda: filter(con, name, THRESHOLD, columns=["uri", "label"]).num_rows,
                        q(naive_rows, {"c": cid, "t": THRESHOLD})),
        "drift": (lambda: drift(con, "timestamp", "month", top=50).table.num_rows,
                  q(naive_drift + " UNION ALL SELECT date_trunc('month', timestamp), -1, count(*), 0, 0 "
                                  "FROM images_naive GROUP BY ALL")),
        "spurious": (lambda: spurious(con, "label", label_match="string").table.num_rows,
                     q(naive_spur + " UNION ALL SELECT label, -1, count(*), 0 FROM images_naive GROUP BY ALL")),
    }
    # the same reports without the rollup: one pass over every concept weight of the images table
    cases["drift_scan"] = (lambda: drift(con, "timestamp", "month", top=50, engine="lance").table.num_rows,
                           cases["drift"][1])
    cases["spurious_scan"] = (lambda: spurious(con, "label", label_match="string", engine="lance").table.num_rows,
                              cases["spurious"][1])
    # the aggregation alone, like for like with the naive side (no statistics on either side)
    cases["drift_counts"] = (lambda: len(concept_crosstab(con, "timestamp", every="month").groups),
                             cases["drift"][1])
    cases["spurious_counts"] = (lambda: len(concept_crosstab(con, "label").groups), cases["spurious"][1])
    return con, cases


def _time_case(db, probe, case, repeats, out):
    con, cases = _variants(db, probe)
    ours, naive = cases[case]
    rows = {"ours": ours(), "naive": naive()}  # warm-up
    t = {"ours": [], "naive": []}
    for _ in range(repeats):
        for k, f in (("ours", ours), ("naive", naive)):
            t0 = time.perf_counter()
            f()
            t[k].append(time.perf_counter() - t0)
    out.put({"case": case, "ours_s": t["ours"], "naive_s": t["naive"], "rows": rows})


def _hwm_mb() -> float:
    """Peak resident set size of this process (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mem_case(db, probe, case, which, out):
    con, cases = _variants(db, probe)
    f = cases[case][0 if which == "ours" else 1]
    import gc

    f()  # warm: imports, JIT, caches are not the query's memory
    gc.collect()
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    base = _rss_mb()
    f()
    peak = _hwm_mb()
    out.put({"case": case, "which": which, "base_mb": base, "peak_mb": peak, "delta_mb": peak - base})


def _library_sql(db, out):
    from lance_concepts.query.crosstab import concept_crosstab
    from lance_concepts.query.connection import concept_names, connect, run_query
    from lance_concepts.query.named import load_query

    con = connect(db)
    res = {}
    for name, params in (("drift_alerts", {}), ("spurious_correlations", {}), ("concept_prevalence", {})):
        t0 = time.perf_counter()
        n = load_query(name).run(con, params).num_rows
        res[name] = {"s": time.perf_counter() - t0, "rows": n}
    out.put(res)


def _in_child(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def build(work: Path, n: int, concepts: int, nnz: int, labels: int, months: int, seed: int) -> str:
    import synth_concepts as sc

    db = work / "bench_sql.lancedb"
    meta = work / "params.json"
    want = {"n": n, "concepts": concepts, "nnz": nnz, "labels": labels, "months": months, "seed": seed, "v": 2}
    if db.is_dir() and meta.is_file() and json.loads(meta.read_text()) == want:
        print(f"reusing {db}")
        return str(db)
    shutil.rmtree(db, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = sc.generate(n, concepts, nnz, labels, months, seed=seed)
    t1 = time.perf_counter()
    took = sc.write_tables(str(db), s, naive=True)
    print(f"generated {n:,} images / {len(s.weights):,} postings in {t1 - t0:.0f}s, wrote in "
          + ", ".join(f"{k} {v:.0f}s" for k, v in took.items()))
    meta.write_text(json.dumps(want))
    return str(db)


def ensure_rollup(db: str) -> dict:
    """Build the report aggregates as ingest does at its end (timed: the cost a write pays)."""
    from lance_concepts.lake.rollup import rollup

    s = rollup(db)
    print(f"rollup: {s.rows:,} rows, {s.dimensions} in {s.seconds:.1f}s")
    return {"rows": s.rows, "dimensions": s.dimensions, "seconds": s.seconds}


def _probe(db: str, rank: int) -> dict:
    from lance_concepts.query.crosstab import concept_crosstab
    from lance_concepts.query.connection import concept_names, connect, run_query
    from lance_concepts.query.named import load_query

    con = connect(db)
    cnt = con.execute("SELECT concept_id, count(*) AS n FROM image_concepts_raw GROUP BY 1 ORDER BY 2 DESC, 1"
                      ).fetchall()
    cid, k = cnt[min(rank, len(cnt) - 1)]
    n = con.execute("SELECT count(*) FROM images").fetchone()[0]
    name = concept_names(con).name(int(cid))
    con.close()
    return {"cid": int(cid), "name": name, "images_with": int(k), "share": k / n, "rank": rank}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--concepts", type=int, default=10_000)
    ap.add_argument("--nnz", type=int, default=20)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rank", type=int, default=200, help="frequency rank of the filter concept (200: ~1%%)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-library", action="store_true")
    ap.add_argument("--workdir", default="/tmp/lance_concepts_bench_sql")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    db = build(Path(a.workdir), a.n, a.concepts, a.nnz, a.labels, a.months, a.seed)
    built = ensure_rollup(db)
    probe = _probe(db, a.rank)
    print(f"filter concept {probe['name']!r} (rank {a.rank}): in {probe['images_with']:,} images "
          f"({probe['share']:.2%}); weight > {THRESHOLD}")
    results = {"n": a.n, "probe": probe, "rollup": built, "cases": {}, "memory": {}, "cpu_count": os.cpu_count(),
               "loadavg_start": os.getloadavg()}
    for case in a.cases.split(","):
        r = _in_child(_time_case, db, probe, case, a.repeats)
        mo, mn = statistics.median(r["ours_s"]), statistics.median(r["naive_s"])
        results["cases"][case] = {**r, "ours_median_s": mo, "naive_median_s": mn, "ratio": mn / mo}
        print(f"{case:14s} ours {mo * 1000:9.1f} ms   naive {mn * 1000:9.1f} ms   x{mn / mo:6.1f}   rows {r['rows']}",
              flush=True)
        if not a.no_memory:
            for which in ("ours", "naive"):
                m = _in_child(_mem_case, db, probe, case, which)
                results["memory"][f"{case}/{which}"] = m
            print(f"{'':14s} peak RSS over baseline: ours {results['memory'][f'{case}/ours']['delta_mb']:.0f} MB, "
                  f"naive {results['memory'][f'{case}/naive']['delta_mb']:.0f} MB", flush=True)
    if not a.no_library:
        lib = _in_child(_library_sql, db)
        results["library_sql"] = lib
        print("sql/ library (pure DuckDB, our layout): " + ", ".join(f"{k} {v['s']:.1f}s" for k, v in lib.items()))
    results["loadavg_end"] = os.getloadavg()
    print_markdown(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return results


def print_markdown(r):
    print()
    p = r["probe"]
    print(f"N = {r['n']:,} images; filter concept in {p['share']:.2%} of images; load average "
          f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f} on {r['cpu_count']} cores")
    print()
    print("| query | lance-concepts (median) | naive list<struct> (median) | naive / ours | peak RSS ours / naive |")
    print("|---|---:|---:|---:|---:|")
    for case, c in r["cases"].items():
        mo = r["memory"].get(f"{case}/ours", {}).get("delta_mb")
        mn = r["memory"].get(f"{case}/naive", {}).get("delta_mb")
        mem = f"{mo:.0f} / {mn:.0f} MB" if mo is not None else "-"
        print(f"| {case} | {c['ours_median_s'] * 1000:.0f} ms | {c['naive_median_s'] * 1000:.0f} ms | "
              f"{c['ratio']:.1f}x | {mem} |")


if __name__ == "__main__":
    main()
