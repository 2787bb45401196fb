"""Moving windows: 'last 7 days' against 'previous 28 days' resolve to the right days, and drift over
them (Python, CLI, SQL file; rollup or scan) counts exactly the images of those days."""
from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner

from lance_concepts.cli import main
from lance_concepts.errors import InputError
from lance_concepts.lake.rollup import rollup
from lance_concepts.query.connection import connect
from lance_concepts.query.drift import drift
from lance_concepts.query.named import load_query
from lance_concepts.query.windows import resolve_windows

from .test_sql_world import draw_world, write_world

D = dt.date


def test_windows_resolve_to_days():
    cur, ref = resolve_windows("last 7 days", "previous 28 days", now="2024-03-10")
    assert (cur.start, cur.end) == (D(2024, 3, 4), D(2024, 3, 11))
    assert (ref.start, ref.end) == (D(2024, 2, 5), D(2024, 3, 4))
    cur, ref = resolve_windows("last 2 weeks", "first 10 days", now=D(2024, 3, 10), first_day=D(2024, 1, 1))
    assert (cur.start, ref.start, ref.end) == (D(2024, 2, 26), D(2024, 1, 1), D(2024, 1, 11))
    cur, ref = resolve_windows("2024-02-01..2024-02-29", "2024-01-01..2024-01-31")
    assert (cur.start, cur.end, ref.end) == (D(2024, 2, 1), D(2024, 3, 1), D(2024, 2, 1))
    cur, ref = resolve_windows("last 1 day", "all before", now="2024-03-10", first_day=D(2024, 1, 5))
    assert (ref.start, ref.end) == (D(2024, 1, 5), D(2024, 3, 10))


@pytest.mark.parametrize("current,reference,match", [
    ("last week", "previous 28 days", "current: cannot read"),
    ("last 0 days", "previous 28 days", "at least one day"),
    ("previous 7 days", "previous 28 days", "reference only"),
    ("last 7 days", "last 10 days", "overlaps"),
    ("2024-02-10..2024-02-01", "first 3 days", "ends before it starts"),
    ("2024-02-30", "first 3 days", "current"),
])
def test_bad_windows_say_which_parameter(current, reference, match):
    with pytest.raises(InputError, match=match):
        resolve_windows(current, reference, now="2024-03-10", first_day="2024-01-01")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rows = draw_world(900, seed=4)
    db = str(write_world(tmp_path_factory.mktemp("win") / "w.lancedb", rows))
    return db, rows


def _truth(rows, start, end, concept="red"):
    ok = [r for r in rows if r["weights"] is not None and start <= r["timestamp"].date() < end]
    return len(ok), sum(r["weights"].get(concept, 0) > 0 for r in ok)


def test_drift_over_moving_windows_counts_the_right_images(world):
    db, rows = world
    now = "2024-06-20"
    ref_n, ref_k = _truth(rows, D(2024, 4, 8), D(2024, 6, 7))
    cur_n, cur_k = _truth(rows, D(2024, 6, 7), D(2024, 6, 21))
    assert ref_n > 0 and cur_n > 0
    for prepare in (lambda: None, lambda: rollup(db)):  # scan, then the rollup's daily counts
        prepare()
        res = drift(db, current="last 14 days", reference="previous 60 days", now=now, concepts=["red"])
        got = {r["window"]: r for r in res.records()}
        assert got["2024-04-08..2024-06-06"]["n_images"] == ref_n
        assert got["2024-04-08..2024-06-06"]["n_present"] == ref_k
        assert got["2024-06-07..2024-06-20"]["n_images"] == cur_n
        assert got["2024-06-07..2024-06-20"]["n_present"] == cur_k
    assert res.params["engine"] == "rollup" and res.reference == "2024-04-08..2024-06-06"
    # the SQL file gives the same counts
    con = connect(db)
    out = load_query("window_drift").run(con, {"concepts": "red", "now": now, "current_days": "14",
                                               "reference_days": "60"}).to_pylist()
    con.close()
    by = {r["period"]: r for r in out}
    assert (by["reference"]["n_images"], by["reference"]["n_present"]) == (ref_n, ref_k)
    assert (by["current"]["n_images"], by["current"]["n_present"]) == (cur_n, cur_k)


def test_cli_moving_windows(world):
    db, _ = world
    r = CliRunner().invoke(main, ["drift", "--db", db, "--current", "last 14 days", "--reference",
                                  "previous 60 days", "--now", "2024-06-20", "--concepts", "red", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert "2024-06-07..2024-06-20" in r.output
    r = CliRunner().invoke(main, ["drift", "--db", db, "--current", "last fortnight"])
    assert r.exit_code == 2 and "current" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["drift", "--db", db, "--current", "last 7 days", "--now", "2031-01-01"])
    assert r.exit_code == 2 and "no images with concepts in the current window" in r.output
