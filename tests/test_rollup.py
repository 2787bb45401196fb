"""lance_concepts.rollup: the pre-aggregated cross-table gives exactly what a scan of the images table
gives, for every grouping the reports use; it is ignored as soon as the images table changes."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import lance
import numpy as np
import pytest

from lance_concepts.query.drift import drift
from lance_concepts.query.spurious import spurious
from lance_concepts.query.crosstab import concept_crosstab
from lance_concepts.query.connection import connect
from lance_concepts.errors import InputError
from lance_concepts.lake.rollup import data_fingerprint, rollup, rollup_table_name

from .test_sql_world import draw_world, write_world


@pytest.fixture()
def world_db(tmp_path):
    return str(write_world(tmp_path / "w.lancedb", draw_world(600, seed=3)))


def _scan_and_rollup(db, group, every=None, second_moment=True):
    con = connect(db)
    try:
        direct = concept_crosstab(con, group, every=every, engine="lance", second_moment=second_moment)
        rolled = concept_crosstab(con, group, every=every, engine="rollup", second_moment=second_moment)
    finally:
        con.close()
    return direct, rolled


def _assert_same(a, b):
    assert a.groups == b.groups
    np.testing.assert_array_equal(a.n, b.n)
    np.testing.assert_array_equal(a.present, b.present)
    np.testing.assert_allclose(a.weight_sum, b.weight_sum, rtol=1e-12, atol=1e-12)
    if a.weight_sq is not None:
        np.testing.assert_allclose(a.weight_sq, b.weight_sq, rtol=1e-12, atol=1e-12)
    assert a.dropped_null_groups == b.dropped_null_groups


def _same_records(a, b):
    assert len(a) == len(b) and len(a) > 0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-9, abs=1e-12, nan_ok=True), k
            else:
                assert ra[k] == rb[k], k


def test_rollup_equals_a_scan_for_every_grouping(world_db):
    summary = rollup(world_db)
    assert set(summary.dimensions) >= {"timestamp@day", "timestamp@month", "label", "split", "colour", "label,split"}
    assert summary.images == 600  # the error rows carry no concepts and are not counted
    for every in ("day", "week", "month", "quarter", "year"):
        direct, rolled = _scan_and_rollup(world_db, "timestamp", every)
        assert rolled.engine == "rollup" and direct.engine == "lance"
        _assert_same(direct, rolled)
    for group in ("label", "split", "colour", ["label", "split"], ["split", "label"]):
        direct, rolled = _scan_and_rollup(world_db, group)
        _assert_same(direct, rolled)
    # nulls in a group column (the error rows have colour null but no concepts either): same count
    direct, rolled = _scan_and_rollup(world_db, "background", second_moment=False)
    _assert_same(direct, rolled)


def test_reports_from_the_rollup_equal_reports_from_a_scan(tmp_path):
    rows = draw_world(900, seed=5)
    a = str(write_world(tmp_path / "a.lancedb", rows))
    b = str(write_world(tmp_path / "b.lancedb", rows))
    rollup(b)
    da, db_ = drift(a, "timestamp", "month", top=6, weight_intervals=True), \
        drift(b, "timestamp", "month", top=6, weight_intervals=True)
    assert da.params["engine"] == "lance" and db_.params["engine"] == "rollup"
    assert [x["concept"] for x in db_.alerts] == [x["concept"] for x in da.alerts] and "red" in {
        x["concept"] for x in db_.alerts}
    _same_records(da.records(), db_.records())
    sa, sb = spurious(a, "label", "split", label_match="string"), spurious(b, "label", "split",
                                                                                label_match="string")
    assert sb.params["engine"] == "rollup" and sb.split_table.num_rows > 0
    _same_records(sa.records(), sb.records())
    _same_records(sa.split_table.to_pylist(), sb.split_table.to_pylist())
    top_circle = [r["concept"] for r in sb.records() if r["label"] == "circle"][:1]
    assert top_circle == ["grass"]


def test_a_changed_table_is_scanned_until_the_next_rollup(world_db):
    rollup(world_db)
    con = connect(world_db)
    before = concept_crosstab(con, "label")
    con.close()
    assert before.engine == "rollup"
    # an index build and a metadata update do not change the data: the rollup stays valid
    ds = lance.dataset(f"{world_db}/images.lance")
    fp = data_fingerprint(ds)
    ds.create_scalar_index("id", "BTREE")
    ds.update_schema_metadata({"note": "x"})
    assert data_fingerprint(lance.dataset(f"{world_db}/images.lance")) == fp
    con = connect(world_db)
    assert concept_crosstab(con, "label").engine == "rollup"
    con.close()
    # new rows: the rollup no longer describes the table; results come from a scan and include them
    extra = draw_world(40, seed=9, n_errors=0)
    for r in extra:
        r["id"] = "new" + r["id"]
    tmp = write_world(f"{world_db}-extra", extra)
    lance.write_dataset(lance.dataset(f"{tmp}/images.lance").to_table(), f"{world_db}/images.lance", mode="append")
    con = connect(world_db)
    after = concept_crosstab(con, "label")
    with pytest.raises(InputError, match="rollup"):
        concept_crosstab(con, "label", engine="rollup")
    con.close()
    assert after.engine == "lance" and after.n.sum() == before.n.sum() + 40
    rollup(world_db)
    con = connect(world_db)
    again = concept_crosstab(con, "label")
    con.close()
    assert again.engine == "rollup"
    _assert_same(after, again)


def test_thresholds_and_conditions_are_scanned(world_db):
    rollup(world_db)
    con = connect(world_db)
    try:
        assert concept_crosstab(con, "label", min_weight=0.05).engine == "lance"
        assert concept_crosstab(con, "label", where="split = $s", params={"s": "train"}).engine == "duckdb"
        assert concept_crosstab(con, "label").engine == "rollup"
    finally:
        con.close()


def test_columns_and_group_limits(tmp_path):
    rows = draw_world(300, seed=1, n_errors=0)
    start = datetime(2020, 1, 1)
    for i, r in enumerate(rows):  # a time column spanning 600 days: more days than max_groups
        r["timestamp"] = start + timedelta(days=2 * i)
    db = str(write_world(tmp_path / "w.lancedb", rows))
    s = rollup(db, max_groups=200)
    # 300 distinct days > 200: weeks, and months (weeks straddle months, so they cannot make months)
    assert {"timestamp@week", "timestamp@month"} <= set(s.dimensions) and "timestamp@day" not in s.dimensions
    assert "uri" not in s.dimensions and "id" not in s.dimensions
    con = connect(db)
    try:
        assert concept_crosstab(con, "timestamp", every="day").engine == "lance"
        for every in ("week", "month", "quarter", "year"):
            direct = concept_crosstab(con, "timestamp", every=every, engine="lance")
            rolled = concept_crosstab(con, "timestamp", every=every)
            assert rolled.engine == "rollup"
            _assert_same(direct, rolled)
    finally:
        con.close()
    s = rollup(db, columns=["label"], max_groups=5)
    assert s.dimensions == {} and "label" in s.skipped and "8 distinct" in s.skipped["label"]
    s = rollup(db, columns=["label", "split"])
    assert set(s.dimensions) == {"label", "split", "label,split"}
    with pytest.raises(InputError, match="no column"):
        rollup(db, columns=["nope"])
    with pytest.raises(InputError, match="type"):
        rollup(db, columns=["splice_cosine"])


def test_rollup_table_is_queryable_in_sql(world_db):
    rollup(world_db)
    con = connect(world_db)
    try:
        name = rollup_table_name("images")
        got = dict(con.execute(f"SELECT key, n FROM {name} WHERE dimension = 'label' AND concept_id IS NULL").fetchall())
        want = dict(con.execute("SELECT label, count(*) FROM images WHERE concept_ids IS NOT NULL GROUP BY label")
                    .fetchall())
        assert got == want
        red = con.execute(f"SELECT sum(n) FROM {name} WHERE dimension = 'label' AND concept_id = concept_id('red')"
                          ).fetchone()[0]
        assert red == con.execute("SELECT count(*) FROM images WHERE concept_weight(images, 'red') > 0").fetchone()[0]
    finally:
        con.close()
    meta = json.loads(lance.dataset(f"{world_db}/{name}.lance").schema.metadata[b"lance_concepts"])
    assert meta["dimensions"]["label"]["n"] and meta["fingerprint"]


def test_cli_rollup(world_db):
    from click.testing import CliRunner

    from lance_concepts.cli import main

    res = CliRunner().invoke(main, ["rollup", "--db", world_db, "--column", "label", "--column", "split"])
    assert res.exit_code == 0, res.output
    assert "label,split" in res.output and "images_rollup" in res.output
    assert "rollup" in res.stderr and "row" in res.stderr  # the progress bar
    res = CliRunner().invoke(main, ["rollup", "--db", world_db, "--quiet", "--json"])
    assert res.exit_code == 0 and res.stderr == ""
    assert json.loads(res.stdout)["dimensions"]["label"] == 8
    res = CliRunner().invoke(main, ["rollup", "--db", world_db, "--column", "nope"])
    assert res.exit_code == 2 and "no column" in res.output
