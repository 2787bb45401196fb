"""lance_concepts.sql: views over Lance with pushdown, concept macros, named queries, crosstab."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from lance_concepts.lake import aggregates

from lance_concepts.concepts.names import UnknownConceptError
from lance_concepts.lake.aggregates import _numba_kernel
from lance_concepts.query.connection import check_column, connect, quote_ident, resolve_concepts, run_query
from lance_concepts.query.crosstab import concept_crosstab
from lance_concepts.query.named import list_queries, load_query, sql
from lance_concepts.errors import InputError

from .test_sql_world import COLOURS, ODD_NAMES, VOCAB, draw_world, write_world


@pytest.fixture(scope="session")
def world_rows():
    return draw_world(1200, seed=0)


@pytest.fixture(scope="session")
def world_db(tmp_path_factory, world_rows):
    return str(write_world(tmp_path_factory.mktemp("sqlworld") / "w.lancedb", world_rows))


@pytest.fixture()
def con(world_db):
    c = connect(world_db)
    yield c
    c.close()


def _truth_weight(rows, concept):
    return {r["id"]: (r["weights"] or {}).get(concept, 0.0) for r in rows if r["weights"] is not None}


def test_views_and_long_view(con, world_rows):
    names = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert {"images", "concepts", "image_concepts"} <= names
    ok = [r for r in world_rows if r["weights"] is not None]
    n_post = sum(len(r["weights"]) for r in ok)
    assert con.execute("SELECT count(*) FROM image_concepts").fetchone()[0] == n_post
    cols = [d[0] for d in con.execute("SELECT * FROM image_concepts LIMIT 1").description]
    assert cols == ["image_id", "concept_id", "concept", "weight"]
    # the long view carries the concept name
    r = con.execute("SELECT concept, weight FROM image_concepts WHERE image_id = 'img00000' ORDER BY weight DESC"
                    ).fetchall()
    truth = sorted(world_rows[0]["weights"].items(), key=lambda kv: -kv[1])
    assert [c for c, _ in r] == [c for c, _ in truth]
    np.testing.assert_allclose([w for _, w in r], [w for _, w in truth], rtol=1e-6)


def test_concept_weight_macro_matches_truth(con, world_rows):
    got = dict(con.execute("SELECT id, concept_weight(images, 'red') FROM images WHERE concept_ids IS NOT NULL"
                           ).fetchall())
    truth = _truth_weight(world_rows, "red")
    assert set(got) == set(truth)
    np.testing.assert_allclose([got[k] for k in truth], [truth[k] for k in truth], rtol=1e-6, atol=1e-7)
    n = con.execute("SELECT count(*) FROM images WHERE has_concept(images, 'red', 0.1)").fetchone()[0]
    assert n == sum(v > 0.1 for v in truth.values())
    top = con.execute("SELECT top_concepts(images, 2) FROM images WHERE id = 'img00003'").fetchone()[0]
    truth3 = [c for c, _ in sorted(world_rows[3]["weights"].items(), key=lambda kv: -kv[1])][:2]
    assert top == truth3


def test_concept_images_is_pushed_into_lance(con):
    plan = "\n".join(str(r[-1]) for r in con.execute("EXPLAIN SELECT * FROM concept_images('grass', 0.1)").fetchall())
    assert "ARROW_SCAN" in plan.upper().replace(" ", "_")
    assert "concept_id" in plan and "=" in plan  # the equality reached the scan's filters
    # and only the needed columns are read
    import lance

    seen = []
    orig = lance.LanceDataset.scanner

    def spy(self, *a, **k):
        seen.append((k.get("columns"), str(k.get("filter"))))
        return orig(self, *a, **k)

    lance.LanceDataset.scanner = spy
    try:
        n = con.execute("SELECT count(*) FROM concept_images('grass', 0.1)").fetchone()[0]
        con.execute("SELECT uri FROM images WHERE concept_weight(images, 'red') > 0.2").fetchall()
    finally:
        lance.LanceDataset.scanner = orig
    assert n > 0
    gid = VOCAB.index("grass")
    assert any(f"concept_id == {gid}" in f.replace("(", "").replace(")", "") for _, f in seen)
    img_cols = [c for c, _ in seen if c and "uri" in c]
    assert img_cols and all("embedding" not in c for c in img_cols)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_names_with_quotes_unicode_spaces(con, world_rows, name):
    truth = _truth_weight(world_rows, name)
    n = con.execute("SELECT count(*) FROM concept_images($c, 0.0)", {"c": name}).fetchone()[0]
    assert n == sum(v > 0 for v in truth.values()) and n > 0
    assert resolve_concepts(con, [name]) == [VOCAB.index(name)]


def test_lenient_name_lookup(con):
    assert resolve_concepts(con, ["  SEA   view "]) == [VOCAB.index("sea view")]
    assert resolve_concepts(con, ["CAFÉ CRÈME"]) == [VOCAB.index("café crème")]


def test_unknown_concept_lists_closest_names(con):
    with pytest.raises(UnknownConceptError) as e:
        run_query(con, "SELECT count(*) FROM concept_images('gras', 0.1)")
    assert "'grass'" in str(e.value) and "unknown concept 'gras'" in str(e.value)
    with pytest.raises(UnknownConceptError, match="closest in the vocabulary: 'circle'"):
        run_query(con, "SELECT count(*) FROM images WHERE concept_weight(images, $c) > 0", {"c": "cirle"})


def test_user_values_are_bound_not_interpolated(con):
    evil = "x'); DROP TABLE concepts; --"
    with pytest.raises(UnknownConceptError):
        run_query(con, "SELECT count(*) FROM concept_images($c, 0.1)", {"c": evil})
    assert con.execute("SELECT count(*) FROM concepts").fetchone()[0] == len(VOCAB)
    with pytest.raises(UnknownConceptError):
        load_query("concept_filter").run(con, {"concept": evil})


def test_quote_ident_and_check_column(con):
    assert quote_ident('we"ird') == '"we""ird"'
    with pytest.raises(InputError, match="did you mean 'timestamp'"):
        check_column(con, "timestamps")


def test_named_queries_parse_and_run(con):
    names = list_queries()
    assert set(names) >= {"concept_filter", "concept_prevalence", "concept_drift", "drift_alerts",
                          "spurious_correlations", "split_shift", "concept_cooccurrence"}
    for name in names:
        if name == "feature_labels":  # needs FALCON's tables: tested in test_falcon_db.py
            continue
        q = load_query(name)
        assert q.doc and "$" in q.text
        assert "{{" not in q.text or q.idents  # identifiers are declared
        needed = {p.name: "red" for p in q.params.values() if p.required and p.type.upper().startswith("VARCHAR")}
        if name == "error_slices":  # the test world has no predictions: any categorical column runs it
            needed["prediction_column"] = "colour"
        out = q.run(con, needed)
        assert isinstance(out, pa.Table)


def test_concept_filter_query(con, world_rows):
    out = load_query("concept_filter").run(con, {"concept": "red", "min_weight": "0.2", "limit": "5"})
    truth = _truth_weight(world_rows, "red")
    best = sorted(truth.values(), reverse=True)[:5]
    np.testing.assert_allclose(out.column("weight").to_numpy(), best, rtol=1e-6)
    with pytest.raises(InputError, match="has no parameter"):
        load_query("concept_filter").run(con, {"concept": "red", "bogus": 1})
    with pytest.raises(InputError, match="needs the parameter .concept."):
        load_query("concept_filter").run(con, {})
    with pytest.raises(InputError, match="must be DOUBLE"):
        load_query("concept_filter").run(con, {"concept": "red", "min_weight": "abc"})


def test_concept_drift_query_matches_truth(con, world_rows):
    out = load_query("concept_drift").run(con, {"concepts": "red,grass", "every": "month"})
    got = {(r["window_start"].month, r["concept"]): r for r in out.to_pylist()}
    ok = [r for r in world_rows if r["weights"] is not None]
    for m in range(1, 13):
        rows = [r for r in ok if r["timestamp"].month == m]
        k = sum(r["weights"].get("red", 0) > 0 for r in rows)
        assert got[(m, "red")]["n_images"] == len(rows)
        assert got[(m, "red")]["n_present"] == k


def test_crosstab_engines_agree_with_numpy(con, world_rows):
    a = concept_crosstab(con, "timestamp", every="month", engine="lance", second_moment=True, min_weight=0.05)
    b = concept_crosstab(con, "timestamp", every="month", engine="duckdb", second_moment=True, min_weight=0.05)
    assert a.engine == "lance" and b.engine == "duckdb"
    assert a.groups == b.groups and len(a.groups) == 12
    np.testing.assert_array_equal(a.n, b.n)
    np.testing.assert_array_equal(a.present, b.present)
    np.testing.assert_allclose(a.weight_sum, b.weight_sum)
    np.testing.assert_allclose(a.weight_sq, b.weight_sq)
    ok = [r for r in world_rows if r["weights"] is not None]
    red = VOCAB.index("red")
    for g, start in enumerate(a.groups):
        rows = [r for r in ok if r["timestamp"].month == start.month]
        assert a.n[g] == len(rows)
        assert a.present[g, red] == sum(r["weights"].get("red", 0) > 0.05 for r in rows)
        np.testing.assert_allclose(a.weight_sum[g, red], sum(np.float32(r["weights"].get("red", 0)) for r in rows),
                                   rtol=1e-5)
    # two group columns, and an extra SQL condition
    c = concept_crosstab(con, ["label", "split"], where="colour = $c", params={"c": "blue"})
    assert all(isinstance(g, tuple) and len(g) == 2 for g in c.groups)
    assert c.n.sum() == sum(r["colour"] == "blue" for r in ok)


def test_crosstab_numba_kernel_and_numpy_agree(con, monkeypatch):
    """The optional numba kernel (the `fast` extra) and the numpy bincount path give the same table."""
    if _numba_kernel() is None:
        pytest.skip("numba not installed: the numpy path is the only one")
    kw = dict(every="month", engine="lance", second_moment=True, min_weight=0.05, batch_rows=97)
    fast = concept_crosstab(con, "timestamp", **kw)
    monkeypatch.setattr(aggregates, "_numba_kernel", lambda: None)
    slow = concept_crosstab(con, "timestamp", **kw)
    assert fast.groups == slow.groups
    np.testing.assert_array_equal(fast.n, slow.n)
    np.testing.assert_array_equal(fast.present, slow.present)
    np.testing.assert_allclose(fast.weight_sum, slow.weight_sum, rtol=1e-12)
    np.testing.assert_allclose(fast.weight_sq, slow.weight_sq, rtol=1e-12)


def test_crosstab_matches_duckdb_unnest(con):
    ct = concept_crosstab(con, "label")
    ref = con.execute("SELECT label, cid, count(*) FROM (SELECT label, unnest(concept_ids) AS cid FROM images) "
                      "GROUP BY ALL").fetchall()
    gi = {g: i for i, g in enumerate(ct.groups)}
    assert sum(x for _, _, x in ref) == ct.present.sum()
    for lab, cid, x in ref:
        assert ct.present[gi[lab], cid] == x


def test_windows(con):
    for every, n in (("quarter", 4), ("year", 1), ("week", None), ("day", None)):
        a = concept_crosstab(con, "timestamp", every=every, engine="lance")
        b = concept_crosstab(con, "timestamp", every=every, engine="duckdb")
        assert a.groups == b.groups
        np.testing.assert_array_equal(a.present, b.present)
        if n:
            assert len(a.groups) == n
    with pytest.raises(InputError, match="every"):
        concept_crosstab(con, "timestamp", every="fortnight")


def test_materialize_gives_the_same_answers(world_db):
    a = connect(world_db)
    b = connect(world_db, materialize=True)
    try:
        q = "SELECT label, count(*) AS n, sum(concept_weight(images, 'grass')) AS g FROM images GROUP BY label ORDER BY label"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()
        assert "embedding" not in [r[0] for r in b.execute("DESCRIBE images").fetchall()]
        ca, cb = concept_crosstab(a, "label"), concept_crosstab(b, "label")
        assert cb.engine == "duckdb"
        np.testing.assert_array_equal(ca.present, cb.present)
    finally:
        a.close()
        b.close()


def test_without_postings_table(tmp_path, world_rows):
    db = write_world(tmp_path / "np.lancedb", world_rows, postings=False)
    c = connect(str(db))
    try:
        n = c.execute("SELECT count(*) FROM concept_images('grass', 0.1)").fetchone()[0]
        assert n == sum((r["weights"] or {}).get("grass", 0) > 0.1 for r in world_rows)
        assert c.execute("SELECT count(*) FROM image_concepts WHERE concept = 'grass'").fetchone()[0] > 0
    finally:
        c.close()


def test_other_image_table_name(tmp_path, world_rows):
    db = write_world(tmp_path / "other.lancedb", world_rows[:100], table="photos")
    c = connect(str(db), table="photos")
    try:
        assert c.execute("SELECT count(*) FROM images").fetchone()[0] == 100
        assert c.execute("SELECT count(*) FROM photos").fetchone()[0] == 100
    finally:
        c.close()
    with pytest.raises(InputError, match="no table 'images'"):
        connect(str(db))


def test_missing_database(tmp_path):
    with pytest.raises(InputError, match="no LanceDB database"):
        connect(str(tmp_path / "nope.lancedb"))


def test_sql_function(world_db):
    t = sql(world_db, "SELECT count(*) AS n FROM images WHERE status = 'error'")
    assert t.column("n")[0].as_py() == 7
    t = sql(world_db, file="concept_prevalence", params={"limit": "3"})
    assert t.num_rows == 3 and t.column_names[0] == "concept"
    with pytest.raises(InputError, match="either"):
        sql(world_db)
    with pytest.raises(InputError, match="query failed"):
        sql(world_db, "SELECT nope FROM images")


def test_sql_stat_macros_match_scipy(con):
    from scipy import stats

    zs = [-3.0, -1.0, 0.0, 0.5, 1.96, 4.0, 8.0]
    got = [con.execute("SELECT normal_sf($z)", {"z": z}).fetchone()[0] for z in zs]
    np.testing.assert_allclose(got, stats.norm.sf(zs), rtol=2e-2, atol=1e-7)
    lo, hi = con.execute("SELECT wilson_low(7, 40), wilson_high(7, 40)").fetchone()
    ci = stats.binomtest(7, 40).proportion_ci(method="wilson")
    np.testing.assert_allclose([lo, hi], [ci.low, ci.high], rtol=1e-9)


def test_cli_sql(world_db, tmp_path):
    from click.testing import CliRunner

    from lance_concepts.cli import main

    r = CliRunner().invoke(main, ["sql", "--db", world_db, "SELECT id, concept_weight(images, 'red') AS w FROM images "
                                  "WHERE concept_ids IS NOT NULL ORDER BY w DESC LIMIT 2", "--format", "json"])
    assert r.exit_code == 0, r.output
    recs = json.loads(r.output)
    assert len(recs) == 2 and set(recs[0]) == {"id", "w"}
    r = CliRunner().invoke(main, ["sql", "--db", world_db, "--file", "concept_filter", "--param", "concept=gras"])
    assert r.exit_code == 2 and "closest in the vocabulary: 'grass'" in r.output and "Traceback" not in r.output
    out = tmp_path / "x.parquet"
    r = CliRunner().invoke(main, ["sql", "--db", world_db, "--file", "concept_drift", "--param", "concepts=red",
                                  "--format", "parquet", "--output", str(out)])
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 12
    r = CliRunner().invoke(main, ["sql", "--db", world_db, "--list"])
    assert r.exit_code == 0 and "spurious_correlations" in r.output
