"""engine='ray': the same rows, schema and metadata as the local engine; exactly once under killed
tasks and an interrupted run; decompose on Ray rewrites only the concept columns.

Ray runs in local mode with 2 CPUs (one session for the module); the data is a small demo world
with the demo model (offline). Ground truth: the local engine's table for the same source.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("ray")
pytest.importorskip("lance_ray")

from lance_concepts.demo.world import generate_dataset
from lance_concepts.lake.decompose import decompose_table
from lance_concepts.lake.engines import ray as ray_engine
from lance_concepts.lake.ingest import ingest
from lance_concepts.lake.store import ImageStore, read_metadata

N = 40
VOLATILE = {"created_at", "updated_at", "sources"}  # differ between any two runs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A demo world of N images, one of them corrupt and one missing: two error rows."""
    root = tmp_path_factory.mktemp("ray-world")
    man = generate_dataset(root / "data", n=N, seed=3)
    imgs = sorted((root / "data" / "images").iterdir())
    imgs[5].write_bytes(b"this is not an image")
    imgs[9].unlink()
    return man


KW = dict(model="demo", vocab="demo", batch_size=8, quiet=True, image_mean="estimate", mean_sample=16)


@pytest.fixture(scope="module")
def both(world, tmp_path_factory, ray_session):
    """The same source ingested by both engines (the Ray run in 2 waves of at most 24 rows)."""
    root = tmp_path_factory.mktemp("ray-dbs")
    local, dist = str(root / "local.lancedb"), str(root / "ray.lancedb")
    s_local = ingest(world, local, workers=0, **KW)
    s_ray = ingest(world, dist, engine="ray", commit_every=24, **KW)
    return local, dist, s_local, s_ray


def _rows(db):
    return ImageStore(db).table.to_arrow().sort_by("id")


def _postings(db):
    p = ImageStore(db).postings.to_arrow()
    return sorted(zip(*[p.column(k).to_pylist() for k in ("image_id", "concept_id", "weight")]))


def _check_exactly_once(db, n):
    t = _rows(db)
    ids = t.column("id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n, "duplicate or missing rows"
    post = _postings(db)
    keys = [(a, c) for a, c, _ in post]
    assert len(keys) == len(set(keys)), "duplicate postings"
    want = set()
    for r in t.to_pylist():
        if r["status"] == "ok":
            want |= {(r["id"], c) for c in r["concept_ids"]}
    assert set(keys) == want


def test_ray_ingest_matches_local_engine(both):
    local, dist, s_local, s_ray = both
    assert (s_ray.ok, s_ray.errors, s_ray.skipped) == (s_local.ok, s_local.errors, s_local.skipped) == (N - 2, 2, 0)
    assert sorted(s_ray.error_kinds.items()) == sorted(s_local.error_kinds.items())
    a, b = _rows(local), _rows(dist)
    assert a.schema == b.schema  # names, order, types, and the metadata bytes aside from timestamps
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    for col in ("uri", "label", "timestamp", "status", "error", "concept_ids", "l0"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    ea = np.array([e for e in a.column("embedding").to_pylist() if e is not None], np.float32)
    eb = np.array([e for e in b.column("embedding").to_pylist() if e is not None], np.float32)
    assert ea.shape == (N - 2, 64) and np.abs(ea - eb).max() < 1e-5
    wa = [w for ws in a.column("concept_weights").to_pylist() if ws for w in ws]
    wb = [w for ws in b.column("concept_weights").to_pylist() if ws for w in ws]
    assert np.allclose(wa, wb, atol=1e-5)
    ma, mb = read_metadata(local), read_metadata(dist)
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    assert mb["image_mean_source"] == "estimated from the first 16 images ingested"
    assert "ingest_in_progress" not in mb
    _check_exactly_once(dist, N)
    assert [(i, c) for i, c, _ in _postings(dist)] == [(i, c) for i, c, _ in _postings(local)]


def _same(ta: pa.Table, tb: pa.Table):
    """Equal tables; floats to 1e-5 (the embeddings of the two engines agree to float32 round-off)."""
    assert ta.schema.names == tb.schema.names and ta.num_rows == tb.num_rows
    for name in ta.schema.names:
        x, y = ta.column(name).to_pylist(), tb.column(name).to_pylist()
        if pa.types.is_floating(ta.schema.field(name).type):
            assert np.allclose(np.array(x, float), np.array(y, float), atol=1e-5, equal_nan=True), name
        else:
            assert x == y, name


def test_duckdb_queries_agree_on_ray_tables(both):
    import lance_concepts as lc
    from lance_concepts.query.named import sql

    local, dist, _, _ = both
    for concept in ("red", "grass"):
        fa, fb = lc.filter(local, concept, 0.0), lc.filter(dist, concept, 0.0)
        assert fa.num_rows > 0
        _same(fa.sort_by("id"), fb.sort_by("id"))
    q = "SELECT concept, count(*) AS n FROM image_concepts GROUP BY concept ORDER BY n DESC, concept LIMIT 5"
    assert sql(local, q).to_pylist() == sql(dist, q).to_pylist()
    da = lc.drift(local, "timestamp", "month", concepts=["red"]).table
    db_ = lc.drift(dist, "timestamp", "month", concepts=["red"]).table
    _same(da, db_)


def test_ray_rerun_skips_everything(both, world):
    _, dist, _, _ = both
    s = ingest(world, dist, engine="ray", **KW)
    assert (s.ok, s.errors, s.skipped) == (0, 0, N)
    _check_exactly_once(dist, N)


def _orphans(db):
    """Data files of the images table that no fragment references (left by killed write attempts)."""
    ds = ImageStore(db).table.to_lance()
    used = {os.path.basename(f.path) for fr in ds.get_fragments() for f in fr.data_files()}
    on_disk = set(os.listdir(os.path.join(ds.uri, "data")))
    return on_disk - used


def test_killed_map_actor_and_write_task_write_each_row_once(world, tmp_path, ray_session, monkeypatch):
    """A map actor and an images write task (after writing its fragment files) die on their first
    attempt; Ray retries them; every row is in the table once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    db = str(tmp_path / "db.lancedb")
    monkeypatch.setattr(ray_engine, "FAULTS", {"stages": ["map", "write"], "dir": str(marks)})
    s = ingest(world, db, engine="ray", **KW)
    assert sorted(os.listdir(marks)) == ["map.failed", "write.failed"]  # both failures happened
    assert (s.ok, s.errors) == (N - 2, 2)
    _check_exactly_once(db, N)
    assert _orphans(db), "the killed write attempt left no files: the failure was not after the write"


def test_run_killed_between_commits_resumes_exactly_once(world, tmp_path, ray_session, monkeypatch):
    """The driver dies after the second wave's postings commit, before its images commit; the re-run
    finishes the job and removes the postings the dead run left twice."""
    marks = tmp_path / "marks"
    marks.mkdir()
    db = str(tmp_path / "db.lancedb")
    # the hook fires in the first wave: its postings are committed, its images are not
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="injected failure in commit"):
        m.setattr(ray_engine, "FAULTS", {"stages": ["commit"], "dir": str(marks)})
        ingest(world, db, engine="ray", commit_every=24, **KW)
    assert read_metadata(db).get("ingest_in_progress")
    s = ingest(world, db, engine="ray", **KW)
    assert s.ok + s.errors + s.skipped == N
    assert any("interrupted" in n for n in s.notes)
    _check_exactly_once(db, N)
    assert "ingest_in_progress" not in read_metadata(db)


def test_ray_decompose_rewrites_only_concept_columns(both, tmp_path):
    import shutil

    local, dist, _, _ = both
    loc2, ray2 = str(tmp_path / "l.lancedb"), str(tmp_path / "r.lancedb")
    shutil.copytree(local, loc2)
    shutil.copytree(dist, ray2)
    ds = ImageStore(ray2).table.to_lance()
    before = {fr.fragment_id: sorted(f.path for f in fr.data_files()) for fr in ds.get_fragments()}
    da = decompose_table(loc2, "demo", 0.4, quiet=True)
    dr = decompose_table(ray2, "demo", 0.4, quiet=True, engine="ray")
    assert (dr.rows, dr.concept_version, dr.postings) == (da.rows, da.concept_version, da.postings) == \
        (N - 2, 2, da.postings)
    assert abs(dr.mean_l0 - da.mean_l0) < 1e-6 and abs(dr.mean_cosine - da.mean_cosine) < 1e-5
    a, b = _rows(loc2), _rows(ray2)
    assert a.schema.names == b.schema.names and a.schema.types == b.schema.types
    for col in ("concept_ids", "l0", "status", "id"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    assert np.allclose([w for ws in a.column("concept_weights").to_pylist() if ws for w in ws],
                       [w for ws in b.column("concept_weights").to_pylist() if ws for w in ws], atol=1e-5)
    assert a.column("concept_ids").to_pylist() != _rows(dist).column("concept_ids").to_pylist()  # it did change
    # the old data files (embeddings among them) are all still referenced: only new files were added
    after = {fr.fragment_id: sorted(f.path for f in fr.data_files()) for fr in
             ImageStore(ray2).table.to_lance().get_fragments()}
    assert set(after) == set(before)
    for fid, files in before.items():
        assert set(files) < set(after[fid])
    ma, mb = read_metadata(loc2), read_metadata(ray2)
    assert mb["concept_version"] == 2 and mb["l1_penalty"] == 0.4
    assert {k: v for k, v in ma.items() if k not in VOLATILE | {"concept_history"}} == \
        {k: v for k, v in mb.items() if k not in VOLATILE | {"concept_history"}}
    _check_exactly_once(ray2, N)


def test_engine_ray_without_ray_is_a_clear_error(world, tmp_path, monkeypatch):
    import sys

    from lance_concepts.errors import InputError

    monkeypatch.setitem(sys.modules, "lance_ray", None)
    with pytest.raises(InputError, match=r"pip install 'lance-concepts\[ray\]'"):
        ingest(world, str(tmp_path / "x.lancedb"), engine="ray", **KW)
    with pytest.raises(InputError, match="engine must be"):
        ingest(world, str(tmp_path / "x.lancedb"), engine="spark", **KW)
