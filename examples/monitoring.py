"""Monitoring a growing collection: one batch of images a day for a year, and a `check` after each.

A planted shift: from 1 September (month 9) the share of images showing snow jumps from 5% to 60%
(a new camera site in the mountains, say). The loop appends each day's batch, brings the report
aggregates current (incremental: only the new batch is aggregated, as `ingest` does at its end),
compacts every 16 batches as `ingest` does, and runs `check` with a spec a scheduler would run:

    [[expect]]                       # daily: today's images against the four weeks before
    name = "snow stable"
    type = "no_drift"
    current = "last 1 day"
    reference = "previous 28 days"
    concepts = ["snow"]

    [[expect]]
    name = "enough images"
    type = "images_per_day"
    window = "last 1 day"
    min = 100

The batches carry precomputed concept weights (the part of `ingest` that runs CLIP and SpLiCE is
not what is being shown), written with plain LanceDB as any writer could. Expected output: every
day passes until 2024-09-01, which fails with "snow 5% -> 60%" and the ids of snowy images.

    python examples/monitoring.py [--days 365] [--per-day 200] [--db /tmp/monitoring.lancedb]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa

os.environ.setdefault("LANCE_LOG", "error")

VOCAB = ["snow", "grass", "sand", "water", "sky", "dog", "cat", "car", "tree", "road"]
SPEC = """
[[expect]]
name = "snow stable"
type = "no_drift"
current = "last 1 day"
reference = "previous 28 days"
concepts = ["snow"]

[[expect]]
name = "enough images"
type = "images_per_day"
window = "last 1 day"
min = 100
"""
META = {b"lance_concepts": json.dumps({"model_name": None, "vocabulary": "monitoring-example"}).encode()}


def day_batch(day: dt.date, n: int, shift_day: dt.date, rng) -> pa.Table:
    """``n`` images of ``day``: snow in 5% of them before ``shift_day``, 60% from it on."""
    p_snow = 0.60 if day >= shift_day else 0.05
    ids, cids, ws = [], [], []
    for i in range(n):
        chosen = [c for c in range(1, len(VOCAB)) if rng.random() < 0.3]
        if rng.random() < p_snow:
            chosen.insert(0, 0)
        w = rng.uniform(0.05, 0.4, len(chosen)).astype(np.float32)
        order = np.argsort(-w)
        ids.append(f"{day.isoformat()}-{i:05d}")
        cids.append([chosen[j] for j in order])
        ws.append([float(w[j]) for j in order])
    ts = [dt.datetime.combine(day, dt.time(hour=int(h))) for h in rng.integers(0, 24, n)]
    return pa.table({
        "id": ids, "uri": [f"s3://cameras/{x}.jpg" for x in ids],
        "timestamp": pa.array(ts, pa.timestamp("us")),
        "concept_ids": pa.array(cids, pa.list_(pa.int32())),
        "concept_weights": pa.array(ws, pa.list_(pa.float32())),
        "l0": pa.array([len(c) for c in cids], pa.int32()),
        "splice_cosine": pa.array(rng.uniform(0.5, 0.7, n).astype(np.float32)),
        "status": ["ok"] * n, "error": pa.nulls(n, pa.string()),
    }).replace_schema_metadata(META)


def simulate(db: str, start: dt.date, days: int, per_day: int, shift_day: dt.date, seed: int = 0,
             spec: str = SPEC, compact_every: int = 16, warmup: int = 28):
    """Run the daily loop; yields (day, CheckResult) from the day the reference window is full."""
    import lance
    import lancedb

    from lance_concepts.lake.rollup import rollup
    from lance_concepts.query.check import check

    rng = np.random.default_rng(seed)
    conn = lancedb.connect(db)
    conn.create_table("concepts", pa.table({"concept_id": pa.array(range(len(VOCAB)), pa.int32()),
                                            "concept": VOCAB, "source": ["example"] * len(VOCAB)})
                      .replace_schema_metadata(META), mode="overwrite")
    for k in range(days):
        day = start + dt.timedelta(days=k)
        batch = day_batch(day, per_day, shift_day, rng)
        if k == 0:
            conn.create_table("images", batch, mode="overwrite")
        else:
            conn.open_table("images").add(batch)
        ds = lance.dataset(f"{db}/images.lance")
        if len(ds.get_fragments()) >= compact_every:
            ds.optimize.compact_files()
        rollup(db)
        if k < warmup:  # "previous 28 days" is not there yet
            continue
        yield day, check(db, spec.replace('type = "no_drift"', f'type = "no_drift"\nnow = "{day}"')
                         .replace('type = "images_per_day"', f'type = "images_per_day"\nnow = "{day}"'))


def first_alarm(db, start, days, per_day, shift_day, seed=0, verbose=True):
    """(first failing day or None, its CheckResult). Stops at the first failure."""
    for day, res in simulate(db, start, days, per_day, shift_day, seed):
        if verbose and (day.day == 1 or not res.ok):
            print(day, res.summary())
        if not res.ok:
            return day, res
    return None, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--per-day", type=int, default=200)
    ap.add_argument("--db", default=None)
    a = ap.parse_args(argv)
    tmp = None
    db = a.db or os.path.join(tmp := tempfile.mkdtemp(prefix="monitoring-"), "m.lancedb")
    try:
        day, res = first_alarm(db, dt.date(2024, 1, 1), a.days, a.per_day, dt.date(2024, 9, 1))
        if day is None:
            print("no alarm")
            return
        for o in res.failed:
            print(f"{day}: {o.name}: expected {o.expected}; measured {o.measured}; look at "
                  + ", ".join(i["uri"] for i in o.images))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
