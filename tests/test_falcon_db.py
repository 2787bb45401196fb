"""FALCON's LanceDB layer and CLI on a synthetic images table with planted ground truth."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from lance_concepts.lake import store as S
from lance_concepts.cli import main
from lance_concepts.errors import InputError
from lance_concepts.lake.features import add_features_column, falcon, transfer
from tests.test_falcon import focus_world, planted_world


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory):
    w = planted_world(n=1500, seed=1)
    db = str(tmp_path_factory.mktemp("falcon") / "t.lancedb")
    st = S.ImageStore(db)
    n, d = w["img"].shape
    meta = {"model_name": "synthetic", "model_fingerprint": "synthfp", "vocabulary": "synthetic"}
    fields = [pa.field(c, pa.string()) for c in ("colour", "shape", "background", "caption")]
    st.create_or_open(S.images_schema(d, fields, meta))
    ids = [f"img{i:05d}" for i in range(n)]
    cidx = {c: i for i, c in enumerate(w["concepts"])}
    concept_ids = [[cidx[c], cidx[s], cidx[b]] for c, s, b in zip(w["colour"], w["shape"], w["bg"])]
    rows = pa.table({
        "id": ids, "uri": [f"images/{i}.png" for i in ids], "colour": w["colour"].tolist(),
        "shape": w["shape"].tolist(), "background": w["bg"].tolist(),
        "caption": [f"a {c} {s} on {b}" for c, s, b in zip(w["colour"], w["shape"], w["bg"])],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(w["img"].ravel()), d),
        "concept_ids": pa.array(concept_ids, pa.list_(pa.int32())),
        "concept_weights": pa.array([[0.5, 0.3, 0.2]] * n, pa.list_(pa.float32())),
        "status": ["ok"] * (n - 1) + ["error"],
    })
    st.write_batch(rows)
    st.write_concepts(w["concepts"], w["C"], "synthetic")
    add_features_column(st, ids, w["acts"], "acts")
    return db, w, ids


def _lance(db, name):
    import lancedb

    return lancedb.connect(db).open_table(name)


def test_falcon_writes_features_and_per_image_labels(synth_db):
    db, w, ids = synth_db
    res = falcon(db, "acts")
    assert res.representation == "acts" and res.fingerprint.startswith("data:")
    assert any("whole images" in n for n in res.notes)
    rec = {tuple(r["features"]): r for r in res.records}
    assert rec[(0,)]["concepts"][0] == "red" and rec[(1,)]["concepts"][0] == "star"
    assert "grass" in rec[(0,)]["spurious"]
    assert rec[(0,)]["high_ids"][0] in ids and len(rec[(0,)]["low_ids"]) == rec[(0,)]["n_low"] == 10
    assert "img01499" not in sum((r["high_ids"] for r in res.records), [])  # the error row is skipped

    feats = _lance(db, "features").to_arrow().to_pylist()
    assert len(feats) == len(res.records)
    f0 = next(r for r in feats if r["features"] == [0])
    assert f0["concepts"][0] == "red" and "grass" in f0["spurious"] and f0["method"] == "falcon"
    assert f0["n_high"] == len(f0["high_ids"]) and json.loads(f0["params"])["spurious_threshold"] == 0.25
    long = _lance(db, "feature_concepts").to_arrow().to_pylist()
    assert {"kind": "spurious", "concept": "grass"}.items() <= next(
        r for r in long if r["group_id"] == f0["group_id"] and r["concept"] == "grass").items()

    # SQL: "images whose features are labelled 'red'" == the images that highly activate feature 0
    import duckdb

    image_features = _lance(db, "image_features").to_lance()  # noqa: F841 (DuckDB scans it by name)
    got = {r[0] for r in duckdb.sql(
        "SELECT DISTINCT image_id FROM image_features WHERE list_contains(labels, 'red') "
        "AND representation = 'acts'").fetchall()}
    high0 = {ids[i] for i in res.explainer.high_[:, 0].nonzero()[0]}
    assert got == high0

    # the same question through the named query in sql/
    from lance_concepts.query.named import sql as run_sql

    named = run_sql(db, file="feature_labels", params={"concept": "red", "representation": "acts",
                                                        "limit": 100000})
    assert set(named.column("image_id").to_pylist()) == high0

    # a second run replaces this representation's rows instead of appending
    falcon(db, "acts")
    assert _lance(db, "features").count_rows() == len(res.records)


def test_splice_evidence(synth_db):
    db, w, _ = synth_db
    res = falcon(db, "acts", evidence="splice", write=False)
    rec = {tuple(r["features"]): r for r in res.records}
    assert rec[(0,)]["concepts"][0] == "red" and rec[(1,)]["concepts"][0] == "star"
    assert any("SpLiCE" in n for n in res.notes)


class _WordEncoder:
    """A stand-in text encoder of the synthetic world: a text is the sum of its words' directions."""

    fingerprint = "synthfp"
    image_size = 32

    def __init__(self, w):
        self.w = w

    def encode_text(self, texts):
        E, idx = self.w["E"], self.w["idx"]
        return np.stack([sum((E[idx[t]] for t in s.split() if t in idx), np.zeros(E.shape[1]))
                         for s in texts]).astype(np.float32)


def test_caption_column_joins_the_softmax(synth_db):
    db, w, _ = synth_db
    res = falcon(db, "acts", caption_column="caption", encoder=_WordEncoder(w), write=False)
    rec = {tuple(r["features"]): r for r in res.records}
    assert rec[(0,)]["concepts"][0] == "red"
    assert any(b.startswith("red ") for b in rec[(0,)]["bigrams"])   # phrases taken from the captions
    assert any("captions" in n for n in res.notes)


def test_cli_json_and_table_output(synth_db):
    db, w, _ = synth_db
    runner = CliRunner()
    out = runner.invoke(main, ["falcon", "--db", db, "--features-column", "acts", "--format", "json",
                               "--no-write", "--max-ids", "3"])
    assert out.exit_code == 0, out.output
    recs = json.loads(out.output)
    for key in ("features", "concepts", "bigrams", "spurious", "n_high", "n_low", "interpretable", "coherence"):
        assert key in recs[0]
    assert all(len(r["high_ids"]) <= 3 for r in recs)
    text = runner.invoke(main, ["falcon", "--db", db, "--features-column", "acts", "--no-write"])
    assert text.exit_code == 0 and "red" in text.output and "whole images" in text.output
    bad = runner.invoke(main, ["falcon", "--db", db, "--features-column", "nope"])
    assert bad.exit_code == 2 and "no column 'nope'" in bad.output and "acts" in bad.output
    assert "Traceback" not in bad.output


def test_transfer_in_the_database(tmp_path):
    w = focus_world(n=2500)
    db = str(tmp_path / "t.lancedb")
    st = S.ImageStore(db)
    n, d = w["img"].shape
    st.create_or_open(S.images_schema(d, [], {"model_name": "synthetic", "model_fingerprint": "fp"}))
    ids = [f"i{i}" for i in range(n)]
    st.write_batch(pa.table({"id": ids, "uri": ids, "status": ["ok"] * n,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(w["img"].ravel()), d)}))
    st.write_concepts(w["concepts"], w["C"], "synthetic")
    rng = np.random.default_rng(0)
    A = w["acts"]
    M = np.eye(A.shape[1])[:, rng.permutation(A.shape[1])]
    add_features_column(st, ids, A, "model_a")
    add_features_column(st, ids, (A @ M + rng.normal(scale=0.02, size=A.shape)).astype(np.float32), "model_b")
    with pytest.raises(InputError, match=r"run falcon\(db, features_column"):
        transfer(db, "model_a", "model_b")
    falcon(db, "model_a")
    out = CliRunner().invoke(main, ["falcon", "transfer", "--db", db, "--from-column", "model_a",
                                    "--to-column", "model_b", "--format", "json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert res["r2_heldout"] > 0.9
    carried = {f["feature"]: f["concepts"][0] for f in res["features"] if f["concepts"]}
    perm_of = {j: int(np.argmax(M[:, j])) for j in range(A.shape[1])}
    for j, concept in carried.items():
        assert concept == w["truth"][perm_of[j]]
    assert len(carried) == 16
    rows = _lance(db, "features").to_arrow().to_pylist()
    tr_rows = [r for r in rows if r["method"] == "transfer"]
    assert len(tr_rows) == 16 and all(r["representation"] == "model_b" for r in tr_rows)
    assert tr_rows[0]["source_representation"] == "model_a" and tr_rows[0]["fit_r2"] > 0.9
