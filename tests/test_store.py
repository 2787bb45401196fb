"""store.py: schema, metadata, exactly-once merges, postings, index-friendly filters, conflicts."""
from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from lance_concepts.lake import store as st
from lance_concepts.errors import InputError

D = 8


def _rows(ids, status="ok", dim=D, seed=0):
    rng = np.random.default_rng(seed)
    n = len(ids)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    cids = [[int(i % 5), int(i % 5) + 5] for i in range(n)]
    ws = [[0.5, 0.1] for _ in range(n)]
    ok = status == "ok"
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "uri": pa.array([f"{i}.png" for i in ids], pa.string()),
        "label": pa.array([f"l{k % 3}" for k in range(n)], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim,
                                                       mask=pa.array([not ok] * n)),
        "concept_ids": pa.array(cids if ok else [None] * n, pa.list_(pa.int32())),
        "concept_weights": pa.array(ws if ok else [None] * n, pa.list_(pa.float32())),
        "l0": pa.array([2 if ok else None] * n, pa.int32()),
        "splice_cosine": pa.array([0.5 if ok else None] * n, pa.float32()),
        "status": pa.array([status] * n, pa.string()),
        "error": pa.array([None if ok else "boom"] * n, pa.string()),
    })


def _postings(rows: pa.Table) -> pa.Table:
    ids, cids, ws = [], [], []
    for r in rows.to_pylist():
        for c, w in zip(r["concept_ids"] or [], r["concept_weights"] or []):
            ids.append(r["id"]), cids.append(c), ws.append(w)
    return pa.table({"image_id": pa.array(ids, pa.string()), "concept_id": pa.array(cids, pa.int32()),
                     "weight": pa.array(ws, pa.float32())})


def _store(tmp_path, meta=None, table="images"):
    s = st.ImageStore(tmp_path / "db.lancedb", table)
    s.create_or_open(st.images_schema(D, [pa.field("label", pa.string())], meta or {"model_fingerprint": "m1"}))
    return s


def test_schema_columns_and_types():
    sch = st.images_schema(4, [pa.field("label", pa.dictionary(pa.int32(), pa.string())),
                               pa.field("when", pa.date32()), pa.field("t", pa.timestamp("s", tz="UTC"))])
    from lance_concepts.lake.quality import QUALITY_COLUMNS

    assert sch.names == ["id", "uri", "label", "when", "t", "embedding", "concept_ids", "concept_weights", "l0",
                         "splice_cosine", "status", "error", *QUALITY_COLUMNS]
    assert sch.field("label").type == pa.string()
    assert sch.field("when").type == pa.timestamp("us")
    assert sch.field("t").type == pa.timestamp("us")
    assert sch.field("embedding").type == pa.list_(pa.float32(), 4)
    assert sch.field("concept_ids").type == pa.list_(pa.int32())
    with pytest.raises(InputError, match="collide"):
        st.images_schema(4, [pa.field("status", pa.string())])


def test_companion_names():
    assert st.companion_tables("images") == ("concepts", "image_concepts")
    assert st.companion_tables("photos") == ("photos_concepts", "photos_image_concepts")


def test_metadata_roundtrip_and_update(tmp_path):
    s = _store(tmp_path, {"model_fingerprint": "m1", "image_mean": np.arange(3, dtype=np.float32)})
    meta = st.read_metadata(tmp_path / "db.lancedb")
    assert meta["model_fingerprint"] == "m1" and meta["image_mean"] == [0.0, 1.0, 2.0]
    s.write_metadata({**meta, "vocabulary_digest": "v1"})
    assert st.read_metadata(str(tmp_path / "db.lancedb"))["vocabulary_digest"] == "v1"
    with pytest.raises(InputError, match="no table"):
        st.read_metadata(tmp_path / "db.lancedb", table="nope")


def test_merge_is_exactly_once_and_postings_upsert(tmp_path):
    s = _store(tmp_path)
    rows = _rows([f"a{i}" for i in range(10)])
    r1 = s.write_batch(rows, _postings(rows))
    r2 = s.write_batch(rows, _postings(rows))  # the same batch again (a re-run after a crash)
    assert r1 == {"inserted": 10, "updated": 0} and r2 == {"inserted": 0, "updated": 0}
    assert s.count() == 10
    p = s.postings.to_arrow()
    assert p.num_rows == 20
    assert len({(a, b) for a, b in zip(p.column("image_id").to_pylist(), p.column("concept_id").to_pylist())}) == 20
    # overlapping batch: only the new ids land
    r3 = s.write_batch(_rows([f"a{i}" for i in range(5, 15)]))
    assert r3["inserted"] == 5 and s.count() == 15
    with pytest.raises(InputError, match="duplicate ids"):
        s.write_batch(_rows(["x", "x"]))


def test_error_rows_replaced_only_on_retry(tmp_path):
    s = _store(tmp_path)
    s.write_batch(_rows(["e1", "e2"], status="error"))
    assert s.write_batch(_rows(["e1"]))["updated"] == 0
    assert s.table.to_arrow().to_pylist()[0]["status"] == "error"
    assert s.write_batch(_rows(["e1"]), retry_errors=True)["updated"] == 1
    st_by_id = dict(zip(*[s.table.to_arrow().column(c).to_pylist() for c in ("id", "status")]))
    assert st_by_id == {"e1": "ok", "e2": "error"}
    # ok rows are never overwritten, even with retry_errors
    assert s.write_batch(_rows(["e1"], seed=5), retry_errors=True)["updated"] == 0
    err = [r for r in s.table.to_arrow().to_pylist() if r["id"] == "e2"][0]
    assert err["embedding"] is None and err["concept_ids"] is None and err["error"] == "boom"


def test_align_adds_new_metadata_columns_and_casts(tmp_path):
    s = _store(tmp_path)
    s.write_batch(_rows(["a"]))
    extra = _rows(["b"]).append_column("camera", pa.array(["x100"])).set_column(
        2, "label", pa.array(["l9"], pa.large_string()))
    s.write_batch(extra)
    t = s.table.to_arrow()
    assert "camera" in t.column_names
    assert sorted(zip(t.column("id").to_pylist(), t.column("camera").to_pylist())) == [("a", None), ("b", "x100")]
    bad = _rows(["c"]).set_column(2, "label", pa.array([[1, 2]], pa.list_(pa.int64())))
    with pytest.raises(InputError, match="label"):
        s.write_batch(bad)


def test_check_compatible():
    base = {"model_name": "m", "model_fingerprint": "f1", "embed_dim": 8, "vocabulary": "v",
            "vocabulary_digest": "d1", "l1_penalty": 0.25, "prompt_template": None}
    assert st.check_compatible(base, dict(base)) == "same"
    assert st.check_compatible({}, base) == "same"
    with pytest.raises(InputError, match="different models|another table"):
        st.check_compatible(base, {**base, "model_fingerprint": "f2"})
    with pytest.raises(InputError, match="new-concept-version"):
        st.check_compatible(base, {**base, "vocabulary_digest": "d2"})
    with pytest.raises(InputError, match="l1_penalty"):
        st.check_compatible(base, {**base, "l1_penalty": 0.3})
    assert st.check_compatible(base, {**base, "vocabulary_digest": "d2"}, allow_new_concept_version=True) \
        == "new-concepts"
    with pytest.raises(InputError):  # a new concept version never covers a new model
        st.check_compatible(base, {**base, "model_fingerprint": "f2"}, allow_new_concept_version=True)


def test_concept_filter_uses_label_list_index(tmp_path):
    s = _store(tmp_path)
    rows = _rows([f"a{i:03d}" for i in range(200)])
    s.write_batch(rows, _postings(rows))
    s.ensure_indexes()
    tbl = s.table
    f = st.concept_filter(3)
    q = tbl.search().where(f).select(["id"]).limit(None)
    assert "ScalarIndexQuery" in q.explain_plan(True)
    got = set(q.to_arrow().column("id").to_pylist())
    want = {r["id"] for r in rows.to_pylist() if 3 in r["concept_ids"]}
    assert got == want and len(want) == 40
    both = set(tbl.search().where(st.concept_filter([3, 4])).select(["id"]).limit(None).to_arrow()
               .column("id").to_pylist())
    assert len(both) == 80
    heavy = tbl.search().where(st.concept_filter(3, min_weight=0.3)).select(["id"]).limit(None).to_arrow()
    light = tbl.search().where(st.concept_filter(8, min_weight=0.3)).select(["id"]).limit(None).to_arrow()
    assert heavy.num_rows == 40 and light.num_rows == 0  # concept 8 is the second (0.1) entry
    # postings carry a BITMAP index on concept_id
    kinds = {tuple(ix.columns): ix.index_type for ix in s.postings.list_indices()}
    assert "bitmap" in str(kinds[("concept_id",)]).lower()


def test_retries_then_reports_conflicts():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("Commit conflict for version 7: retryable")
        return "done"

    assert st.with_retries(flaky, "x", base_delay=0.001) == "done" and calls["n"] == 3
    with pytest.raises(st.CommitConflictError, match="re-run"):
        st.with_retries(lambda: (_ for _ in ()).throw(RuntimeError("commit conflict")), "x", attempts=2,
                        base_delay=0.001)
    with pytest.raises(ValueError):  # not a conflict: raised at once
        st.with_retries(lambda: (_ for _ in ()).throw(ValueError("bad value")), "x", base_delay=0.001)


def test_concurrent_writers_do_not_corrupt(tmp_path):
    s0 = _store(tmp_path)
    s0.write_batch(_rows(["seed"]))
    errors = []

    def writer(k):
        try:
            s = st.ImageStore(tmp_path / "db.lancedb")
            for b in range(6):  # overlapping id ranges between the writers
                ids = [f"c{j:03d}" for j in range(b * 5 + k * 10, b * 5 + k * 10 + 10)]
                rows = _rows(ids)
                s.write_batch(rows, _postings(rows))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    t = st.ImageStore(tmp_path / "db.lancedb").table.to_arrow()
    ids = t.column("id").to_pylist()
    expect = {"seed"} | {f"c{j:03d}" for k in range(3) for b in range(6) for j in range(b * 5 + k * 10,
                                                                                    b * 5 + k * 10 + 10)}
    assert len(ids) == len(set(ids)) and set(ids) == expect
    p = st.ImageStore(tmp_path / "db.lancedb").postings.to_arrow()
    keys = list(zip(p.column("image_id").to_pylist(), p.column("concept_id").to_pylist()))
    assert len(keys) == len(set(keys)) == 2 * (len(expect) - 1)


def test_storage_options_pass_through(monkeypatch, tmp_path):
    import lancedb

    seen = {}
    real = lancedb.connect

    def fake_connect(uri, **kw):
        seen.update(uri=uri, **kw)
        return real(str(tmp_path / "x.lancedb"))

    monkeypatch.setattr(lancedb, "connect", fake_connect)
    st.connect("s3://bucket/lake.lancedb", {"aws_region": "eu-west-1", "allow_http": "true"})
    assert seen == {"uri": "s3://bucket/lake.lancedb",
                    "storage_options": {"aws_region": "eu-west-1", "allow_http": "true"}}


def test_update_concept_columns_single_commit(tmp_path):
    s = _store(tmp_path)
    s.write_batch(_rows(["a", "b", "c"]))
    v0 = s.table.version
    upd = pa.table({"id": ["a", "c"], "concept_ids": pa.array([[9], [8, 7]], pa.list_(pa.int32())),
                    "concept_weights": pa.array([[1.0], [0.6, 0.2]], pa.list_(pa.float32())),
                    "l0": pa.array([1, 2], pa.int32()), "splice_cosine": pa.array([0.9, 0.8], pa.float32())})
    assert s.update_concept_columns([upd.slice(0, 1), upd.slice(1, 1)]) == 2
    assert s.table.version == v0 + 1
    by_id = {r["id"]: r for r in s.table.to_arrow().to_pylist()}
    assert by_id["a"]["concept_ids"] == [9] and by_id["c"]["concept_ids"] == [8, 7]
    assert by_id["b"]["concept_ids"] == [1, 6] and by_id["b"]["embedding"] is not None


def test_dedupe_removes_duplicates_keeping_ok_rows(tmp_path):
    s = _store(tmp_path)
    s.write_batch(_rows(["a", "b"], status="error"))
    # duplicates as two unlocked concurrent inserters on an object store could leave them
    s.table.add(s.align(_rows(["a", "c"])), on_bad_vectors="null")
    s.table.add(s.align(_rows(["c"])), on_bad_vectors="null")
    rows = _rows(["c"])
    s.postings.add(_postings(rows))
    s.postings.add(_postings(rows))
    assert s.count() == 5
    assert s.dedupe(postings=True) == 2 + 2
    t = s.table.to_arrow()
    assert sorted(zip(t.column("id").to_pylist(), t.column("status").to_pylist())) == \
        [("a", "ok"), ("b", "error"), ("c", "ok")]
    assert s.postings.count_rows() == 2
    assert s.dedupe(postings=True) == 0


def test_lock_path_only_for_local_databases(tmp_path):
    assert st._local_lock_path(str(tmp_path / "x.lancedb"), "images").endswith("_lance_concepts/images.lock")
    assert st._local_lock_path("file:///data/x.lancedb", "t") == "/data/x.lancedb/_lance_concepts/t.lock"
    assert st._local_lock_path("s3://bucket/x.lancedb", "images") is None
