"""Issue 13: findings a person reads right and checks by eye, on planted ground truth (the synthetic world
of test_sql_world: grass planted on 90% of circles and 10% of squares, snow on train triangles)."""
from __future__ import annotations

import json
import re

import pytest

from lance_concepts.query import labels as labels_module
from lance_concepts.query.connection import connect
from lance_concepts.query.named import load_query
from lance_concepts.query.spurious import spurious

from .test_sql_world import draw_world, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rows = draw_world(1200, seed=0)
    return str(write_world(tmp_path_factory.mktemp("findings") / "w.lancedb", rows)), rows


@pytest.fixture(scope="module")
def res(world):
    return spurious(world[0], "label")


def test_ratio_matches_the_comparison_printed(res):
    rows = res.table.to_pylist() + res.under_table.to_pylist()
    assert rows
    for r in rows:
        assert r["ratio"] == pytest.approx(r["prevalence"] / r["prevalence_other"])
    line = next(x for x in res.summary().splitlines() if "+grass" in x)
    a, b, x = re.search(r"grass \((\d+)% vs (\d+)%, x([\d.]+)\)", line).groups()
    # the printed ratio is the ratio of the printed shares (up to rounding), not the lift against all images
    assert float(x) == pytest.approx(int(a) / int(b), rel=0.08)
    circle_grass = next(r for r in res.table.to_pylist() if r["label"] == "circle" and r["concept"] == "grass")
    assert circle_grass["ratio"] > circle_grass["lift"] * 1.3


def test_under_representation_finds_planted_square_deficit(res):
    under = res.under_table.to_pylist()
    sq = [r for r in under if r["label"] == "square" and r["concept"] == "grass"]
    assert sq, res.summary()
    assert sq[0]["prevalence"] < 0.2 and sq[0]["ratio"] < 0.67 and sq[0]["q_value"] < 0.05
    assert "-grass" in res.summary()
    # grass is never reported as under-represented for circles (the planted excess), and concepts naming
    # another label ('cross' among circles) are not trivially reported as missing
    assert not [r for r in under if r["label"] == "circle" and r["concept"] == "grass"]
    shapes = set(res.labels)
    assert not {r["concept"] for r in under} & shapes


def test_excluded_concepts_are_listed_with_their_rule(res, world):
    ex = res.excluded_table.to_pylist()
    pairs = {(r["label"], r["concept"]): r for r in ex}
    assert ("circle", "circle") in pairs and pairs[("circle", "circle")]["excluded_by"] == "string"
    assert pairs[("circle", "circle")]["prevalence"] > 0.9
    # in the combined (CLI/JSON) output too
    kinds = {r["kind"] for r in res.records()}
    assert {"over_represented", "under_represented", "excluded"} <= kinds
    js = json.loads(json.dumps(res.records(), default=str))
    assert any(r["kind"] == "excluded" and r["excluded_by"] == "string" for r in js)
    assert "left out as naming the label" in res.summary()


def test_embedding_exclusion_names_its_rule(world, monkeypatch):
    # plant: the encoder says 'grass' means 'circle' -> grass is left out for circle, and the report says so
    import numpy as np

    con = connect(world[0])
    try:
        E, ids = labels_module.concept_matrix(con)
        names = labels_module.connection_state(con).names
    finally:
        con.close()
    g = E[list(ids).index(names.id("grass"))]

    def fake(con, labels):
        return np.stack([g if lab == "circle" else -g for lab in labels]), "planted"
    monkeypatch.setattr(labels_module, "label_embeddings", fake)
    r = spurious(world[0], "label", label_match="auto")
    assert "grass" not in {x["concept"] for x in r.table.to_pylist() if x["label"] == "circle"}
    hit = [x for x in r.excluded_table.to_pylist() if x["label"] == "circle" and x["concept"] == "grass"]
    assert hit and hit[0]["excluded_by"].startswith("embedding")
    assert re.search(r"circle: grass \(\d+% vs \d+%, by embedding", r.summary()), r.summary()


def test_sql_file_agrees_with_string_rule_and_has_ratio(world):
    r = spurious(world[0], "label", label_match="string", top=3)
    con = connect(world[0])
    try:
        out = load_query("spurious_correlations").run(con, {"top": 3}).to_pylist()
    finally:
        con.close()
    assert {(x["label"], x["concept"]) for x in out} == {(x["label"], x["concept"]) for x in r.table.to_pylist()}
    for x in out:
        assert x["ratio"] == pytest.approx(x["prevalence"] / x["prevalence_other"])


def test_examples_are_the_images_behind_a_finding(res, world):
    rows = {r["id"]: r for r in world[1]}
    ex = res.examples("circle", "grass", n=4).to_pylist()
    with_, without = [e for e in ex if e["group"] == "with concept"], [e for e in ex if e["group"] == "without concept"]
    assert len(with_) == 4 and len(without) == 4
    for e in with_:
        assert rows[e["id"]]["label"] == "circle" and "grass" in rows[e["id"]]["weights"] and e["uri"]
    for e in without:
        assert rows[e["id"]]["label"] == "circle" and "grass" not in (rows[e["id"]]["weights"] or {})
    with pytest.raises(Exception):
        res.examples("circle", "no such concept")


def test_many_labels_summarised(world):
    r = spurious(world[0], "label")
    short = r.summary(max_labels=3)
    assert "per-label lines left out for 8 labels" in short and "no finding:" not in short
    assert "strongest" in short and "+grass" in short
    assert len(short.splitlines()) < len(r.summary().splitlines())


def test_notebook_views(res):
    df = res.to_pandas()
    assert len(df) == res.to_arrow().num_rows and {"kind", "ratio"} <= set(df.columns)
    html = res._repr_html_()
    assert "<table" in html and "grass" in html


# ------------------------------------------------------------------------------------------ drift
from lance_concepts.query.drift import drift  # noqa: E402


@pytest.fixture(scope="module")
def no_drift_db(tmp_path_factory):
    """The same world with timestamps shuffled across images: no concept drifts."""
    import numpy as np

    rows = draw_world(1200, seed=1)
    ts = [r["timestamp"] for r in rows]
    perm = np.random.default_rng(0).permutation(len(rows))
    rows = [dict(r, timestamp=ts[j]) for r, j in zip(rows, perm)]
    return str(write_world(tmp_path_factory.mktemp("nodrift") / "w.lancedb", rows))


def test_divergence_shown_next_to_its_no_drift_level(no_drift_db, world):
    import numpy as np

    for every in ("week", "month"):
        d = drift(no_drift_db, "timestamp", every)
        ratio = np.median([d.js[w] / d.js_null[w] for w in d.windows if w != d.reference])
        assert 0.6 < ratio < 1.7, (every, ratio)
    wk, mo = drift(no_drift_db, "timestamp", "week"), drift(no_drift_db, "timestamp", "month")
    # small windows inflate the divergence, and the null level says so
    assert np.median(list(wk.js_null.values())) > 2 * np.median(list(mo.js_null.values()))
    planted = drift(world[0], "timestamp", "month")
    last = planted.windows[-1]
    assert planted.js[last] > 2.5 * planted.js_null[last]
    assert "null" in planted.summary()


def test_drift_summary_first_and_concepts_chosen_by_change(world):
    d = drift(world[0], "timestamp", "month", top=3)
    assert d.concepts[0] == "red"          # the planted drift, not the most common concept
    p = drift(world[0], "timestamp", "month", top=3, choose="prevalence")
    assert p.concepts != d.concepts
    lines = d.summary().splitlines()
    assert lines[1].startswith("alerts (") and "red rising" in lines[1]
    assert lines[2].startswith("rising most (") and lines[3].startswith("falling most (")
    from lance_concepts.errors import InputError
    with pytest.raises(InputError, match="choose"):
        drift(world[0], "timestamp", "month", choose="nope")


def test_drift_examples_reference_vs_peak(world):
    import datetime as dt

    rows = {r["id"]: r for r in world[1]}
    d = drift(world[0], "timestamp", "month", weight_intervals=True)
    assert min(x for x in d.table.column("mean_weight_low").to_pylist() if x is not None) >= 0.0
    ex = d.examples("red", n=5).to_pylist()
    peak = d.peak_window("red")
    assert peak == next(a["window"] for a in d.alerts if a["concept"] == "red")
    groups = {e["group"] for e in ex}
    assert groups == {f"reference {d.reference}", f"peak {peak}"}
    for e in ex:
        r = rows[e["id"]]
        assert "red" in r["weights"]
        month = r["timestamp"].strftime("%Y-%m")
        assert month == (d.reference if e["group"].startswith("reference") else peak)
    assert len([e for e in ex if e["group"].startswith("peak")]) == 5
    assert isinstance(d.to_pandas().shape, tuple) and "<pre>" in d._repr_html_()


def test_cli_drift_prints_summary_first_and_the_table_on_request(world):
    from click.testing import CliRunner

    from lance_concepts.cli import main

    r = CliRunner().invoke(main, ["drift", "--db", world[0]])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("12 windows") and "window_start" not in r.output
    assert max(len(x) for x in r.output.splitlines()[:4]) < 400
    r = CliRunner().invoke(main, ["drift", "--db", world[0], "--windows"])
    assert r.exit_code == 0 and r.output.startswith("12 windows") and "window_start" in r.output
    r = CliRunner().invoke(main, ["spurious", "--db", world[0], "--format", "json"])
    assert r.exit_code == 0 and any(x["kind"] == "excluded" for x in json.loads(r.output))


# ------------------------------------------------------------------------------------------ report
def test_html_report_shows_thumbnails_next_to_each_finding(tmp_path):
    """Images on disk whose colour says which group they belong to: green = circle on grass."""
    from PIL import Image

    from lance_concepts.query.html import report

    rows = draw_world(400, seed=2)
    root = tmp_path / "imgs"
    (root / "images").mkdir(parents=True)
    for r in rows:
        colour = (0, 200, 0) if r["background"] == "grass" else (200, 200, 200)
        Image.new("RGB", (40, 40), colour).save(root / r["uri"])
    db = str(write_world(tmp_path / "w.lancedb", rows, metadata={"image_root": str(root)}))
    page = report(db, tmp_path / "r.html", time_column="timestamp", label_column="label", top=4).read_text()
    assert "Findings with the images behind them" in page and "Evidence: reference window" in page
    section = page.split("Findings with the images behind them")[1].split("<img alt='spurious'")[0]
    finding_rows = section.split("<tr>")[2:]
    assert finding_rows
    for fr in finding_rows:
        assert fr.count("data:image/jpeg;base64,") >= 2, fr[:300]
    # the circle/grass row: thumbnails with the concept are green (grass), without it are grey
    import base64
    import io

    grass_row = next(fr for fr in finding_rows if "+grass" in fr and ">circle<" in fr)
    with_part, without_part = grass_row.split("without concept")
    def colours(part):
        out = []
        for b64 in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", part):
            out.append(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").getpixel((5, 5)))
        return out
    assert all(c[1] > 150 and c[0] < 60 for c in colours(with_part))
    assert all(abs(c[0] - c[1]) < 30 for c in colours(without_part))
    assert "Left out: concepts that name the label" in page and "Under-represented concepts" in page
