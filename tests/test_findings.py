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
