"""Issue 18 (query side): empty, failed, one-row and changed tables, tried as a new user would.

Ground truth comes from the images table itself (the list columns read with pyarrow, no SQL) and
from rows deleted in plain LanceDB, never from the code under test.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

N_IMAGES = 60


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    try:
        from lance_concepts.demo import world as demo_world
        from lance_concepts.lake.ingest import ingest
        from lance_concepts.models.encoder import load_encoder

        load_encoder("demo")
    except Exception as exc:  # demo model or ingest not available in this checkout
        pytest.skip(f"demo model / ingest not available: {exc}")
    root = tmp_path_factory.mktemp("first_hour")
    manifest = demo_world.generate_dataset(root / "data", n=N_IMAGES, seed=3)
    ingest(str(manifest), str(root / "demo.lancedb"), model="demo", vocab="demo", quiet=True)
    bad = root / "bad.csv"
    bad.write_text("uri,label,timestamp\nnope/a.png,x,2024-01-01\nnope/b.png,y,2024-01-02\n")
    ingest(str(bad), str(root / "failed.lancedb"), model="demo", vocab="demo", quiet=True)
    return root


def _copy(root: Path, name: str) -> str:
    dst = root / f"{name}-{len(list(root.iterdir()))}.lancedb"
    shutil.copytree(root / "demo.lancedb", dst)
    return str(dst)


def _images(db):
    import lancedb

    return lancedb.connect(db).open_table("images")


def _truth(db, concept: str, min_weight: float) -> set[str]:
    """Ids whose concept weight passes, read straight from the images table's list columns."""
    from lance_concepts.query.connection import connect, connection_state

    con = connect(db)
    cid = connection_state(con).names.id(concept)
    con.close()
    t = _images(db).to_arrow().select(["id", "concept_ids", "concept_weights", "status"]).to_pylist()
    return {r["id"] for r in t if r["status"] == "ok" and r["concept_ids"]
            and cid in r["concept_ids"] and r["concept_weights"][r["concept_ids"].index(cid)] > min_weight}


def _db_case(root: Path, case: str) -> str:
    if case == "failed":
        return str(root / "failed.lancedb")
    db = _copy(root, case)
    tbl = _images(db)
    if case == "empty_table":
        tbl.delete("true")
    elif case == "one_row":
        keep = tbl.to_arrow().column("id")[0].as_py()
        tbl.delete(f"id != '{keep}'")
    return db


# ------------------------------------------------------------------------------------ item 1: empty
def test_filter_empty_answer_python(demo_db):
    import lance_concepts as lc

    db = str(demo_db / "demo.lancedb")
    assert _truth(db, "red", 0.99) == set()  # the ground truth is empty: a real empty answer
    t = lc.filter(db, "red", 0.99)
    assert t.num_rows == 0 and t.column_names == ["id", "uri", "weight"]
    assert t.schema.field("uri").type == pa.string()
    t2 = lc.filter(db, ["red", "grass"], [0.99, 0.99])
    assert t2.num_rows == 0 and "weights" in t2.column_names


def test_filter_empty_answer_cli(demo_db):
    from lance_concepts.cli import main

    db = str(demo_db / "demo.lancedb")
    r = CliRunner().invoke(main, ["filter", "--db", db, "--concept", "red", "--min", "0.99"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("0 images")
    r = CliRunner().invoke(main, ["filter", "--db", db, "--concept", "red", "--min", "0.99", "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output) == []


CASES = ["empty_answer", "empty_table", "failed", "one_row"]
COMMANDS = {
    # command -> (argv after --db, exit codes allowed: 2 only with a one-line reason)
    "filter": (["filter", "--concept", "red", "--min", "{min}"], {0, 2}),  # 2: only with no concepts at all
    "sql": (["sql", "SELECT status, error FROM images"], {0}),
    "drift": (["drift", "--time-column", "timestamp"], {0, 2}),
    "spurious": (["spurious", "--label-column", "label", "--label-match", "string"], {0, 2}),
    "search": (["search", "red"], {0}),
    "rollup": (["rollup"], {0, 2}),
    "repair": (["repair", "--quiet"], {0}),
    "index": (["index"], {0, 2}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_on_empty_failed_and_one_row_tables(demo_db, command, case):
    from lance_concepts.cli import main

    db = str(demo_db / "demo.lancedb") if case == "empty_answer" else _db_case(demo_db, case)
    if case == "empty_answer" and command in ("rollup", "repair", "index"):
        db = _copy(demo_db, "answer")  # writers get their own copy
    argv, allowed = COMMANDS[command]
    argv = [a.replace("{min}", "0.99" if case == "empty_answer" else "0") for a in argv]
    r = CliRunner().invoke(main, argv + ["--db", db])
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), (
        f"{command} on {case} crashed: {r.exception!r}\n{r.output}")
    assert r.exit_code in allowed, r.output
    if r.exit_code == 2:
        assert "Traceback" not in r.output and r.output.strip().splitlines()[-1].startswith("Error:")
    if command == "filter" and case != "failed":
        assert r.exit_code == 0, r.output
        want = 0 if case == "empty_answer" else len(_truth(db, "red", 0.0))
        assert r.output.strip().endswith(f"{want} image{'' if want == 1 else 's'}")
    if command == "sql" and case == "failed":
        assert "file not found" in r.output  # the very question a user asks when everything failed


# ------------------------------------------------------------------------- item 6: stale postings
def test_postings_never_answer_for_deleted_rows(demo_db):
    import lance_concepts as lc
    from lance_concepts.query.connection import StalePostingsWarning, connect, connection_state, run_query

    db = _copy(demo_db, "stale")
    con = connect(db)
    assert connection_state(con).has_postings and not connection_state(con).stale_postings  # fresh ingest
    con.close()
    before = _truth(db, "grass", 0.0)
    _images(db).delete("label = 'circle'")  # plain LanceDB, behind our back
    after = _truth(db, "grass", 0.0)
    assert after < before  # the delete removed some grass images: ghosts are possible
    with pytest.warns(StalePostingsWarning):
        got = set(lc.filter(db, "grass", 0.0).column("id").to_pylist())
    assert got == after
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StalePostingsWarning)
        con = connect(db)
        via_postings = run_query(con, "SELECT count(*) AS n FROM concept_images('grass', 0)").column("n")[0].as_py()
        via_rows = run_query(con, "SELECT count(*) AS n FROM images WHERE has_concept(images, 'grass', 0)"
                             ).column("n")[0].as_py()
        con.close()
    assert via_postings == via_rows == len(after)

    summary = lc.repair(db)
    assert summary.postings_were_current is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", StalePostingsWarning)  # repaired: the fast path answers again
        con = connect(db)
        assert connection_state(con).has_postings
        con.close()
        assert set(lc.filter(db, "grass", 0.0).column("id").to_pylist()) == after


def test_update_in_plain_lancedb_makes_postings_stale(demo_db):
    import lance_concepts as lc
    from lance_concepts.query.connection import StalePostingsWarning

    db = _copy(demo_db, "update")
    tbl = _images(db)
    hit = sorted(_truth(db, "grass", 0.0))[0]
    from lance_concepts.query.connection import connect, connection_state

    con = connect(db)
    cid = connection_state(con).names.id("grass")
    con.close()
    row = tbl.to_arrow().filter(pa.compute.equal(tbl.to_arrow().column("id"), hit)).to_pylist()[0]
    keep = [i for i, c in enumerate(row["concept_ids"]) if c != cid]  # the image loses its grass
    row["concept_ids"] = [row["concept_ids"][i] for i in keep]
    row["concept_weights"] = [row["concept_weights"][i] for i in keep]
    ds = tbl.to_lance()
    ds.merge_insert("id").when_matched_update_all().execute(pa.Table.from_pylist([row], schema=ds.schema))
    with pytest.warns(StalePostingsWarning):
        got = set(lc.filter(db, "grass", 0.0).column("id").to_pylist())
    assert hit not in got and got == _truth(db, "grass", 0.0)


def test_deleting_every_row_leaves_no_ghosts(demo_db):
    import lance_concepts as lc

    db = _copy(demo_db, "all")
    _images(db).delete("true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert lc.filter(db, "grass", 0.0).num_rows == 0


# ----------------------------------------------------------------------- item 8: unwritable paths
def test_unwritable_plot_is_refused_before_the_work(demo_db, tmp_path):
    from lance_concepts.cli import main

    db = str(demo_db / "demo.lancedb")
    r = CliRunner().invoke(main, ["filter", "--db", db, "--concept", "red", "--plot", str(tmp_path / "no" / "x.png")])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    assert "images" not in r.output.splitlines()[0]  # refused before any result was printed
    r = CliRunner().invoke(main, ["report", "--db", db, "--html", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes read-only dirs")
def test_read_only_database_is_refused_in_one_line(demo_db):
    from lance_concepts.cli import main

    db = _copy(demo_db, "ro")
    paths = [db] + [str(p) for p in Path(db).glob("*.lance")]
    for p in paths:
        os.chmod(p, 0o555)
    try:
        for cmd in (["rollup"], ["repair"]):
            r = CliRunner().invoke(main, cmd + ["--db", db])
            assert r.exit_code == 2, (cmd, r.output)
            assert "read-only" in r.output and "Traceback" not in r.output
    finally:
        for p in paths:
            os.chmod(p, 0o755)


# ------------------------------------------------------------------- item 10: one where-language
def _synthetic():
    rng = np.random.default_rng(7)
    n = 200
    ids, ws = [], []
    for i in range(n):
        k = int(rng.integers(0, 4))
        c = sorted(rng.choice(5, size=k, replace=False).tolist())
        ids.append(c if i % 17 else None)  # some rows without a decomposition (errors)
        ws.append([float(np.float32(rng.uniform(0, 0.5))) for _ in c] if i % 17 else None)
    return pa.table({
        "id": [f"r{i}" for i in range(n)],
        "group": rng.choice(["a", "b", "c"], n).tolist(),  # a SQL keyword as a column name
        "split": rng.choice(["train", "test"], n).tolist(),
        "day": pa.array((np.datetime64("2024-01-01") + rng.integers(0, 60, n)).astype("datetime64[D]"), pa.date32()),
        "concept_ids": pa.array(ids, pa.list_(pa.int32())),
        "concept_weights": pa.array(ws, pa.list_(pa.float32())),
    })


def _weight(r, c):
    if r["concept_ids"] is None:
        return None
    return r["concept_weights"][r["concept_ids"].index(c)] if c in r["concept_ids"] else 0.0


WHERE_CASES = [  # condition, reference predicate over a row (None = unknown: never matches)
    ("split = 'test'", lambda r: r["split"] == "test"),
    ('"group" = \'a\' OR "group" = \'c\'', lambda r: r["group"] in ("a", "c")),
    ("concept('c1') > 0.2 AND split != 'train'",
     lambda r: (_weight(r, 1) or 0) > np.float32(0.2) and r["split"] != "train"),
    ("concept('c2') < 0.1", lambda r: None if _weight(r, 2) is None else _weight(r, 2) < np.float32(0.1)),
    ("NOT concept('c0') AND day BETWEEN '2024-01-10' AND '2024-02-01'",
     lambda r: not (_weight(r, 0) or 0) > 0 and _weight(r, 0) is not None
     and "2024-01-10" <= str(r["day"]) <= "2024-02-01"),
    ("split = $s", lambda r: r["split"] == "train"),
]


@pytest.mark.parametrize("cond,truth", WHERE_CASES, ids=[c for c, _ in WHERE_CASES])
def test_where_language_compiles_to_bound_duckdb_sql(cond, truth):
    import duckdb

    from lance_concepts.retrieval.where import compile_where_sql, concept_resolver

    t = _synthetic()
    sql, bound = compile_where_sql(cond, t.schema, concept_resolver([f"c{i}" for i in range(5)]),
                                   params={"s": "train"})
    for v in ("test", "train", "'a'", "2024"):
        assert v not in sql  # every value is a parameter, none is SQL text
    con = duckdb.connect()
    con.register("images", t)
    got = {r[0] for r in con.execute(f"SELECT id FROM images WHERE {sql}", bound).fetchall()}
    want = {r["id"] for r in t.to_pylist() if truth(r)}
    assert got == want and 0 < len(want) < t.num_rows


def test_where_injection_is_a_syntax_error_not_a_disabled_filter(demo_db):
    import lance_concepts as lc
    from lance_concepts.cli import main
    from lance_concepts.errors import InputError

    db = str(demo_db / "demo.lancedb")
    for cmd in (["drift", "--time-column", "timestamp"], ["spurious", "--label-match", "string"]):
        r = CliRunner().invoke(main, cmd + ["--db", db, "--where", "split = 'test') OR (1=1"])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    with pytest.raises(InputError):
        lc.drift(db, where="split = 'test'; DROP TABLE images")


def test_drift_where_counts_only_matching_rows(demo_db):
    import lance_concepts as lc

    db = str(demo_db / "demo.lancedb")
    rows = _images(db).to_arrow().select(["split", "status"]).to_pylist()
    n_test = sum(r["split"] == "test" and r["status"] == "ok" for r in rows)
    n_all = sum(r["status"] == "ok" for r in rows)
    assert 0 < n_test < n_all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = lc.drift(db, "timestamp", where='"split" = \'test\'', min_support=1)
        full = lc.drift(db, "timestamp", min_support=1)
    n_col = [c for c in sub.table.column_names if c in ("n", "images", "n_images")][0]
    per_window = lambda res: {w: n for w, n in zip(res.table.column("window").to_pylist(),
                                                  res.table.column(n_col).to_pylist())}
    assert sum(per_window(sub).values()) == n_test and sum(per_window(full).values()) == n_all


# ------------------------------------------------------------------------------ item 13: small things
def test_readme_duckdb_example_returns_a_table(demo_db):
    import lance_concepts as lc

    db = str(demo_db / "demo.lancedb")
    con = lc.connect(db)
    t = con.sql("SELECT * FROM concept_images('grass', 0.1)").fetch_arrow_table()  # as in README
    assert t.num_rows == len(_truth(db, "grass", 0.1))
    con.close()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ".arrow()\n" not in readme and ").arrow()" not in readme.replace(".arrow() is", "")


def test_table_output_keeps_the_file_name_of_long_uris():
    from lance_concepts.cli.output import format_table

    uri = "s3://bucket/" + "/".join(f"folder{i}" for i in range(12)) + "/holiday_beach_0042.jpg"
    text = format_table(pa.table({"uri": [uri]}))
    cell = text.splitlines()[2]
    assert len(cell) <= 60 and cell.endswith("holiday_beach_0042.jpg") and cell.startswith("s3://bucket/")


# ---------------------------------------------------------------- item 11: plain LanceDB on the demo
def test_plain_lancedb_search_on_a_fresh_demo_db(tmp_path):
    pytest.importorskip("lancedb")
    try:
        from lance_concepts.models.encoder import load_encoder

        load_encoder("demo")
    except Exception as exc:
        pytest.skip(f"demo model not available: {exc}")
    import lancedb

    db = tmp_path / "demo.lancedb"
    from lance_concepts.demo.job import demo

    demo(str(db), n_images=40, data_dir=tmp_path / "data", quiet=True)
    tbl = lancedb.connect(str(db)).open_table("images")
    hits = tbl.search("a red circle", vector_column_name="embedding").limit(5).to_arrow()  # as in README
    assert hits.num_rows == 5
    rows = tbl.to_arrow().filter(pa.compute.equal(tbl.to_arrow().column("status"), "ok"))
    A = np.stack(rows.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    assert np.ptp(np.linalg.norm(A, axis=1)) > 1e-3  # not unit-length: L2 and cosine rankings differ
    q = A[7] * 3.0  # a scaled copy: cosine ranks row 7 first at distance 0, L2 would not
    got = tbl.search(q.astype(np.float32), vector_column_name="embedding").limit(10).to_arrow()
    cos = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    want = [rows.column("id")[int(i)].as_py() for i in np.argsort(-cos)[:10]]
    assert got.column("id").to_pylist() == want


# ------------------------------------------------------------------------------- item 12: start-up
PROBE = """
import sys
from lance_concepts.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("TORCH", "torch" in sys.modules)
"""


@pytest.mark.parametrize("argv", [["search", "a red circle"], ["spurious", "--label-column", "label"]],
                         ids=["search", "spurious"])
def test_repeated_text_commands_do_not_import_torch(demo_db, tmp_path, argv):
    import subprocess
    import sys

    db = str(demo_db / "demo.lancedb")
    env = {**os.environ, "LANCE_CONCEPTS_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = [subprocess.run([sys.executable, "-c", PROBE] + argv + ["--db", db], capture_output=True, text=True,
                           env=env, timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    first, second = (r.stdout.strip().splitlines()[-1] for r in runs)
    assert first == "TORCH True"  # the first call embeds the text with the model
    assert second == "TORCH False"  # the second reads the cached vectors
    body = lambda r: [ln for ln in r.stdout.splitlines() if "plan" not in ln and not ln.startswith("TORCH")]
    assert body(runs[0]) == body(runs[1])  # same answer from the cache


def test_text_cache_refuses_other_weights(tmp_path, monkeypatch):
    from lance_concepts.models.text_cache import cached_text_embeddings

    monkeypatch.setenv("LANCE_CONCEPTS_CACHE", str(tmp_path))

    class Enc:
        def __init__(self, fp, scale):
            self.fingerprint, self.scale, self.calls = fp, scale, 0

        def encode_text(self, texts):
            self.calls += 1
            return np.array([[len(t) * self.scale, 1.0] for t in texts], np.float32)

    a, b = Enc("fp-a", 1.0), Enc("fp-b", 2.0)
    va = cached_text_embeddings("fp-a", ["dog", "a cat"], lambda: a)
    assert cached_text_embeddings("fp-a", ["a cat", "dog"], lambda: pytest.fail("cached")).tolist() == va[::-1].tolist()
    vb = cached_text_embeddings("fp-b", ["dog"], lambda: b)  # other weights: computed, not read
    assert vb[0, 0] == 6.0 and b.calls == 1
    with pytest.raises(ValueError):
        cached_text_embeddings("fp-c", ["dog"], lambda: a)  # an encoder with other weights may not fill it
