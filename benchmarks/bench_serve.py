"""Server time of the explorer's pages on a synthetic table (benchmarks/synth_concepts.py, no CLIP).

Requests go through the ASGI app in-process (Starlette's TestClient: routing, the page's queries,
template rendering; no network), each timed once cold and then ``--repeats`` times (median reported).
Thumbnails: the synthetic uris are not real files, so the cache is seeded with one JPEG per probed id
and the timing is a cache hit (the id -> uri lookup included, cold and warm).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_serve.py --n 1000000 --work /tmp/lc-serve-bench
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("LANCE_LOG", "error")
sys.path.insert(0, str(Path(__file__).parent))


def build(work: Path, n: int, seed: int) -> str:
    import synth_concepts as sc

    db, meta = work / "serve.lancedb", work / "params.json"
    want = {"n": n, "seed": seed, "v": 1}
    if db.is_dir() and meta.is_file() and json.loads(meta.read_text()) == want:
        return str(db)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = sc.generate(n, 10_000, 20, 100, 24, seed=seed)
    sc.write_tables(str(db), s)
    from lance_concepts.lake.rollup import rollup

    rollup(str(db))
    label_bitmap(str(db))
    print(f"built {n:,} rows + rollup in {time.perf_counter() - t0:.0f}s", flush=True)
    meta.write_text(json.dumps(want))
    return str(db)


def label_bitmap(db: str) -> None:
    """The BITMAP index on the label column that ``lc.index`` builds on low-cardinality text columns."""
    import lancedb

    ds = lancedb.connect(db).open_table("images").to_lance()
    if not any("label" in (i.get("fields") or i.get("columns") or []) for i in describe(ds)):
        ds.create_scalar_index("label", "BITMAP")


def describe(ds) -> list[dict]:
    try:
        return [i if isinstance(i, dict) else {"fields": list(getattr(i, "fields", []) or getattr(i, "field_names", []))}
                for i in ds.list_indices()]
    except Exception:  # noqa: BLE001 (older pylance)
        return []


def seed_thumbnails(explorer, ids):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (160, 160), (200, 30, 30)).save(buf, "JPEG")
    for i in ids:
        p = explorer.thumbs.path(i, 160)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(buf.getvalue())


def timed(client, url, repeats):
    t0 = time.perf_counter()
    r = client.get(url)
    cold = (time.perf_counter() - t0) * 1e3
    if r.status_code != 200:
        raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    if url.startswith("/?") and 'class="tile"' not in r.text:
        raise SystemExit(f"{url}: an empty page (the case would time nothing)")
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.get(url)
        warm.append((time.perf_counter() - t0) * 1e3)
    return cold, statistics.median(warm)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/lc-serve-bench")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    db = build(Path(a.work), a.n, a.seed)
    label_bitmap(db)

    from starlette.testclient import TestClient

    from lance_concepts.serve.app import build_app
    from lance_concepts.serve.explorer import Explorer

    t0 = time.perf_counter()
    ex = Explorer(db)
    client = TestClient(build_app(ex))
    print(f"open: {(time.perf_counter() - t0) * 1e3:.0f} ms")
    ids = [r["id"] for r in ex.grid("", size=24)["rows"]]
    seed_thumbnails(ex, ids)
    cases = [
        ("grid, concept filter (red > 0.1), page 1", "/?where=concept('red') > 0.1"),
        ("grid, concept AND label filter, page 1", "/?where=concept('red') > 0.1 AND label = 'label003'"),
        ("grid, concept filter, page 100", "/?where=concept('red') > 0.1&page=100"),
        ("grid, sorted by concept weight ('red'), page 1", "/?sort=red"),
        ("drift page (rollup, month, top 8)", "/drift?time_column=timestamp&every=month"),
        ("spurious page (rollup, label)", "/spurious?label_column=label"),
    ]
    rows = []
    for name, url in cases:
        cold, warm = timed(client, url, a.repeats)
        rows.append((name, cold, warm))
    cold_thumb = []
    for i in ids[:12]:
        t0 = time.perf_counter()
        assert client.get(f"/thumb/{i}?size=160").status_code == 200
        cold_thumb.append((time.perf_counter() - t0) * 1e3)
    _, warm = timed(client, f"/thumb/{ids[0]}?size=160", max(a.repeats, 20))
    rows.append(("thumbnail from cache (first request of an id)", statistics.median(cold_thumb), float("nan")))
    rows.append(("thumbnail from cache (repeat)", float("nan"), warm))
    print(f"\n{a.n:,} rows, {a.repeats} repeats\n\n| page | first request (ms) | median of repeats (ms) |\n|---|---:|---:|")
    for name, cold, warm in rows:
        f = lambda v: "-" if v != v else f"{v:.0f}" if v >= 10 else f"{v:.1f}"  # noqa: E731
        print(f"| {name} | {f(cold)} | {f(warm)} |")


if __name__ == "__main__":
    main()
