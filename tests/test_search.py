"""Concept-filtered retrieval on synthetic tables (no CLIP model needed).

Ground truth: an independent Python evaluation of every condition on the rows, and exact cosine
search in numpy over the rows that pass it.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import warnings

import numpy as np
import pyarrow as pa
import pytest

from lance_concepts.retrieval import searcher as searcher_module

from lance_concepts.errors import InputError
from lance_concepts.retrieval.where import WhereError, compile_where, concept_resolver, parse_where
from lance_concepts.retrieval.index import index, index_params
from lance_concepts.retrieval.searcher import search
from lance_concepts.records import to_records

warnings.filterwarnings("ignore", category=DeprecationWarning)

VOCAB = ["sand", "snow", "red car", "dog", "beach", "sandy", "o'brien", "sky"]
D = 16


def _concept_rows(rng, n):
    ids, ws = [], []
    for i in range(n):
        if i % 37 == 5:  # a decode error row: no decomposition
            ids.append(None); ws.append(None)
            continue
        k = int(rng.integers(0, 5))
        c = rng.choice(len(VOCAB) - 1, k, replace=False)  # 'sky' (last) is never used
        w = rng.choice(np.array([0.05, 0.1, 0.2, 0.3, 0.5], np.float32), k)
        order = np.argsort(-w, kind="stable")
        ids.append(c[order].astype(np.int32).tolist()); ws.append(w[order].astype(np.float32).tolist())
    return ids, ws


def make_db(path, n=300, seed=0, rare=("dog", 3)):
    """A database in the project's layout (store.py schemas) with random vectors and concepts."""
    import lancedb

    from lance_concepts.lake.store import conform, concepts_schema, images_schema

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)).astype(np.float32)
    ids, ws = _concept_rows(rng, n)
    # the rare concept: on exactly rare[1] rows
    rare_id = VOCAB.index(rare[0])
    for i in range(n):
        if ids[i] is not None and rare_id in ids[i]:
            j = ids[i].index(rare_id)
            ids[i].pop(j); ws[i].pop(j)
    rare_rows = rng.choice([i for i in range(n) if ids[i] is not None], rare[1], replace=False)
    for i in rare_rows:
        ids[i].append(rare_id); ws[i].append(0.02)
    labels = rng.choice(["cat", "dog", "o'brien", "back\\slash", "crème"], n).tolist()
    status = ["error" if x is None else "ok" for x in ids]
    emb = [None if s == "error" else X[i] for i, s in enumerate(status)]
    meta = {"model_name": "test-model", "pretrained": None, "model_fingerprint": "f" * 20, "embed_dim": D,
            "vocabulary": "test", "l1_penalty": 0.25, "image_mean": (np.ones(D) / np.sqrt(D) * 0.5).tolist()}
    fields = [pa.field("label", pa.string()), pa.field("timestamp", pa.timestamp("us")), pa.field("n", pa.int32()),
              pa.field("flag", pa.bool_())]
    schema = images_schema(D, fields, meta)
    ts = [dt.datetime(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 360, n)]
    table = conform(pa.table({
        "id": [f"img{i:04d}" for i in range(n)], "uri": [f"images/{i}.png" for i in range(n)],
        "label": labels, "timestamp": pa.array(ts, pa.timestamp("us")),
        "n": pa.array(rng.integers(-5, 5, n), pa.int32()), "flag": (rng.random(n) < 0.5).tolist(),
        "embedding": pa.array([None if e is None else e.tolist() for e in emb], pa.list_(pa.float32(), D)),
        "concept_ids": pa.array(ids, pa.list_(pa.int32())), "concept_weights": pa.array(ws, pa.list_(pa.float32())),
        "l0": pa.array([0 if x is None else len(x) for x in ids], pa.int32()),
        "splice_cosine": pa.array(rng.random(n), pa.float32()), "status": status,
        "error": [("broken file" if s == "error" else None) for s in status],
    }), schema).replace_schema_metadata(schema.metadata)
    db = lancedb.connect(str(path))
    db.create_table("images", table, on_bad_vectors="null")  # error rows have null embeddings
    cemb = rng.normal(size=(len(VOCAB), D)).astype(np.float32)
    db.create_table("concepts", pa.table({
        "concept_id": pa.array(np.arange(len(VOCAB), dtype=np.int32)), "concept": VOCAB,
        "source": ["test"] * len(VOCAB), "embedding": pa.FixedSizeListArray.from_arrays(pa.array(cemb.ravel()), D),
    }).cast(concepts_schema(D)))
    rows = {"X": X, "ids": ids, "ws": ws, "labels": labels, "ts": ts, "table": table, "rare_rows": set(rare_rows.tolist())}
    return str(path), rows


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("search") / "db.lancedb")


# ---------------------------------------------------------------------------- reference evaluator
def _weight(row, name):
    ids, ws = row["concept_ids"], row["concept_weights"]
    if ids is None:
        return None
    cid = VOCAB.index(name)
    return np.float32(ws[ids.index(cid)]) if cid in ids else np.float32(0.0)


def _cmp(a, op, b):
    if a is None or b is None:
        return None
    return bool({"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def _lit(v, like):
    if isinstance(like, dt.datetime) and isinstance(v, str):
        return dt.datetime.fromisoformat(v)
    return v


def ref_eval(node, row):
    """Three-valued (None = unknown) evaluation of the parsed condition on one row dict."""
    from lance_concepts.retrieval.where import Between, BoolOp, Compare, Concept, InList, IsNull, Like, Not, Truthy
    from lance_concepts.retrieval.searcher import search

    if isinstance(node, BoolOp):
        vals = [ref_eval(p, row) for p in node.parts]
        if node.op == "AND":
            return False if any(v is False for v in vals) else (None if any(v is None for v in vals) else True)
        return True if any(v is True for v in vals) else (None if any(v is None for v in vals) else False)
    if isinstance(node, Not):
        v = ref_eval(node.part, row)
        return None if v is None else not v
    if isinstance(node, Truthy):
        if isinstance(node.operand, Concept):
            w = _weight(row, node.operand.name)
            return None if w is None else bool(w > 0)
        return row[node.operand.name]
    if isinstance(node, Compare):
        if isinstance(node.left, Concept):
            w = _weight(row, node.left.name)
            return _cmp(w, node.op, np.float32(node.right.value)) if w is not None else None
        a = row[node.left.name]
        return _cmp(a, node.op, _lit(node.right.value, a))
    if isinstance(node, InList):
        a = row[node.operand.name]
        if a is None:
            return None
        r = a in [v.value for v in node.values]
        return (not r) if node.negated else r
    if isinstance(node, Between):
        if isinstance(node.operand, Concept):
            a = _weight(row, node.operand.name)
            lo, hi = np.float32(node.low.value), np.float32(node.high.value)
        else:
            a = row[node.operand.name]
            lo, hi = _lit(node.low.value, a), _lit(node.high.value, a)
        if a is None:
            return None
        r = bool(lo <= a <= hi)
        return (not r) if node.negated else r
    if isinstance(node, Like):
        import re

        a = row[node.operand.name]
        if a is None:
            return None
        pattern = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in node.pattern)
        r = re.fullmatch(pattern, a, re.S) is not None
        return (not r) if node.negated else r
    if isinstance(node, IsNull):
        r = row[node.operand.name] is None
        return (not r) if node.negated else r
    raise AssertionError(node)


CONDITIONS = [
    "concept('sand') > 0.1",
    "concept('sand') > 0.3",  # boundary: stored 0.3 does not pass
    "concept('sand') >= 0.3",
    "concept('sand') = 0.3",
    "concept('sand') < 0.2",  # absent concept counts as weight 0
    "concept('sand') <= 0",
    "concept('sand') != 0.1",
    "concept('snow') BETWEEN 0.1 AND 0.3",
    "concept('snow') NOT BETWEEN 0.1 AND 0.3",
    "NOT concept('red car') > 0.1",
    "concept('dog')",
    "concept('sky') > 0",  # in the vocabulary, on no row
    "0.2 < concept('beach')",
    "concept('sand') > 0.1 AND label = 'dog'",
    "concept('sand') > 0.1 OR concept('snow') >= 0.5",
    "(concept('sand') > 0.1 OR label IN ('cat', 'crème')) AND NOT flag",
    "label = 'o''brien'",
    'label = "back\\slash"',
    "label LIKE 'c%' AND n >= -2",
    "label NOT IN ('cat', 'dog')",
    "timestamp >= '2024-06-01' AND timestamp < '2024-07-01T12:00:00'",
    "n BETWEEN -1 AND 1",
    "n = -3 OR n > 3",
    "flag = TRUE",
    "error IS NOT NULL",
    "label = 'x'' OR ''1''=''1'",  # a quote inside a string literal stays inside it
    "concept('o''brien') > 0",
]


@pytest.mark.parametrize("cond", CONDITIONS)
def test_where_matches_reference(db, cond):
    import lancedb

    path, truth = db
    tbl = lancedb.connect(path).open_table("images")
    sql = compile_where(cond, tbl.schema, concept_resolver(VOCAB))
    got = set(tbl.search().where(sql).select(["id"]).limit(None).to_arrow()["id"].to_pylist())
    node = parse_where(cond)
    want = {r["id"] for r in truth["table"].to_pylist() if ref_eval(node, r) is True}
    assert got == want, (cond, sql)


def test_where_uses_the_label_list_index(db):
    import lancedb

    path, _ = db
    index(path, scalar=True)
    tbl = lancedb.connect(path).open_table("images")
    sql = compile_where("concept('sand') > 0.1 AND label = 'dog'", tbl.schema, concept_resolver(VOCAB))
    plan = tbl.search(np.ones(D, np.float32), vector_column_name="embedding").where(sql, prefilter=True).explain_plan(True)
    assert "LabelList" in plan and "concept_ids" in plan


@pytest.mark.parametrize("cond, message", [
    ("concept('snd') > 0.1", "closest in the vocabulary: 'sand'"),
    ("concept('sandy beach') > 0.1", "unknown concept"),
    ("labl = 'dog'", "closest: 'label'"),
    ("label = 3", "holds text"),
    ("n > 'x'", "numeric"),
    ("n = 99999999999", "out of range"),
    ("timestamp > 'yesterday'", "not an ISO date"),
    ("flag = 1", "boolean"),
    ("concept_ids > 1", r"use concept\('name'\)"),
    ("embedding IS NULL", "cannot be used"),
    ("label = 'dog'; DROP TABLE images", "cannot read"),
    ("label = 'dog' --", "unexpected text"),
    ("label = 'dog' OR", "at the end"),
    ("upper(label) = 'DOG'", "unknown function"),
    ("concept(sand) > 0.1", "quoted string"),
    ("concept('sand') > 'high'", "numbers"),
    ("concept('sand') IN (0.1)", "cannot be used with IN"),
    ("(label = 'dog'", r"expected '\)'"),
    ("", "empty"),
    ("label = 'unterminated", "cannot read"),
])
def test_where_errors_are_clear(db, cond, message):
    import lancedb

    path, _ = db
    tbl = lancedb.connect(path).open_table("images")
    if cond == "":
        assert compile_where(cond, tbl.schema, concept_resolver(VOCAB)) is None
        with pytest.raises(WhereError, match=message):
            parse_where(cond)
        return
    with pytest.raises(WhereError, match=message):
        compile_where(cond, tbl.schema, concept_resolver(VOCAB))


def test_where_errors_are_user_errors():
    assert issubclass(WhereError, InputError)


# ---------------------------------------------------------------------------- search
def exact(truth, q, mask, k):
    X = truth["X"]
    s = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    s = np.where(mask, s, -np.inf)
    order = np.argsort(-s, kind="stable")[: min(k, int(mask.sum()))]
    return [f"img{i:04d}" for i in order], s[order]


def _mask(truth, cond):
    node = parse_where(cond)
    return np.array([ref_eval(node, r) is True and r["embedding"] is not None for r in truth["table"].to_pylist()])


@pytest.mark.parametrize("cond", ["concept('sand') > 0.1 AND label = 'dog'", "concept('snow') >= 0.2", None])
def test_search_is_exact_on_small_tables(db, cond):
    path, truth = db
    q = np.random.default_rng(1).normal(size=D).astype(np.float32)
    res = search(path, vector=q, where=cond, k=7)
    mask = _mask(truth, cond) if cond else np.array([e is not None for e in truth["table"]["embedding"].to_pylist()])
    ids, scores = exact(truth, q, mask, 7)
    assert res["id"].to_pylist() == ids
    np.testing.assert_allclose(res["score"].to_numpy(), scores, atol=1e-5)


def test_search_result_shape(db):
    path, truth = db
    q = np.random.default_rng(2).normal(size=D).astype(np.float32)
    res = search(path, vector=q, where="concept('sand') > 0.1", k=3, concepts=2)
    assert res.column_names[:4] == ["id", "uri", "score", "concepts"]
    assert {"label", "timestamp", "n", "flag", "l0", "status"} <= set(res.column_names)
    assert "embedding" not in res.column_names and "concept_ids" not in res.column_names
    for row in res.to_pylist():
        names = [c["concept"] for c in row["concepts"]]
        assert len(names) <= 2
        ws = [c["weight"] for c in row["concepts"]]
        assert ws == sorted(ws, reverse=True)
        src = truth["table"].to_pylist()[int(row["id"][3:])]
        assert math.isclose(row["concepts"][0]["weight"], max(src["concept_weights"]), rel_tol=1e-6)
    assert "sand" in json.loads(res.schema.metadata[b"query"])["filter"] or "CAST(0 AS INT)" in \
        json.loads(res.schema.metadata[b"query"])["filter"]
    recs = to_records(res)
    json.dumps(recs)  # JSON-ready: timestamps as strings
    assert isinstance(recs[0]["timestamp"], str)


def test_filter_matching_no_rows_is_an_empty_result(db):
    path, _ = db
    res = search(path, vector=np.ones(D, np.float32), where="concept('sky') > 0", k=5)
    assert res.num_rows == 0
    assert res.column_names[:3] == ["id", "uri", "score"]
    res = search(path, vector=np.ones(D, np.float32), where="label = 'no such label'", k=5)
    assert res.num_rows == 0


def test_error_rows_are_never_results(db):
    path, truth = db
    res = search(path, vector=np.ones(D, np.float32), where="concept('sand') < 0.5", k=1000)
    assert "error" not in res["status"].to_pylist()
    assert res.num_rows == int(_mask(truth, "concept('sand') < 0.5").sum())


def test_search_argument_errors(db):
    path, _ = db
    q = np.ones(D, np.float32)
    with pytest.raises(InputError, match="exactly one query"):
        search(path, "text", vector=q)
    with pytest.raises(InputError, match="k must be"):
        search(path, vector=q, k=0)
    with pytest.raises(InputError, match="dimensions"):
        search(path, vector=np.ones(D + 1, np.float32))
    with pytest.raises(InputError, match="no table"):
        search(path, vector=q, table="nope")
    with pytest.raises(InputError, match="vector column"):
        search(path, vector=q, vector_column="label")
    with pytest.raises(WhereError, match="closest"):
        search(path, vector=q, where="concept('snwo') > 0.1")
    with pytest.raises(InputError, match="unknown open_clip model 'test-model'"):
        search(path, "a dog")  # the table's recorded model cannot be loaded: a clear error
    with pytest.raises(InputError, match="cannot read the query image"):
        search(path, image=__file__)


# ---------------------------------------------------------------------------- the ANN index keeps every match
@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    """3,000 rows with a real IVF_PQ index; 'dog' is on exactly 3 rows."""
    path, truth = make_db(tmp_path_factory.mktemp("search-ivf") / "db.lancedb", n=3000, seed=3)
    report = index(path, index_type="IVF_PQ", lancedb_search=True)
    assert report["vector_index"]["index_type"] == "IVF_PQ"
    assert report["embedding_function"] == "lance-concepts-clip"
    return path, truth


def test_few_matches_all_come_back_through_the_ann_index(big_db):
    path, truth = big_db
    rng = np.random.default_rng(5)
    rare = {f"img{i:04d}" for i in truth["rare_rows"]}
    for _ in range(5):
        q = rng.normal(size=D).astype(np.float32)
        res = search(path, vector=q, where="concept('dog') > 0", k=10)
        assert set(res["id"].to_pylist()) == rare  # no loss to unprobed partitions
        res2 = search(path, vector=q, where="concept('dog') > 0", k=2)
        ids, _ = exact(truth, q, _mask(truth, "concept('dog') > 0"), 2)
        assert res2["id"].to_pylist() == ids
    assert search(path, vector=q, where="concept('dog') > 0.5", k=10).num_rows == 0


def test_k_results_come_back_when_k_pass_the_filter(big_db):
    path, truth = big_db
    rng = np.random.default_rng(6)
    cond = "concept('snow') >= 0.5 AND label = 'cat'"
    mask = _mask(truth, cond)
    assert 10 < mask.sum() < 100
    for _ in range(5):
        q = rng.normal(size=D).astype(np.float32)
        res = search(path, vector=q, where=cond, k=10)
        assert res.num_rows == 10
        assert all(mask[int(i[3:])] for i in res["id"].to_pylist())


def test_index_report_and_metadata(big_db):
    import lancedb

    path, _ = big_db
    tbl = lancedb.connect(path).open_table("images")
    kinds = {tuple(ix.columns): ix.index_type for ix in tbl.list_indices()}
    assert kinds[("concept_ids",)] == "LabelList"
    assert kinds[("embedding",)] == "IvfPq"
    assert kinds[("label",)] == "Bitmap"
    meta = json.loads(tbl.schema.metadata[b"lance_concepts.index"])
    assert meta["embedding"]["index_type"] == "IVF_PQ" and meta["embedding"]["rows"] == sum(1 for i in range(3000) if i % 37 != 5)
    funcs = json.loads(tbl.schema.metadata[b"embedding_functions"])
    assert funcs[0]["name"] == "lance-concepts-clip"
    assert funcs[0]["model"] == {"model": "test-model", "pretrained": None, "fingerprint": "f" * 20, "device": "auto"}


def test_lancedb_registration_is_recorded_only_when_writers_cope(db):
    """'auto' records the embedding function only when the project's writers can live with it."""
    import lancedb

    from lance_concepts.retrieval.registration import lancedb_registration_ready

    path, _ = db
    ready, why = lancedb_registration_ready()
    report = index(path, lancedb_search="auto")
    meta = lancedb.connect(path).open_table("images").schema.metadata
    assert (b"embedding_functions" in meta) == ready
    if not ready:
        assert report["embedding_function"] is None and why in report["embedding_function_note"]
    index(path, lancedb_search=True)
    assert b"embedding_functions" in lancedb.connect(path).open_table("images").schema.metadata
    report = index(path, lancedb_search=False)
    assert b"embedding_functions" not in lancedb.connect(path).open_table("images").schema.metadata
    assert report["embedding_function_note"] == "not recorded: switched off"


def test_index_params_scale_with_the_table():
    assert index_params(600, 512)["index_type"] == "IVF_FLAT"
    p = index_params(200_000, 512)
    assert p["index_type"] == "IVF_PQ" and p["num_partitions"] == 447 and p["num_sub_vectors"] == 32
    assert index_params(1_000_000, 768)["num_partitions"] == 1000
    h = index_params(1_000_000, 512, "IVF_HNSW_SQ")
    assert h["index_type"] == "IVF_HNSW_SQ" and h["num_partitions"] == 10
    with pytest.raises(InputError, match="unknown index type"):
        index_params(10, 4, "LSH")
    with pytest.raises(InputError, match="at least 256"):
        index_params(100, 4, "IVF_PQ")


def test_ann_prefilter_probes_until_every_match_is_found(big_db):
    """The ANN path alone (no exact shortcut): a 3-row filter on an IVF_PQ index returns all 3 rows."""
    import lancedb

    from lance_concepts.retrieval.searcher import Searcher, _vector_query, query_params

    path, truth = big_db
    s = Searcher(path)
    params = query_params(s.t, "embedding")
    assert params["index_type"] == "IVF_PQ" and params["nprobes"] < params["num_partitions"]
    sql = s.compile("concept('dog') > 0")[0]
    rare = {f"img{i:04d}" for i in truth["rare_rows"]}
    tbl = lancedb.connect(path).open_table("images")
    rng = np.random.default_rng(9)
    for _ in range(5):
        q = rng.normal(size=D).astype(np.float32)
        res = _vector_query(tbl, q, k=10, where=sql, params=params, select=["id"])
        assert set(res["id"].to_pylist()) == rare


@pytest.mark.parametrize("exact_max, overfetch, cond, plan", [
    (1024, 1000, "concept('dog') > 0", "exact over"),
    (0, 1000, "concept('dog') > 0", "ann with index prefilter"),
    (0, 1000, "concept('sand') >= 0.1", "ann top"),
    (100, 10, "concept('sand') >= 0.5 AND concept('snow') >= 0.5", "exact over"),
    (0, 10, "concept('sand') >= 0.1", "ann with full prefilter"),
    (1024, 1000, "concept('sky') > 0", "empty"),
    (1024, 1000, None, "ann"),
])
def test_every_query_plan_returns_k_rows_that_pass(big_db, monkeypatch, exact_max, overfetch, cond, plan):
    from lance_concepts.retrieval.where import Between, BoolOp, Compare, Concept, InList, IsNull, Like, Not, Truthy
    from lance_concepts.retrieval.searcher import search

    path, truth = big_db
    monkeypatch.setattr(searcher_module, "EXACT_MAX_ROWS", exact_max)
    monkeypatch.setattr(searcher_module, "MAX_OVERFETCH", overfetch)
    mask = _mask(truth, cond) if cond else np.array([r["embedding"] is not None for r in truth["table"].to_pylist()])
    rng = np.random.default_rng(11)
    for _ in range(3):
        q = rng.normal(size=D).astype(np.float32)
        res = search(path, vector=q, where=cond, k=10)
        assert json.loads(res.schema.metadata[b"query"])["plan"].startswith(plan)
        assert res.num_rows == min(10, int(mask.sum()))
        assert all(mask[int(i[3:])] for i in res["id"].to_pylist())
        scores = res["score"].to_numpy()
        assert (np.diff(scores) <= 1e-6).all()
        if plan.startswith("exact") or plan == "empty":
            ids, _ = exact(truth, q, mask, 10)
            assert res["id"].to_pylist() == ids
