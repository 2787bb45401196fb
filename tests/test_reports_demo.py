"""End to end on a rendered demo world: demo_world -> ingest (demo CLIP model, SpLiCE, demo vocabulary)
-> the SQL reports, checked against the planted truth in the manifest.

The checks use the user's words ('red', 'grass'); the demo vocabulary holds no synonyms of them, so
a decomposition that stops using a word fails the test with what it does instead. Word-independent
checks below also hold the query layer to the planted truth.
"""
from __future__ import annotations

import numpy as np
import pytest

from lance_concepts.query.drift import drift
from lance_concepts.query.filter import filter
from lance_concepts.query.html import report
from lance_concepts.query.spurious import spurious
from lance_concepts.query import connection as S

N_IMAGES = 480


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory):
    try:
        from lance_concepts.demo import world as demo_world
        from lance_concepts.models.encoder import load_encoder
        from lance_concepts.lake.ingest import ingest

        load_encoder("demo")
    except Exception as exc:  # demo model or ingest not available in this checkout
        pytest.skip(f"demo model / ingest not available: {exc}")
    root = tmp_path_factory.mktemp("demo_e2e")
    manifest = demo_world.generate_dataset(root / "data", n=N_IMAGES, seed=0)
    ingest(str(manifest), str(root / "demo.lancedb"), model="demo", vocab="demo", quiet=True)
    return str(root / "demo.lancedb")


@pytest.fixture(scope="session")
def con(demo_db):
    c = S.connect(demo_db, materialize=True)
    yield c
    c.close()


@pytest.fixture(scope="session")
def truth(con):
    return S.run_query(con, "SELECT id, colour, background, label, date_trunc('month', timestamp)::DATE AS m, "
                            "concept_weight(images, 'red') AS red, concept_weight(images, 'grass') AS grass "
                            "FROM images WHERE concept_ids IS NOT NULL").to_pylist()


def _word_unused(truth, word, planted_rows):
    share = np.mean([r[word] > 0 for r in planted_rows]) if planted_rows else 0.0
    return share < 0.5, share


def _what_instead(con, column, value, k=4):
    res = spurious(con, column, top=k, label_match="none")
    return ", ".join(r["concept"] for r in res.table.to_pylist() if r["label"] == value)


def test_drift_red_tracks_planted_share(con, truth):
    red_rows = [r for r in truth if r["colour"] == "red"]
    unused, share = _word_unused(truth, "red", red_rows)
    if unused:
        pytest.fail(f"the demo model's decompositions give 'red' weight in {share:.0%} of red images; "
                     f"red images get: {_what_instead(con, 'colour', 'red')}")
    res = drift(con, concepts=["red"])
    months = sorted({r["m"] for r in truth})
    planted = [np.mean([r["colour"] == "red" for r in truth if r["m"] == m]) for m in months]
    prev = [r["prevalence"] for r in res.table.to_pylist()]
    assert np.corrcoef(prev, planted)[0, 1] >= 0.95
    flagged = {a["concept"] for a in drift(con).alerts}
    assert "red" in flagged
    from lance_concepts.demo.world import BACKGROUNDS, SHAPES

    assert not flagged & set(SHAPES + BACKGROUNDS)


def test_filter_red_precision_recall(con, truth):
    red_rows = [r for r in truth if r["colour"] == "red"]
    unused, share = _word_unused(truth, "red", red_rows)
    if unused:
        pytest.fail(f"'red' has weight in only {share:.0%} of red images (demo model)")
    from lance_concepts.demo.job import FILTER_THRESHOLD as T

    got = set(filter(con, "red", T, columns=[]).column("id").to_pylist())
    want = {r["id"] for r in red_rows}
    assert len(got & want) / max(len(got), 1) >= 0.9 and len(got & want) / len(want) >= 0.9


def test_spurious_grass_for_circle(con, truth):
    grass_rows = [r for r in truth if r["background"] == "grass"]
    unused, share = _word_unused(truth, "grass", grass_rows)
    res = spurious(con, "label")
    circle = [r["concept"] for r in res.table.to_pylist() if r["label"] == "circle"]
    assert "circle" not in circle and not any("circle" in c.split() for c in circle)
    if unused:
        pytest.fail(f"the demo model's decompositions give 'grass' weight in {share:.0%} of grass-background "
                     f"images; circles get: {', '.join(circle[:4])}")
    assert circle and circle[0] == "grass"


def test_strongest_drift_alert_is_the_planted_colour(con, truth):
    """Word-independent: the concept the alert ranks first rises with the planted red share and marks red
    images."""
    res = drift(con)
    assert res.alerts, res.summary()
    top = res.alerts[0]
    assert top["direction"] == "rising"
    months = sorted({r["m"] for r in truth})
    planted = [np.mean([r["colour"] == "red" for r in truth if r["m"] == m]) for m in months]
    curve = drift(con, concepts=[top["concept"]]).table.column("prevalence").to_pylist()
    assert np.corrcoef(curve, planted)[0, 1] >= 0.9
    hits = set(filter(con, top["concept"], 0.0, columns=[]).column("id").to_pylist())
    colours = {r["id"]: r["colour"] for r in truth}
    assert np.mean([colours[i] == "red" for i in hits]) >= 0.9


def test_spurious_circle_concepts_mark_grass(con, truth):
    """Word-independent: among the circles, the images carrying the label's top over-represented
    background-like concept are mostly on grass, and the planted square/grass anti-correlation is not
    reported as over-representation."""
    res = spurious(con, "label", top=5)
    rows = res.table.to_pylist()
    circle = [r for r in rows if r["label"] == "circle"]
    assert circle
    bg = {r["id"]: r["background"] for r in truth}
    grassy = []
    for r in circle:
        ids = set(filter(con, r["concept"], 0.0, columns=[]).column("id").to_pylist())
        grassy.append(np.mean([bg[i] == "grass" for i in ids]))
    assert max(grassy) >= 0.8
    html = report(con, str(S.connection_state(con).db) + ".html", split_column="split")
    assert html.stat().st_size > 50_000


def test_ingest_leaves_aggregates_the_reports_read(con):
    """ingest ends by building the rollup: the reports read it, and it says what a scan says."""
    fast, scan = drift(con), drift(con, engine="lance")
    assert fast.params["engine"] == "rollup" and scan.params["engine"] == "lance"
    assert fast.alerts == scan.alerts and fast.table.column("n_present") == scan.table.column("n_present")
    sp_fast, sp_scan = spurious(con, "label", "split", label_match="none"), \
        spurious(con, "label", "split", label_match="none", engine="lance")
    assert sp_fast.params["engine"] == "rollup"
    assert sp_fast.table.column("concept") == sp_scan.table.column("concept")
