"""`check`: declarative expectations evaluated against the planted world (drift of red, circles on
grass, known error rows, known daily counts), with the failures pointing at the right images; the
CLI's exit codes and JUnit/JSON output; clear errors for unusable specs."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import date

import pytest
from click.testing import CliRunner

from lance_concepts.cli import main
from lance_concepts.errors import InputError
from lance_concepts.query.check import check

from .test_sql_world import draw_world, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rows = draw_world(1200, seed=7, n_errors=12)
    db = str(write_world(tmp_path_factory.mktemp("chk") / "w.lancedb", rows))
    return db, rows


def _ok(rows):
    return [r for r in rows if r["weights"] is not None]


def _by_name(res):
    return {o.name: o for o in res.outcomes}


def test_expectations_hold_or_fail_as_planted(world):
    db, rows = world
    ok = _ok(rows)
    by_id = {r["id"]: r for r in rows}
    train = [r for r in ok if r["split"] == "train"]
    snow = sum(r["weights"].get("snow", 0) > 0 for r in train) / len(train)
    n_err = sum(r["weights"] is None for r in rows)
    jan = Counter(r["timestamp"].date() for r in rows if r["timestamp"].month == 1 and r["timestamp"].year == 2024)
    fewest = min(jan.get(date(2024, 1, d), 0) for d in range(1, 29))
    spec = {"defaults": {"now": "2024-12-28"}, "expect": [
        {"name": "snow ok", "type": "prevalence", "concept": "snow", "where": {"split": "train"},
         "min": snow - 0.01, "max": snow + 0.01},
        {"name": "snow too rare", "type": "prevalence", "concept": "snow", "where": {"split": "train"},
         "max": snow - 0.01},
        {"name": "red stable", "type": "no_drift", "current": "last 28 days", "reference": "first 60 days",
         "concepts": ["red"]},
        {"name": "shapes stable", "type": "no_drift", "current": "last 28 days", "reference": "first 60 days",
         "concepts": ["circle", "square"]},
        {"name": "circle lift", "type": "max_lift", "label": "circle", "max": 3},
        {"name": "star lift", "type": "max_lift", "label": "star", "max": 3},
        {"name": "errors ok", "type": "error_rate", "max": n_err / len(rows) + 1e-9},
        {"name": "errors too many", "type": "error_rate", "max": n_err / len(rows) - 1e-9},
        {"name": "daily ok", "type": "images_per_day", "window": "2024-01-01..2024-01-28", "min": fewest},
        {"name": "daily short", "type": "images_per_day", "window": "2024-01-01..2024-01-28", "min": fewest + 1},
        {"name": "cosine ok", "type": "mean_splice_cosine", "min": 0.45},
        {"name": "cosine low", "type": "mean_splice_cosine", "min": 0.55},
        {"name": "empty window", "type": "no_drift", "current": "last 7 days", "now": "2031-01-01"},
    ]}
    res = check(db, spec)
    got = {k: o.status for k, o in _by_name(res).items()}
    assert got == {"snow ok": "pass", "snow too rare": "fail", "red stable": "fail", "shapes stable": "pass",
                   "circle lift": "fail", "star lift": "pass", "errors ok": "pass", "errors too many": "fail",
                   "daily ok": "pass", "daily short": "fail", "cosine ok": "pass", "cosine low": "fail",
                   "empty window": "error"}
    assert not res.ok
    o = _by_name(res)
    # the images to look at show the problem
    assert o["snow too rare"].images and all(by_id[i["id"]]["weights"].get("snow", 0) > 0
                                             and by_id[i["id"]]["split"] == "train" for i in o["snow too rare"].images)
    assert "red" in o["red stable"].measured and all(
        by_id[i["id"]]["weights"].get("red", 0) > 0 and by_id[i["id"]]["timestamp"] >= __import__("datetime").datetime(2024, 12, 1)
        for i in o["red stable"].images)
    assert "grass" in o["circle lift"].measured and all(by_id[i["id"]]["label"] == "circle"
                                                         for i in o["circle lift"].images)
    assert {i["id"] for i in o["errors too many"].images} <= {r["id"] for r in rows if r["weights"] is None}
    assert o["snow ok"].value == pytest.approx(snow)
    assert f"{fewest:,}" in o["daily ok"].measured


BAD_SPECS = [
    ("", "no expectations"),
    ("[[expect]]\ntype = 'vibes'\n", "type must be one of"),
    ("[[expect]]\ntype = 'prevalence'\nconcept = 'red'\n", "needs min and/or max"),
    ("[[expect]]\ntype = 'prevalence'\nconcept = 'red'\nmax = 'high'\n", "max must be a number"),
    ("[[expect]]\ntype = 'error_rate'\nmax = 0.1\nmaximum = 3\n", "unknown keys"),
    ("[[expect]]\ntype = 'max_lift'\nmax = 3\n", "needs 'label'"),
    ("[[expect]\n", "not valid TOML"),
    ("[thresholds]\nx = 1\n", "unknown top-level"),
]


@pytest.mark.parametrize("text,match", BAD_SPECS)
def test_unusable_specs_are_refused_before_anything_runs(world, text, match):
    with pytest.raises(InputError, match=match):
        check(world[0], text + "\n")


def test_cli_exit_codes_and_formats(world, tmp_path):
    db, rows = world
    n_err = sum(r["weights"] is None for r in rows)
    good = tmp_path / "good.toml"
    good.write_text(f"[[expect]]\ntype = 'error_rate'\nmax = {n_err / len(rows) + 1e-9}\n"
                    "[[expect]]\nname = 'cosine'\ntype = 'mean_splice_cosine'\nmin = 0.45\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[expect]]\nname = 'few errors'\ntype = 'error_rate'\nmax = 0.0\n"
                   "[[expect]]\nname = 'snow <= 1%'\ntype = 'prevalence'\nconcept = 'snow'\nmax = 0.01\n"
                   "where = { split = \"it's train\" }\n"
                   "[[expect]]\nname = 'cosine'\ntype = 'mean_splice_cosine'\nmin = 0.45\n")
    r = CliRunner().invoke(main, ["check", "--db", db, "--spec", str(good)])
    assert r.exit_code == 0, r.output
    assert "2 of 2 expectations hold" in r.output
    r = CliRunner().invoke(main, ["check", "--db", db, "--spec", str(bad), "--format", "junit"])
    assert r.exit_code == 1, r.output
    suite = ET.fromstring(r.output.split("\n", 1)[1] if r.output.startswith("<?xml") else r.output)
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    failure = suite.find("testcase[@name='few errors']/failure")
    assert failure is not None and "expected error rows <= 0" in failure.get("message")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["check", "--db", db, "--spec", str(bad), "--format", "json", "-o", str(out)])
    assert r.exit_code == 1
    recs = json.loads(out.read_text())
    assert [x["status"] for x in recs] == ["fail", "error", "pass"]  # a quote in a value is just a value
    assert "no images match" in recs[1]["measured"]
    r = CliRunner().invoke(main, ["check", "--db", db, "--spec", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "no file" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["check", "--db", str(tmp_path / "nowhere"), "--spec", str(good)])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_html_report_has_an_expectations_section(world, tmp_path):
    db, _ = world
    spec = tmp_path / "s.toml"
    spec.write_text("[[expect]]\nname = 'cosine high'\ntype = 'mean_splice_cosine'\nmin = 0.55\n")
    out = tmp_path / "r.html"
    r = CliRunner().invoke(main, ["report", "--db", db, "--html", str(out), "--check", str(spec),
                                  "--label-match", "string"])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "<h2>Expectations</h2>" in page and "0 of 1 expectations hold" in page and "cosine high" in page
