"""Concept slices of model errors: planted failures on the synthetic world (triangles on snow), a
control model with only random errors, a numeric score, the named SQL query and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from lance_concepts.errors import InputError
from lance_concepts.query.slices import slices

from .test_sql_world import draw_world, write_world

SHAPES_WRONG = {"triangle": "square", "circle": "square", "square": "circle"}


def plant_predictions(rows, seed=0, base_error=0.05, slice_error=0.8, planted=True):
    """Predictions that are right except a base error rate everywhere and, when ``planted``, mostly
    wrong on triangles on snow (the planted slice)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        bad = planted and r["label"] == "triangle" and r["background"] == "snow"
        wrong = rng.random() < (slice_error if bad else base_error)
        pred = SHAPES_WRONG.get(r["label"], "circle") if wrong else r["label"]
        out.append({"id": r["id"], "predicted": pred, "control": r["label"] if rng.random() >= base_error
                    else SHAPES_WRONG.get(r["label"], "circle"),
                    "loss": float(rng.exponential(2.0 if bad else 0.5))})
    return out


def add_columns(db, table, cols):
    import lance

    ds = lance.dataset(f"{db}/{table}.lance")
    ds.merge(pa.Table.from_pylist(cols), left_on="id")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rows = draw_world(1500, seed=3)
    db = str(write_world(tmp_path_factory.mktemp("slices") / "w.lancedb", rows))
    add_columns(db, "images", plant_predictions(rows))
    return db, rows


def test_planted_slice_ranks_first_and_is_named(world):
    db, _ = world
    res = slices(db, "label", "predicted", min_support=20)
    top = res.table.to_pylist()[0]
    assert set(top["concepts"]) <= {"snow", "triangle"} and "snow" in top["concepts"]
    assert top["scope"] in ("all", "triangle")
    assert top["metric_slice"] > 0.5 > top["metric_rest"]
    # every one of the top 3 is about the planted slice
    for r in res.table.to_pylist()[:3]:
        assert "snow" in r["concepts"] or (r["scope"] == "all" and r["concepts"] == ["triangle"])
    assert top["wrong_examples"] and top["right_examples"]
    worst = {r["label"]: r["concept"] for r in res.groups.to_pylist() if r["worst"]}
    assert worst["triangle"] == "snow"
    ex = res.examples(1, n=3, wrong=True)
    assert ex.num_rows == 3 and all(t == 1.0 for t in ex["target"].to_pylist())


def test_control_model_has_no_slice(world):
    db, _ = world
    res = slices(db, "label", "control", min_support=20)
    assert res.table.num_rows == 0
    assert "0 slices" in res.summary()


def test_numeric_score(world):
    db, _ = world
    res = slices(db, "label", score_column="loss", min_support=20)
    top = res.table.to_pylist()[0]
    assert "snow" in top["concepts"] and res.metric == "score"


def test_bad_input(world):
    db, _ = world
    with pytest.raises(InputError, match="prediction_column"):
        slices(db, "label")
    with pytest.raises(InputError, match="nope"):
        slices(db, "label", "nope")
    with pytest.raises(InputError, match="zero_shot"):
        slices(db, "label", zero_shot="a photo")
    with pytest.raises(InputError, match="no images"):
        slices(db, "label", "predicted", where="1 = 0")


def test_named_sql_agrees(world):
    from lance_concepts.query.named import sql as run_sql

    db, _ = world
    res = slices(db, "label", "predicted", min_support=20, pairs=False)
    sql = run_sql(db, file="error_slices", params={"label_column": "label", "prediction_column": "predicted",
                                                   "min_support": 20})
    got = {(r["scope"], r["concept"]): r["error_rate"] for r in sql.to_pylist()}
    want = {(r["scope"], r["slice"]): r["metric_slice"] for r in res.records()}
    assert want and set(want) <= set(got)
    for k, v in want.items():
        assert got[k] == pytest.approx(v)


def test_cli(world, tmp_path):
    from click.testing import CliRunner

    from lance_concepts.cli import main

    db, _ = world
    png = tmp_path / "s.png"
    r = CliRunner().invoke(main, ["slices", "--db", db, "--prediction-column", "predicted", "--plot", str(png),
                                  "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert "snow" in data[0]["concepts"] and png.stat().st_size > 1000
    r = CliRunner().invoke(main, ["slices", "--db", db, "--prediction-column", "nope"])
    assert r.exit_code == 2 and "nope" in r.output


def test_zero_shot_with_the_tables_clip_model(tmp_path):
    """Zero-shot predictions come from the table's own (demo) CLIP model: far better than chance on
    the rendered shapes, and every prediction is one of the labels."""
    from lance_concepts.demo import world as demo_world
    from lance_concepts.lake.ingest import ingest

    manifest = demo_world.generate_dataset(tmp_path / "data", n=160, seed=1)
    db = str(tmp_path / "demo.lancedb")
    ingest(str(manifest), db, model="demo", vocab="demo", quiet=True, workers=0)
    res = slices(db, "label", zero_shot="a photo of a {}", min_support=5)
    # a model that always fails on one background: slices exist, and the page embeds their images
    import lance

    ds = lance.dataset(f"{db}/images.lance")
    t = ds.to_table(columns=["id", "label", "background"])
    bg = max(set(t["background"].to_pylist()), key=t["background"].to_pylist().count)
    ds.merge(pa.table({"id": t["id"], "predicted": [("wrong" if b == bg else lab) for lab, b in
                                                     zip(t["label"].to_pylist(), t["background"].to_pylist())]}),
             left_on="id")
    planted = slices(db, "label", "predicted", min_support=5)
    assert planted.table.num_rows > 0
    page = planted.html(tmp_path / "s.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= planted.table.num_rows
    labels = set(res.rows["label"].to_pylist())
    assert set(res.rows["prediction"].to_pylist()) <= labels
    chance_error = 1 - 1 / len(labels)
    assert res.n_errors / res.n_images < chance_error / 2
