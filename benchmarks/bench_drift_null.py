"""Jensen-Shannon divergence vs its simulated no-drift level, on the synthetic test world with timestamps
shuffled (no drift) and as drawn (red planted 10% -> 70%), per window size.

    PYTHONPATH=. python benchmarks/bench_drift_null.py
"""
from __future__ import annotations

import pathlib
import tempfile

import numpy as np

from lance_concepts.query.drift import drift
from tests.test_sql_world import draw_world, write_world


def main(n: int = 1200) -> None:
    rows = draw_world(n, seed=1)
    ts = [r["timestamp"] for r in rows]
    perm = np.random.default_rng(0).permutation(len(rows))
    shuffled = [dict(r, timestamp=ts[j]) for r, j in zip(rows, perm)]
    tmp = pathlib.Path(tempfile.mkdtemp())
    dbs = {"no drift": write_world(tmp / "a.lancedb", shuffled), "planted drift": write_world(tmp / "b.lancedb", rows)}
    print(f"{'data':<14} {'window':<8} {'median JS':>9} {'median null':>11} {'last JS':>8} {'last null':>9}")
    for name, db in dbs.items():
        for every in ("week", "month", "quarter"):
            d = drift(str(db), "timestamp", every)
            ws = [w for w in d.windows if w != d.reference]
            js = np.median([d.js[w] for w in ws])
            nl = np.median([d.js_null[w] for w in ws])
            print(f"{name:<14} {every:<8} {js:9.3f} {nl:11.3f} {d.js[ws[-1]]:8.3f} {d.js_null[ws[-1]]:9.3f}")


if __name__ == "__main__":
    main()
