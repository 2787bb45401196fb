"""Slice discovery on planted failures: precision@5, top-1 hits and false slices on a control model.

    PYTHONPATH=. python benchmarks/bench_slices.py --seeds 10 --n 3000

Per seed: the synthetic world of the tests (tests/test_sql_world.py: per-image weights of colour,
shape, background and noise concepts), predictions right except 5% random errors everywhere and 80%
errors on one planted (shape, background) slice chosen at random among those with >= 40 images.
top-1 hit: the first slice names the background (within the shape's scope, or with the shape as a
pair). precision@5: share of the top min(5, reported) whose concepts are within {shape, background}. Control: the
same world with only the 5% random errors; every slice reported there is a false one.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from lance_concepts.query.slices import slices
from tests.test_sql_world import draw_world, write_world


def predictions(rows, plant, rng, base=0.05, rate=0.8):
    out = []
    for r in rows:
        bad = plant is not None and (r["label"], r["background"]) == plant
        wrong = rng.random() < (rate if bad else base)
        out.append({"id": r["id"], "predicted": ("wrong" if wrong else r["label"])})
    return out


def run(seed: int, n: int, tmp: str):
    import lance

    rng = np.random.default_rng(seed)
    rows = draw_world(n, seed=seed)
    combos = Counter((r["label"], r["background"]) for r in rows if r["background"])
    plant = [c for c, k in sorted(combos.items()) if k >= 40][int(rng.integers(sum(k >= 40 for k in combos.values())))]
    db = str(write_world(f"{tmp}/w{seed}.lancedb", rows))
    ds = lance.dataset(f"{db}/images.lance")
    ds.merge(pa.Table.from_pylist(predictions(rows, plant, rng)), left_on="id")
    ds = lance.dataset(f"{db}/images.lance")
    ctl = predictions(rows, None, np.random.default_rng(seed + 1000))
    ds.merge(pa.Table.from_pylist([{"id": c["id"], "control": c["predicted"]} for c in ctl]), left_on="id")
    t0 = time.perf_counter()
    res = slices(db, "label", "predicted")
    dt = time.perf_counter() - t0
    top = res.table.to_pylist()[:5]
    ok = [set(r["concepts"]) <= set(plant) for r in top]
    first = top[0] if top else None
    hit = bool(first) and plant[1] in first["concepts"] and (first["scope"] == plant[0] or plant[0] in first["concepts"])
    false = slices(db, "label", "control").table.num_rows
    return plant, hit, (sum(ok) / len(top) if top else 0.0), false, dt, res.table.num_rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    try:
        res = [run(s, a.n, tmp) for s in range(a.seeds)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for plant, hit, p5, false, dt, k in res:
        print(f"planted {plant}: top-1 hit {hit}, precision@5 {p5:.2f} ({k} slices reported), control slices "
              f"{false}, {dt:.2f} s")
    print(f"{a.seeds} seeds, n={a.n}: top-1 hit rate {np.mean([r[1] for r in res]):.2f}, mean precision@5 "
          f"{np.mean([r[2] for r in res]):.2f}, control slices in total {sum(r[3] for r in res)}, "
          f"median time {np.median([r[4] for r in res]):.2f} s")


if __name__ == "__main__":
    main()
