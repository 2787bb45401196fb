"""CLI wall time per read-only command on a demo database (issue 18, item 12: target <= 2 s each).

Each command runs ``--repeat`` times as a fresh ``python -m lance_concepts.cli`` subprocess (what a
user pays per call: interpreter start, imports, the query); one warm-up run first fills the text
embedding cache (a search query or label names embedded once). Prints the median, min and max and
whether torch was imported (``-X importtime`` on one extra run).

    python benchmarks/bench_cli_startup.py --db demo.lancedb --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "filter": ["filter", "--concept", "red", "--min", "0.1"],
    "sql": ["sql", "SELECT count(*) FROM images"],
    "drift": ["drift", "--time-column", "timestamp"],
    "spurious (auto label match)": ["spurious", "--label-column", "label"],
    "spurious --label-match string": ["spurious", "--label-column", "label", "--label-match", "string"],
    "search (text)": ["search", "a red circle"],
}


def run(argv: list[str], db: str, importtime: bool = False) -> tuple[float, str]:
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-m", "lance_concepts.cli"] + argv + ["--db", db]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr[-500:]}")
    return dt, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'command':32s} {'median s':>9s} {'min':>6s} {'max':>6s}  torch imported")
    for name, argv in COMMANDS.items():
        run(argv, args.db)  # warm-up: fills the text embedding cache, OS file cache
        times = [run(argv, args.db)[0] for _ in range(args.repeat)]
        _, imports = run(argv, args.db, importtime=True)
        torch = any(line.rstrip().endswith("| torch") for line in imports.splitlines())
        print(f"{name:32s} {statistics.median(times):9.2f} {min(times):6.2f} {max(times):6.2f}  {'yes' if torch else 'no'}")


if __name__ == "__main__":
    main()
