"""Issue 18 (ingest side): a real user's first hour with a plain photo folder.

Ground truth is planted: class folders and EXIF capture times written by tests/photo_tree.py, byte-identical
copies, a latin-1 file name, a 1 x 20,000 PNG, an existing table's own settings.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lance_concepts.cli import main
from lance_concepts.concepts.vocabulary import Vocabulary
from lance_concepts.errors import InputError
from lance_concepts.lake.decode import read_location
from lance_concepts.lake.ingest import ingest
from lance_concepts.lake.store import ImageStore

from .photo_tree import build_photo_tree, write_with_exif
from .test_ingest import _check_consistent, make_dataset, write_csv
from .test_ingest_fakes import WORDS, FakeEncoder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "imagenet-sample"


@pytest.fixture(scope="module")
def enc():
    return FakeEncoder()


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(WORDS, name="colours")


def _rows(db):
    return ImageStore(db).table.to_arrow().to_pylist()


def _solid(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


# ------------------------------------------------------------------------------ 2. folder metadata
def test_folder_records_label_split_exif_time_and_mtime(tmp_path, enc, vocab):
    root = tmp_path / "photos"
    planted = {  # relative path -> (label, split, EXIF DateTimeOriginal, offset, expected UTC)
        "train/dog/a.jpg": ("dog", "train", datetime(2024, 3, 1, 14, 0), "+02:00", datetime(2024, 3, 1, 12, 0)),
        "train/cat/b.jpg": ("cat", "train", datetime(2024, 5, 2, 9, 30), None, datetime(2024, 5, 2, 9, 30)),
        "val/cat/c.jpg": ("cat", "val", datetime(2024, 7, 3, 0, 15), "-05:00", datetime(2024, 7, 3, 5, 15)),
        "loose.jpg": (None, None, None, None, None),
    }
    for i, (rel, (_, _, taken, off, _)) in enumerate(planted.items()):
        write_with_exif(_solid((40 * i, 80, 160)), root / rel, taken, off)
        os.utime(root / rel, (1_700_000_000 + i * 86400,) * 2)
    db = tmp_path / "db"
    s = ingest(root, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert s.ok == 4
    got = {r["uri"]: r for r in _rows(db)}
    for rel, (label, split, _, _, utc) in planted.items():
        r = got[rel]
        assert (r["label"], r["split"], r["taken_at"]) == (label, split, utc), rel
    assert got["train/cat/b.jpg"]["modified_at"] == datetime.utcfromtimestamp(1_700_000_000 + 86400)
    # turned off: no label / split columns (CLI --no-label-from-folder)
    db2 = tmp_path / "db2"
    res = CliRunner().invoke(main, ["ingest", str(root), "--db", str(db2), "--model", "demo", "--vocab", "demo",
                                    "--no-label-from-folder", "--workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    names = ImageStore(db2).schema.names
    assert "label" not in names and "split" not in names and "taken_at" in names and "modified_at" in names


# ------------------------------------------------------------------------------ 3. identical bytes
def test_manifest_rows_with_identical_bytes_all_kept_with_metadata(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=4)
    data = (root / rows[0]["uri"]).read_bytes()
    (root / "imgs" / "copy.png").write_bytes(data)
    extra = [{**rows[0], "id": "", "uri": "imgs/copy.png", "label": "copy-label"},
             {**rows[1], "id": "", "uri": rows[1]["uri"], "label": "listed-twice"}]
    man = write_csv(root / "m.csv", [{**r, "id": ""} for r in rows] + extra)
    db = tmp_path / "db"
    s = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s.ok, s.duplicates) == (6, 0)
    t = _check_consistent(db)
    assert sorted(r["label"] for r in t) == sorted([r["label"] for r in rows] + ["copy-label", "listed-twice"])
    sha = hashlib.sha256(data).hexdigest()
    assert {r["label"] for r in t if r["content_sha256"] == sha} == {rows[0]["label"], "copy-label"}
    again = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (again.ok, again.skipped, again.duplicates) == (0, 6, 0)


def test_table_keyed_by_content_still_appends(tmp_path, enc, vocab):
    """A table written before uri keys (id_source 'sha256 of the file content') keeps its id rule."""
    root, rows = make_dataset(tmp_path, n=4)
    db = tmp_path / "db"
    ingest(root / "imgs", db, model=enc, vocab=vocab, workers=0, quiet=True, limit=2)
    store = ImageStore(db)
    # rewrite it as the old code wrote it: ids = first 32 hex of the content hash
    old = store.table.to_arrow()
    import pyarrow as pa
    ids = [hashlib.sha256((root / "imgs" / u).read_bytes()).hexdigest()[:32] for u in old.column("uri").to_pylist()]
    store.table.delete("true")
    store.table.add(old.set_column(0, "id", pa.array(ids, pa.string())))
    store.write_metadata({**store.metadata(), "id_source": "sha256 of the file content"})
    s = ingest(root / "imgs", db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s.ok, s.skipped) == (2, 2)
    got = sorted(r["id"] for r in _rows(db))
    assert got == sorted(hashlib.sha256((root / r["uri"]).read_bytes()).hexdigest()[:32] for r in rows)


# ------------------------------------------------------------------------------ 4. non-UTF-8 names
def test_latin1_file_name_becomes_a_row_with_a_lossless_uri(tmp_path, enc, vocab):
    root = tmp_path / "photos"
    root.mkdir()
    _solid((200, 10, 10)).save(root / "ok.png")
    raw = os.path.join(os.fsencode(root), b"caf\xe9.png")
    with open(raw, "wb") as f:
        _solid((10, 200, 10)).save(f, "PNG")
    db = tmp_path / "db"
    s = ingest(root, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s.ok, s.errors) == (2, 0)
    uris = {r["uri"] for r in _rows(db)}
    odd = next(u for u in uris if u != "ok.png")
    assert odd.startswith("file://") and odd.endswith("caf%E9.png")
    with open(raw, "rb") as f:
        assert read_location(None, odd) == f.read()  # the uri names exactly those bytes


# ------------------------------------------------------------------------------ 5. aspect-ratio bomb
def test_aspect_ratio_bomb_is_an_error_row_quoting_max_pixels(tmp_path, enc, vocab):
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("L", (1, 20_000), 128).save(root / "thin.png")
    _solid((1, 2, 3)).save(root / "fine.png")
    Image.new("L", (300, 300), 1).save(root / "big.png")
    db = tmp_path / "db"
    s = ingest(root, db, model=enc, vocab=vocab, workers=0, quiet=True, max_pixels=50_000)
    assert (s.ok, s.errors) == (1, 2)
    err = {r["uri"]: r["error"] for r in _rows(db) if r["status"] == "error"}
    assert "after preprocessing" in err["thin.png"] and "max_pixels 50,000" in err["thin.png"]
    assert "max_pixels 50,000" in err["big.png"] and "90,000 pixels" in err["big.png"]


# ------------------------------------------------------------------------------ 8. unwritable db
def test_unwritable_db_refused_before_loading_the_model(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    _solid((1, 2, 3)).save(root / "a.png")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for db in (a_file, a_file / "sub.lancedb"):
        # a model that cannot load: the check must come first
        res = CliRunner().invoke(main, ["ingest", str(root), "--db", str(db), "--model", "no-such-model"])
        assert res.exit_code == 2 and "a file" in res.output and "Traceback" not in res.output, res.output
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        res = CliRunner().invoke(main, ["ingest", str(root), "--db", str(ro / "db"), "--model", "no-such-model"])
        assert res.exit_code == 2 and "not writable" in res.output


# ------------------------------------------------------------------------------ 9. table defaults
def test_append_uses_the_tables_settings(tmp_path):
    root, rows = make_dataset(tmp_path, n=4)
    first = write_csv(tmp_path / "first.csv", [{**r, "uri": str(root / r["uri"])} for r in rows[:2]])
    more = write_csv(tmp_path / "more.csv", [{**r, "uri": str(root / r["uri"])} for r in rows[2:]])
    db = tmp_path / "demo2.lancedb"
    assert ingest(first, db, model="demo", vocab="demo", l1=0.1, workers=0, quiet=True).ok == 2
    s = ingest(more, db, workers=0, quiet=True)  # no model / vocab / l1: the table's (not ViT-B-32)
    assert s.ok == 2 and s.model.startswith("demo")
    meta = ImageStore(db).metadata()
    assert meta["vocabulary"] == "demo" and meta["l1_penalty"] == pytest.approx(0.1)
    with pytest.raises(InputError, match="l1_penalty"):
        ingest(write_csv(tmp_path / "x.csv", [{**rows[0], "id": "x", "uri": str(root / rows[0]["uri"])}]), db,
               l1=0.3, workers=0, quiet=True)


# ------------------------------------------------------------------------------ 13. empty uri cell
def test_empty_manifest_uri_reported_as_empty(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=2)
    man = write_csv(root / "m.csv", rows + [{**rows[0], "id": "blank", "uri": ""}])
    db = tmp_path / "db"
    s = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s.ok, s.errors) == (2, 1)
    err = next(r["error"] for r in _rows(db) if r["id"] == "blank")
    assert "empty uri" in err and "directory" not in err


# ------------------------------------------------------------------------------ 2. the README tour
def _tour_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## A tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [ln.split("  #", 1)[0].strip() for ln in block.splitlines() if ln.strip().startswith("lance-concepts")]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets/imagenet-sample is not here")
def test_readme_tour_runs_verbatim_on_a_photo_folder(tmp_path):
    build_photo_tree(SHARED, tmp_path / "photos", n=60, classes=3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for cmd in _tour_commands():
        argv = shlex.split(cmd)
        if argv[1] == "ingest":  # the tour shows the default model; offline, the demo model (only addition)
            argv += ["--model", "demo"]
        run = [sys.executable, "-c", "from lance_concepts.cli import main; main()", *argv[1:]]
        res = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert (tmp_path / "drift.png").stat().st_size > 0 and (tmp_path / "report.html").stat().st_size > 0


# ------------------------------------------------------------------------------ 13. quiet first ingest
def test_first_ingest_prints_no_rust_warning_or_none_pretrained(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    _solid((200, 10, 10)).save(root / "a.png")
    code = "from lance_concepts.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", code, "ingest", str(root), "--db", str(tmp_path / "db"), "--model",
                          "demo", "--vocab", "demo", "--workers", "0", "--quiet"],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "WARN" not in out and "(None" not in out, out


# ------------------------------------------------------------------------------ 7b. kill -9 of the parent
def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decode_workers_exit_when_the_ingest_is_killed(tmp_path):
    import signal
    import time

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
    proc = subprocess.Popen([sys.executable, "-c", "from lance_concepts.cli import main; main()", "ingest", str(root),
                             "--db", str(tmp_path / "db"), "--model", "demo", "--vocab", "demo", "--workers", "2",
                             "--quiet"], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "the decode workers never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        left = [w for w in workers if _alive(w)]
        for w in left:  # do not leave them behind even when the test fails
            os.kill(w, signal.SIGKILL)
        assert not left, f"decode workers {left} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------ 7. Ctrl-C
def _noise_folder(root: Path, n: int) -> Path:
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
    return root


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
def test_sigint_stops_with_130_and_the_rerun_completes(tmp_path):
    import signal
    import time

    root = _noise_folder(tmp_path / "photos", 120)
    cmd = [sys.executable, "-c", "from lance_concepts.cli import main; main()", "ingest", str(root), "--model", "demo",
           "--vocab", "demo", "--workers", "2", "--batch-size", "16", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for k, delay in enumerate([0.5, 3.0, 6.0, 10.0]):  # importing, loading, while decoding, while committing batches
        db = tmp_path / f"db{k}"
        p = subprocess.Popen([*cmd, "--db", str(db)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        if p.poll() is not None:
            continue  # finished before the signal: nothing to interrupt at this moment
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGINT)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"SIGINT after {delay}s: still running 30 s later")
        # 130, or death by SIGINT itself (-2: still importing, before the CLI runs; a shell shows 130 too)
        assert p.returncode in (130, -signal.SIGINT), f"SIGINT after {delay}s: exit {p.returncode}\n{err[-1500:]}"
        assert time.monotonic() - t0 < 15
        again = subprocess.run([*cmd, "--db", str(db)], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-1500:]
        t = _check_consistent(db)
        assert sorted(r["uri"] for r in t) == sorted(f"{i:04d}.png" for i in range(120))


def test_rerun_with_nothing_new_rebuilds_stale_aggregates(tmp_path, enc, vocab):
    """A run interrupted after its last commit but before the rollup: the next run brings it up to date."""
    from lance_concepts.lake.rollup import is_current, rollup_table_name
    from lance_concepts.lake.store import table_names

    root, rows = make_dataset(tmp_path, n=6)
    db = tmp_path / "db"
    ingest(root / "imgs", db, model=enc, vocab=vocab, workers=0, quiet=True, rollup=False)  # "interrupted"
    store = ImageStore(db)
    assert rollup_table_name("images") not in table_names(store.conn)
    s = ingest(root / "imgs", db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert s.ok == 0 and s.skipped == 6
    store = ImageStore(db)
    assert is_current(store.table.to_lance(), store.conn.open_table(rollup_table_name("images")).to_lance())
