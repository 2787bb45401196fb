"""Ingest throughput: the local engine vs --engine ray (local Ray instance) on the same images, side by side.

Each repeat ingests the same source into a fresh database with both engines, alternating, so the
machine's load drifts into both alike; medians of the wall time of the whole ingest() call and the
per-repeat ratio are reported. The Ray instance is started once (its start-up is reported apart);
Ray's per-run costs (actor start-up with a model load per actor, object-store hand-offs, lance-ray
commits) are in the Ray times.

    .venv/bin/python benchmarks/bench_ray.py                         # 300 demo-world images, demo model
    .venv/bin/python benchmarks/bench_ray.py --n 500 --repeats 5 --num-cpus 2
    .venv/bin/python benchmarks/bench_ray.py --source ../shared/datasets/imagenet-sample --model ViT-B-32
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("LANCEDB_LOG", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="demo-world images (without --source)")
    ap.add_argument("--source", default=None, help="a directory or manifest instead of the demo world "
                                                   "(skipped if missing)")
    ap.add_argument("--limit", type=int, default=None, help="first N images of --source")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--vocab", default="demo")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--workers", type=int, default=None, help="decode processes of the local engine")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import ray

    from lance_concepts.lake.engines.ray import init_local
    from lance_concepts.lake.ingest import ingest

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        if args.source:
            source = Path(args.source)
            if not source.exists():
                print(f"skipped: {source} does not exist")
                return 0
        else:
            from lance_concepts.demo.world import generate_dataset

            source = generate_dataset(work / "data", n=args.n, seed=0)
        pretrained = None  # random weights for open_clip models: the architecture sets the cost
        kw = dict(model=args.model, pretrained=pretrained, vocab=args.vocab, batch_size=args.batch_size, quiet=True, limit=args.limit)
        ingest(source, str(work / "warm.lancedb"), workers=0, **{**kw, 'limit': 8})  # caches: vocabulary embedding
        t0 = time.perf_counter()
        init_local(num_cpus=args.num_cpus)
        ray_start = time.perf_counter() - t0
        rows = []
        for r in range(args.repeats):
            row = {}
            for engine in ("local", "ray"):
                db = work / f"{engine}{r}.lancedb"
                t = time.perf_counter()
                s = ingest(source, str(db), engine=engine, workers=args.workers, **kw)
                row[engine] = time.perf_counter() - t
                row[f"{engine}_ok"] = s.ok
                shutil.rmtree(db, ignore_errors=True)
            row["ratio"] = row["ray"] / row["local"]
            rows.append(row)
            print(f"repeat {r}: local {row['local']:.1f}s, ray {row['ray']:.1f}s, ratio {row['ratio']:.2f} "
                  f"(ok {row['local_ok']} / {row['ray_ok']})", flush=True)
        ray.shutdown()
        n = rows[0]["local_ok"]
        res = {"images": n, "model": args.model, "vocab": args.vocab, "batch_size": args.batch_size,
               "ray_num_cpus": args.num_cpus, "ray_start_s": ray_start,
               "local_s": statistics.median(r["local"] for r in rows),
               "ray_s": statistics.median(r["ray"] for r in rows),
               "ratio": statistics.median(r["ratio"] for r in rows), "repeats": rows,
               "loadavg": os.getloadavg()}
        print(f"\n{n} images, model {args.model}, vocab {args.vocab}, batch {args.batch_size}, "
              f"{args.repeats} repeats (medians); Ray start-up {ray_start:.1f}s (not included)")
        print("| engine | wall time | images/s |\n|---|---:|---:|")
        for e in ("local", "ray"):
            print(f"| {e} | {res[e + '_s']:.1f} s | {n / res[e + '_s']:.1f} |")
        print(f"| ray / local (median of per-repeat ratios) | {res['ratio']:.2f}x | |")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
