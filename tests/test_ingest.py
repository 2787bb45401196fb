"""ingest(): sources, metadata types, concepts (planted colours), resume, refusals, decompose_table, CLI.

The encoder is a tiny deterministic stand-in (tests/test_ingest_fakes.py) whose embedding of an
image is its mean colour through a fixed matrix and whose text embedding of a colour word is that
colour through the same matrix: SpLiCE over a colour vocabulary must name each image's colour.
"""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from lance_concepts.errors import InputError
from lance_concepts.lake.decompose import decompose_table
from lance_concepts.lake.ingest import ingest
from lance_concepts.lake.sources import open_source
from lance_concepts.lake.store import ImageStore, read_metadata
from lance_concepts.concepts.vocabulary import Vocabulary

from .test_ingest_fakes import COLOURS, WORDS, FakeEncoder

PRIMARY = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def enc():
    return FakeEncoder()


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(WORDS, name="colours")


def _colour_image(colour: str, rng, size=12) -> Image.Image:
    base = np.array(COLOURS[colour]) * 255
    a = np.clip(base * rng.uniform(0.75, 1.0, (size, size, 3)) + rng.uniform(0, 20, (size, size, 3)), 0, 255)
    return Image.fromarray(a.astype("uint8"))


def make_dataset(root, n=30, seed=0, fmt="png"):
    """n colour images + a manifest with typed metadata. Returns (root, rows)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root / "imgs", exist_ok=True)
    rows = []
    for i in range(n):
        c = PRIMARY[i % 3]
        uri = f"imgs/{c}_{i:03d}.{fmt}"
        _colour_image(c, rng).save(root / uri)
        rows.append({"id": f"im{i:03d}", "uri": uri, "label": c, "split": "test" if i % 5 == 0 else "train",
                     "timestamp": f"2024-{1 + i % 12:02d}-{1 + i % 27:02d}", "score": i / 10, "n": i,
                     "flag": i % 2 == 0})
    return root, rows


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _table(db, name="images"):
    return ImageStore(db, name).table.to_arrow()


def _check_consistent(db, name="images"):
    """Every id once; postings == parallel lists for ok rows; error rows carry no vectors."""
    s = ImageStore(db, name)
    t = s.table.to_arrow().to_pylist()
    ids = [r["id"] for r in t]
    assert len(ids) == len(set(ids)), "duplicate ids"
    p = s.postings.to_arrow()
    post = {}
    for a, c, w in zip(*[p.column(k).to_pylist() for k in ("image_id", "concept_id", "weight")]):
        assert (a, c) not in post, "duplicate posting"
        post[(a, c)] = w
    want = {}
    for r in t:
        if r["status"] == "ok":
            assert r["embedding"] is not None and r["error"] is None
            assert r["l0"] == len(r["concept_ids"]) == len(r["concept_weights"])
            assert r["concept_weights"] == sorted(r["concept_weights"], reverse=True)
            assert all(w > 0 for w in r["concept_weights"])
            for c, w in zip(r["concept_ids"], r["concept_weights"]):
                want[(r["id"], c)] = w
        else:
            assert r["status"] == "error" and r["error"]
            assert r["embedding"] is None and r["concept_ids"] is None
    assert set(post) == set(want)
    assert all(abs(post[k] - want[k]) < 1e-6 for k in want)
    return t


def test_manifest_csv_end_to_end(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path)
    man = write_csv(root / "manifest.csv", rows)
    db = tmp_path / "db.lancedb"
    s = ingest(man, db, model=enc, vocab=vocab, batch_size=8, workers=0, quiet=True)
    assert (s.ok, s.errors, s.skipped, s.exit_code) == (30, 0, 0, 0)
    t = _table(db)
    sch = t.schema
    assert sch.field("timestamp").type == pa.timestamp("us")
    assert sch.field("score").type == pa.float64() and sch.field("n").type == pa.int64()
    assert sch.field("flag").type == pa.bool_() and sch.field("id").type == pa.string()
    assert sch.field("embedding").type == pa.list_(pa.float32(), enc.embed_dim)
    rows_db = _check_consistent(db)
    by_id = {r["id"]: r for r in rows_db}
    for r in rows:
        got = by_id[r["id"]]
        assert got["uri"] == r["uri"] and got["label"] == r["label"] and got["split"] == r["split"]
        assert got["timestamp"].date().isoformat() == r["timestamp"]
        # the planted truth: the strongest concept is the image's colour
        assert WORDS[got["concept_ids"][0]] == r["label"]
        assert 0.5 < got["splice_cosine"] <= 1.0
    # embeddings are the encoder's, bit for bit
    im = Image.open(root / rows[4]["uri"])
    ref = enc.encode_images(enc.preprocess(im)[None])[0]
    np.testing.assert_allclose(by_id["im004"]["embedding"], ref, rtol=1e-6, atol=1e-6)
    meta = read_metadata(db)
    assert meta["model_fingerprint"] == enc.fingerprint and meta["vocabulary_digest"] == vocab.digest
    assert meta["l1_penalty"] == 0.25 and meta["concept_version"] == 1 and len(meta["image_mean"]) == 16
    assert meta["concepts_table"] == "concepts" and meta["postings_table"] == "image_concepts"
    assert "package_version" in meta and meta["sources"][-1]["ok"] == 30
    c = ImageStore(db).conn.open_table("concepts").to_arrow()
    assert c.column("concept").to_pylist() == list(vocab) and c.column("concept_id").to_pylist() == list(range(12))
    # the stored image mean is the mean of the normalised embeddings (all 30 fit in mean_sample)
    E = np.array([r["embedding"] for r in rows_db], np.float64)
    np.testing.assert_allclose(meta["image_mean"], (E / np.linalg.norm(E, axis=1, keepdims=True)).mean(0),
                               atol=1e-5)
    # re-run: everything skipped, nothing written
    s2 = ingest(man, db, model=enc, vocab=vocab, batch_size=8, workers=0, quiet=True)
    assert (s2.ok, s2.errors, s2.skipped, s2.exit_code) == (0, 0, 30, 0)
    assert len(_table(db)) == 30


def test_weights_match_reference_decomposer(tmp_path, enc, vocab):
    """The stored weights are SpliceDecomposer's on the stored embeddings with the recorded mean."""
    from lance_concepts.concepts.splice import SpliceDecomposer

    root, rows = make_dataset(tmp_path, n=12)
    db = tmp_path / "db.lancedb"
    ingest(write_csv(root / "m.csv", rows), db, model=enc, vocab=vocab, l1=0.1, workers=0, quiet=True)
    t = _table(db).to_pylist()
    meta = read_metadata(db)
    dec = SpliceDecomposer(vocab.embed(enc), image_mean=np.array(meta["image_mean"], np.float32),
                           l1_penalty=0.1).fit()
    W = dec.decompose(np.array([r["embedding"] for r in t], np.float32)).toarray()
    for r, w in zip(t, W):
        dense = np.zeros(len(vocab), np.float32)
        dense[r["concept_ids"]] = r["concept_weights"]
        np.testing.assert_allclose(dense, w, atol=1e-6)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_manifest_parquet_and_jsonl(tmp_path, enc, vocab, fmt):
    root, rows = make_dataset(tmp_path, n=9)
    for r in rows:
        r["path"] = r.pop("uri")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        t = pa.Table.from_pylist(rows)
        t = t.set_column(t.schema.get_field_index("timestamp"), "timestamp",
                         pa.array([datetime.fromisoformat(r["timestamp"] + "T12:00:00+00:00") for r in rows],
                                  pa.timestamp("ms", tz="UTC")))
        man = root / "m.parquet"
        pq.write_table(t, man)
    else:
        man = root / "m.jsonl"
        man.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    db = tmp_path / "db.lancedb"
    s = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True, id_column="id")
    assert s.ok == 9 and s.errors == 0
    t = _table(db)
    assert t.schema.field("timestamp").type == pa.timestamp("us")
    got = {r["id"]: r for r in t.to_pylist()}
    assert got["im003"]["uri"] == rows[3]["path"]
    assert got["im003"]["timestamp"].date().isoformat() == rows[3]["timestamp"]
    _check_consistent(db)


def test_directory_source_uri_ids_keep_byte_identical_files(tmp_path, enc, vocab):
    """Issue 18.3: N files in, N rows out; the shared content is visible in content_sha256 (SQL finds duplicates)."""
    root, rows = make_dataset(tmp_path, n=6)
    (root / "imgs" / "sub").mkdir()
    data = (root / rows[0]["uri"]).read_bytes()
    (root / "imgs" / "sub" / "copy.png").write_bytes(data)
    (root / "imgs" / "notes.txt").write_text("not an image extension: skipped and counted")
    db = tmp_path / "db.lancedb"
    s = ingest(root / "imgs", db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s.ok, s.errors, s.duplicates) == (7, 0, 0)
    assert any("1 files without an image extension" in n for n in s.notes)
    t = _table(db).to_pylist()
    by_uri = {r["uri"]: r for r in t}
    assert len(by_uri) == 7 and len({r["id"] for r in t}) == 7
    want = hashlib.sha256(data).hexdigest()
    assert by_uri["sub/copy.png"]["content_sha256"] == want
    assert sum(r["content_sha256"] == want for r in t) == 2
    for r in rows:  # every content hash is the full hex SHA-256 of the file bytes
        rel = r["uri"].split("/", 1)[1]
        assert by_uri[rel]["content_sha256"] == hashlib.sha256((root / r["uri"]).read_bytes()).hexdigest()
    assert all(not r["uri"].startswith("/") and not r["uri"].startswith("imgs/") for r in t)
    s2 = ingest(root / "imgs", db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s2.ok, s2.skipped, s2.duplicates) == (0, 7, 0) and len(_table(db)) == 7


def test_lance_table_sources(tmp_path, enc, vocab):
    import lancedb

    root, rows = make_dataset(tmp_path, n=6)
    src_db = lancedb.connect(tmp_path / "src.lancedb")
    blobs = [(root / r["uri"]).read_bytes() for r in rows]
    src_db.create_table("raw", pa.table({"id": [r["id"] for r in rows], "image": pa.array(blobs, pa.binary()),
                                         "label": [r["label"] for r in rows]}))
    src_db.create_table("byuri", pa.table({"uri": [str(root / r["uri"]) for r in rows],
                                           "label": [r["label"] for r in rows]}))
    db = tmp_path / "db.lancedb"
    s = ingest(f"{tmp_path / 'src.lancedb'}::raw", db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert s.ok == 6
    t = {r["id"]: r for r in _table(db).to_pylist()}
    assert set(t) == {r["id"] for r in rows} and t["im001"]["label"] == "green"
    assert WORDS[t["im002"]["concept_ids"][0]] == "blue"
    # a .lance directory with a uri column (absolute paths), content ids, into another table
    s = ingest(tmp_path / "src.lancedb" / "byuri.lance", db, table="byuri", model=enc, vocab=vocab, workers=0,
               quiet=True)
    assert s.ok == 6
    t2 = _table(db, "byuri").to_pylist()
    assert sorted(r["embedding"][0] for r in t2) == pytest.approx(sorted(r["embedding"][0] for r in t.values()))
    assert ImageStore(db, "byuri").postings_name == "byuri_image_concepts"


def test_limit_then_resume_exactly_once(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=20)
    man = write_csv(root / "m.csv", rows)
    db = tmp_path / "db.lancedb"
    s1 = ingest(man, db, model=enc, vocab=vocab, batch_size=4, limit=7, workers=0, quiet=True)
    assert s1.ok == 7 and s1.total == 7
    s2 = ingest(man, db, model=enc, vocab=vocab, batch_size=4, workers=0, quiet=True)
    assert (s2.ok, s2.skipped) == (13, 7)
    t = _check_consistent(db)
    assert sorted(r["id"] for r in t) == sorted(r["id"] for r in rows)


def test_refuses_other_model_and_vocabulary(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=6)
    man = write_csv(root / "m.csv", rows)
    db = tmp_path / "db.lancedb"
    ingest(man, db, model=enc, vocab=vocab, limit=3, workers=0, quiet=True)
    with pytest.raises(InputError, match="different models"):
        ingest(man, db, model=FakeEncoder(seed=1), vocab=vocab, workers=0, quiet=True)
    other = Vocabulary(WORDS[:8], name="fewer")
    with pytest.raises(InputError, match="new-concept-version"):
        ingest(man, db, model=enc, vocab=other, workers=0, quiet=True)
    with pytest.raises(InputError, match="l1_penalty"):
        ingest(man, db, model=enc, vocab=vocab, l1=0.5, workers=0, quiet=True)
    assert len(_table(db)) == 3  # nothing was written by the refused runs
    # explicitly asked: existing rows are re-decomposed, then the rest is appended with the new vocabulary
    s = ingest(man, db, model=enc, vocab=other, workers=0, quiet=True, new_concept_version=True)
    assert s.ok == 3 and any("concept version 2" in n for n in s.notes)
    meta = read_metadata(db)
    assert meta["vocabulary_digest"] == other.digest and meta["concept_version"] == 2
    t = _check_consistent(db)
    assert all(max(r["concept_ids"]) < 8 for r in t)
    assert ImageStore(db).conn.open_table("concepts").count_rows() == 8


def test_decompose_table_new_version(tmp_path, enc, vocab):
    from lance_concepts.concepts.splice import SpliceDecomposer

    root, rows = make_dataset(tmp_path, n=15)
    db = tmp_path / "db.lancedb"
    ingest(write_csv(root / "m.csv", rows + [{**rows[0], "id": "bad", "uri": "missing.png"}]), db, model=enc,
           vocab=vocab, workers=0, quiet=True)
    before = {r["id"]: r for r in _table(db).to_pylist()}
    v_before = ImageStore(db).table.version
    d = decompose_table(db, vocab, l1=0.05, encoder=enc, quiet=True)
    assert d.rows == 15 and d.concept_version == 2
    after = {r["id"]: r for r in _check_consistent(db)}
    assert after["bad"]["status"] == "error" and after["bad"]["concept_ids"] is None
    # embeddings untouched, weights are those of the reference decomposer at the new l1
    meta = read_metadata(db)
    dec = SpliceDecomposer(vocab.embed(enc), image_mean=np.array(meta["image_mean"], np.float32),
                           l1_penalty=0.05).fit()
    ids = [i for i in after if after[i]["status"] == "ok"]
    W = dec.decompose(np.array([after[i]["embedding"] for i in ids], np.float32)).toarray()
    for i, w in zip(ids, W):
        assert after[i]["embedding"] == before[i]["embedding"]
        dense = np.zeros(len(vocab), np.float32)
        dense[after[i]["concept_ids"]] = after[i]["concept_weights"]
        np.testing.assert_allclose(dense, w, atol=1e-6)
    assert np.mean([after[i]["l0"] for i in ids]) > np.mean([before[i]["l0"] for i in ids])  # smaller l1: denser
    # the report aggregates were rebuilt for the new weights: they describe the table as it now is
    from lance_concepts.query.crosstab import concept_crosstab
    from lance_concepts.query.connection import connect

    con = connect(str(db))
    ct = concept_crosstab(con, "label")
    assert ct.engine == "rollup"
    want = {lab: sum(1 for r in after.values() if r["label"] == lab and r["concept_ids"] is not None)
            for lab in ct.groups}
    assert dict(zip(ct.groups, ct.n.tolist())) == want and sum(want.values()) == 15
    present = {lab: np.zeros(len(vocab), int) for lab in ct.groups}
    for r in after.values():
        if r["concept_ids"]:
            present[r["label"]][r["concept_ids"]] += 1
    for g, lab in enumerate(ct.groups):
        np.testing.assert_array_equal(ct.present[g], present[lab])
    con.close()
    assert meta["l1_penalty"] == 0.05 and meta["concept_version"] == 2
    hist = meta["concept_history"][-1]
    assert hist["l1_penalty"] == 0.25 and hist["concept_version"] == 1
    # the previous concept version is still readable through Lance time travel
    old = ImageStore(db).table.to_lance().checkout_version(hist["lance_version"]).to_table().to_pylist()
    assert {r["id"]: r["concept_ids"] for r in old} == {i: before[i]["concept_ids"] for i in before}
    assert v_before <= hist["lance_version"]
    # wrong model: refused
    with pytest.raises(InputError, match="fingerprint"):
        decompose_table(db, vocab, 0.1, encoder=FakeEncoder(seed=3), quiet=True)


def test_bad_sources_are_input_errors(tmp_path, enc, vocab):
    db = tmp_path / "db.lancedb"
    with pytest.raises(InputError, match="does not exist"):
        ingest(tmp_path / "nope", db, model=enc, vocab=vocab, quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ingest(tmp_path / "empty", db, model=enc, vocab=vocab, quiet=True)
    (tmp_path / "m.csv").write_text("label,other\na,b\n")
    with pytest.raises(InputError, match="no image uri/path column"):
        ingest(tmp_path / "m.csv", db, model=enc, vocab=vocab, quiet=True)
    (tmp_path / "m2.csv").write_text("uri,status\na.png,x\n")
    with pytest.raises(InputError, match="collides"):
        ingest(tmp_path / "m2.csv", db, model=enc, vocab=vocab, quiet=True)
    (tmp_path / "m.xml").write_text("<a/>")
    with pytest.raises(InputError, match="unsupported manifest"):
        ingest(tmp_path / "m.xml", db, model=enc, vocab=vocab, quiet=True)
    with pytest.raises(InputError, match="batch_size"):
        ingest(tmp_path / "m.csv", db, model=enc, vocab=vocab, batch_size=0, quiet=True)


def test_all_failed_exit_code_and_no_vocab(tmp_path, enc):
    (tmp_path / "a.jpg").write_text("text")
    (tmp_path / "b.png").write_bytes(b"")
    db = tmp_path / "db.lancedb"
    s = ingest(tmp_path, db, model=enc, vocab=None, workers=0, quiet=True)
    assert (s.ok, s.errors, s.exit_code) == (0, 2, 1)
    assert "cannot identify image file" in str(s) and "empty file" in str(s)
    _check_consistent(db)
    # embeddings only (vocab=None): concept columns null, metadata says so
    root, rows = make_dataset(tmp_path / "d", n=3)
    s = ingest(write_csv(root / "m.csv", rows), tmp_path / "db2.lancedb", model=enc, vocab=None, workers=0,
               quiet=True)
    assert s.ok == 3 and s.exit_code == 0
    t = _table(tmp_path / "db2.lancedb").to_pylist()
    assert all(r["embedding"] is not None and r["concept_ids"] is None for r in t)
    assert read_metadata(tmp_path / "db2.lancedb")["vocabulary_digest"] is None


def test_process_workers_and_threads_agree(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=16)
    man = write_csv(root / "m.csv", rows)
    out = {}
    for name, kw in {"inline": dict(workers=0), "proc": dict(workers=2),
                     "thread": dict(workers=2, worker_type="thread")}.items():
        db = tmp_path / f"{name}.lancedb"
        s = ingest(man, db, model=enc, vocab=vocab, batch_size=5, quiet=True, **kw)
        assert s.ok == 16
        out[name] = {r["id"]: r["embedding"] for r in _table(db).to_pylist()}
    assert out["inline"] == out["proc"] == out["thread"]


def test_concurrent_ingests_into_one_table(tmp_path, enc, vocab):
    import threading

    root, rows = make_dataset(tmp_path, n=24)
    man_a = write_csv(root / "a.csv", rows[:16])
    man_b = write_csv(root / "b.csv", rows[8:])
    db = tmp_path / "db.lancedb"
    ingest(man_a, db, model=enc, vocab=vocab, limit=2, workers=0, quiet=True)  # fix mean + metadata first
    results, errors = [], []

    def run(man):
        try:
            results.append(ingest(man, db, model=enc, vocab=vocab, batch_size=3, workers=0, quiet=True))
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    th = [threading.Thread(target=run, args=(m,)) for m in (man_a, man_b)]
    [t.start() for t in th]
    [t.join() for t in th]
    assert not errors, errors
    t = _check_consistent(db)
    assert sorted(r["id"] for r in t) == sorted(r["id"] for r in rows)
    assert sum(r.ok for r in results) == 22  # every image was written by exactly one of the two runs


def test_cli_ingest_and_decompose(tmp_path, enc, vocab, monkeypatch):
    from click.testing import CliRunner

    from lance_concepts.cli import main
    from lance_concepts.lake import decompose as decompose_module
    from lance_concepts.lake import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "resolve_encoder", lambda *a, **k: enc)
    monkeypatch.setattr(decompose_module, "resolve_encoder", lambda *a, **k: enc)
    vfile = tmp_path / "v.txt"
    vfile.write_text("\n".join(WORDS) + "\n")
    root, rows = make_dataset(tmp_path, n=6)
    man = write_csv(root / "m.csv", rows + [{**rows[0], "id": "gone", "uri": "gone.png"}])
    db = str(tmp_path / "db.lancedb")
    r = CliRunner().invoke(main, ["ingest", str(man), "--db", db, "--vocab", str(vfile), "--workers", "0",
                                  "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["ok"] == 6 and summary["errors"] == 1 and summary["exit_code"] == 0
    r = CliRunner().invoke(main, ["ingest", str(man), "--db", db, "--vocab", "demo", "--quiet"])
    assert r.exit_code == 2 and "new-concept-version" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_text("nope")
    r = CliRunner().invoke(main, ["ingest", str(bad), "--db", str(tmp_path / "db2.lancedb"), "--vocab", "none",
                                  "--workers", "0", "--quiet"])
    assert r.exit_code == 1 and "error 1" in r.output
    r = CliRunner().invoke(main, ["decompose", "--db", db, "--vocab", str(vfile), "--l1", "0.1", "--quiet"])
    assert r.exit_code == 0 and "concept version 2" in r.output, r.output
    r = CliRunner().invoke(main, ["ingest", str(tmp_path / "missing"), "--db", db, "--quiet"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_open_source_time_parsing(tmp_path):
    (tmp_path / "m.csv").write_text(
        "uri,created_at,when,note\n"
        "a.png,2024-03-01T10:00:00+02:00,2024-03-01,x\n"
        "b.png,2024-03-02T10:00:00Z,,y\n")
    src = open_source(tmp_path / "m.csv")
    t = src.table
    assert t.schema.field("created_at").type == pa.timestamp("us")
    assert t.column("created_at").to_pylist()[0].hour == 8  # converted to UTC
    assert t.schema.field("when").type == pa.timestamp("us")
    assert t.column("when").to_pylist()[1] is None
    assert t.schema.field("note").type == pa.string()


def test_demo_world_with_demo_model(tmp_path):
    """The path the `demo` command takes: a generated demo-world manifest, the demo model, offline."""
    from lance_concepts.models import demo_model
    from lance_concepts.demo import world as demo_world

    if not demo_model.demo_weights_path().is_file():
        pytest.skip("demo model weights not built yet")
    man = demo_world.generate_dataset(tmp_path / "world", n=24, seed=1)
    db = tmp_path / "demo.lancedb"
    s = ingest(str(man), str(db), model="demo", vocab="demo", quiet=True)
    assert (s.ok, s.errors, s.exit_code) == (24, 0, 0)
    t = _check_consistent(db)
    truth = {r["id"]: r for r in demo_world.read_manifest(man)}
    assert {r["id"] for r in t} == set(truth)
    sch = _table(db).schema
    assert sch.field("timestamp").type == pa.timestamp("us") and sch.field("label").type == pa.string()
    for r in t:
        assert r["label"] == truth[r["id"]]["label"] and r["split"] == truth[r["id"]]["split"]
        assert r["l0"] > 0 and 0 < r["splice_cosine"] <= 1
    meta = read_metadata(db)
    assert meta["model_name"] == "demo" and meta["vocabulary"] == "demo" and meta["image_root"] == str(man.parent)


def test_encoder_threads_apply_to_the_run_only(tmp_path, enc, vocab):
    import torch

    seen = []

    class Recording(type(enc)):
        def encode_images(self, x):
            seen.append(torch.get_num_threads())
            return super().encode_images(x)

    root, rows = make_dataset(tmp_path, n=10)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = ingest(write_csv(root / "m.csv", rows), tmp_path / "db.lancedb", model=Recording(), vocab=vocab,
                   batch_size=4, workers=0, quiet=True, encoder_threads=1)
        assert s.ok == 10 and seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InputError, match="encoder_threads"):
        ingest(write_csv(root / "m.csv", rows), tmp_path / "db2.lancedb", model=enc, vocab=vocab, quiet=True,
               encoder_threads=0)


def test_report_aggregates_after_ingest(tmp_path, enc, vocab, monkeypatch):
    """ingest ends by rebuilding the rollup, unless nothing changed (kept as is), the caller said no,
    or (auto) a large table barely changed: then the summary says so and the reports scan."""
    import lance

    from lance_concepts.lake import rollup as rollup_module
    from lance_concepts.query.crosstab import concept_crosstab
    from lance_concepts.query.connection import connect

    def engine(db):
        con = connect(str(db))
        try:
            return concept_crosstab(con, "label").engine
        finally:
            con.close()

    root, rows = make_dataset(tmp_path, n=24)
    db = tmp_path / "db.lancedb"
    kw = dict(model=enc, vocab=vocab, workers=0, quiet=True)
    ingest(write_csv(root / "a.csv", rows[:20]), db, **kw)
    assert engine(db) == "rollup"
    version = lance.dataset(str(db / "images_rollup.lance")).version
    s = ingest(write_csv(root / "a.csv", rows[:20]), db, **kw)  # nothing new: the rollup is current, kept
    assert s.skipped == 20 and lance.dataset(str(db / "images_rollup.lance")).version == version
    # auto with a "large" table (thresholds lowered): 2 new rows of 22 are under the share
    monkeypatch.setattr(rollup_module, "ROLLUP_AUTO_ROWS", 10)
    monkeypatch.setattr(rollup_module, "ROLLUP_MIN_SHARE", 0.5)
    s = ingest(write_csv(root / "b.csv", rows[:22]), db, **kw)
    assert s.ok == 2 and any("not rebuilt" in n and "lance-concepts rollup" in n for n in s.notes), s.notes
    assert engine(db) == "lance"  # stale: the reports scan, and count the new rows
    s = ingest(write_csv(root / "c.csv", rows[:23]), db, rollup=True, **kw)  # asked for: rebuilt
    assert engine(db) == "rollup" and not any("not rebuilt" in n for n in s.notes)
    ingest(write_csv(root / "d.csv", rows), db, rollup=False, **kw)
    assert engine(db) == "lance"


def test_decompose_to_a_target_sparsity(tmp_path, enc, vocab):
    """target_l0 picks the l1 whose decompositions have that median number of concepts, and records it."""
    root, rows = make_dataset(tmp_path, n=30)
    db = tmp_path / "db.lancedb"
    ingest(write_csv(root / "m.csv", rows), db, model=enc, vocab=vocab, workers=0, quiet=True)
    for target in (2, 5):
        decompose_table(db, vocab, table="images", encoder=enc, target_l0=target, quiet=True)
        meta = read_metadata(db)
        l0 = ImageStore(db).table.to_arrow().column("l0").to_numpy()
        assert meta["target_l0"] == target
        assert abs(float(np.median(l0)) - target) <= 1, (target, np.median(l0), meta["l1_penalty"])
    assert meta["l1_penalty"] != 0.25
