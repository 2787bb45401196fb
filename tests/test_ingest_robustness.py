"""Bad and unusual inputs, crashes and kills: each bad row becomes status='error' with a reason, the job
goes on, and a run killed with SIGKILL and re-run leaves every image exactly once."""
from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lance_concepts.lake import decode as decode_module
from lance_concepts.lake.decode import ImageDecodeError, decode_image
from lance_concepts.lake.ingest import ingest
from lance_concepts.lake.store import ImageStore
from lance_concepts.concepts.vocabulary import Vocabulary

from .test_ingest import _check_consistent, make_dataset, write_csv
from .test_ingest_fakes import WORDS, CrashingEncoder, FakeEncoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def enc():
    return FakeEncoder()


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(WORDS, name="colours")


# ----------------------------------------------------------------------------------- file makers
def _png_bytes(im) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()


def _noise(size=32, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed): a decompression bomb header."""
    d = bytearray(_png_bytes(Image.new("RGB", (1, 1), (1, 2, 3))))
    assert d[12:16] == b"IHDR"
    d[16:24] = struct.pack(">II", width, height)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
    return bytes(d)


def corrupt_png() -> bytes:
    d = bytearray(_png_bytes(_noise()))
    i = d.find(b"IDAT")
    for k in range(i + 20, i + 60):
        d[k] ^= 0x5A
    return bytes(d)


def truncated_jpeg() -> bytes:
    b = io.BytesIO()
    _noise(64).save(b, "JPEG", quality=90)
    return b.getvalue()[: len(b.getvalue()) // 2]


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20: left half red, right half blue; EXIF orientation 6 (display rotated 90 deg clockwise)."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    ex = Image.Exif()
    ex[0x0112] = 6
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", exif=ex, quality=95)
    return b.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return b.getvalue()


def palette_with_transparency() -> bytes:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.paste(1, (8, 0, 16, 16))  # right half: palette entry 1 (blue); left half: entry 0 (transparent black)
    b = io.BytesIO()
    im.save(b, "PNG", transparency=0)
    return b.getvalue()


def rgba_half_transparent() -> bytes:
    a = np.zeros((16, 16, 4), np.uint8)
    a[:, :8] = (255, 0, 0, 0)  # transparent (its red must not show)
    a[:, 8:] = (0, 0, 255, 255)
    return _png_bytes(Image.fromarray(a, "RGBA"))


def grey16(value=32768) -> bytes:
    return _png_bytes(Image.fromarray(np.full((16, 16), value, np.uint16)))


def cmyk_red_jpeg() -> bytes:
    b = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(b, "JPEG", quality=95)
    return b.getvalue()


BAD = {
    "corrupt.png": (corrupt_png, "corrupt image"),
    "truncated.jpg": (truncated_jpeg, "truncated"),
    "empty.jpg": (lambda: b"", "empty file"),
    "text.jpg": (lambda: b"this is a text file, not a JPEG\n", "text, not an image"),
    "random.png": (lambda: np.random.default_rng(1).bytes(500), "not a recognised image format"),
    "bomb.png": (lambda: png_claiming_size(100_000, 100_000), "image too large"),
}
GOOD = {
    "cmyk.jpg": cmyk_red_jpeg,
    "grey16.png": grey16,
    "palette.png": palette_with_transparency,
    "rgba.png": rgba_half_transparent,
    "anim.gif": animated_gif,
    "exif.jpg": exif_rotated_jpeg,
    "bw.png": lambda: _png_bytes(Image.new("1", (16, 16), 1)),
    "la.png": lambda: _png_bytes(Image.new("LA", (16, 16), (200, 255))),
    "café ☕ 日本語.png": lambda: _png_bytes(Image.new("RGB", (16, 16), (0, 255, 0))),
}


def _write_files(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in BAD.items():
        (root / name).write_bytes(make())
    for name, make in GOOD.items():
        (root / name).write_bytes(make())
    return root


# ----------------------------------------------------------------------------------- decoding unit tests
def test_decode_conversions_are_faithful():
    im = decode_image(exif_rotated_jpeg())
    assert im.size == (20, 40)  # EXIF orientation honoured: portrait
    top, bottom = np.asarray(im)[2, 10], np.asarray(im)[37, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # left (red) went to the top
    g = np.asarray(decode_image(grey16(32768)))
    assert g.shape == (16, 16, 3) and abs(int(g.mean()) - 128) <= 1  # scaled, not clipped to white
    assert np.asarray(decode_image(grey16(65535))).min() == 255
    pal = np.asarray(decode_image(palette_with_transparency()))
    assert (pal[:, :8] == 255).all() and tuple(pal[0, 12]) == (0, 0, 255)  # transparency -> white
    rgba = np.asarray(decode_image(rgba_half_transparent()))
    assert (rgba[:, :8] == 255).all() and tuple(rgba[0, 12]) == (0, 0, 255)
    frame = np.asarray(decode_image(animated_gif()))
    assert frame[..., 0].mean() > 200 and frame[..., 2].mean() < 50  # the first frame (red)
    cmyk = np.asarray(decode_image(cmyk_red_jpeg())).mean(axis=(0, 1))
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60
    assert decode_image(_png_bytes(Image.new("1", (4, 4), 1))).mode == "RGB"
    f = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F")
    b = io.BytesIO()
    f.save(b, "TIFF")
    fa = np.asarray(decode_image(b.getvalue()))
    assert fa.min() == 0 and fa.max() == 255


@pytest.mark.parametrize("name", sorted(BAD))
def test_decode_errors_have_reasons(name):
    make, reason = BAD[name]
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(make())


def test_decompression_bomb_limit_is_configurable():
    data = _png_bytes(_noise(64))
    assert decode_image(data).size == (64, 64)
    with pytest.raises(ImageDecodeError, match="too large.*--max-pixels"):
        decode_image(data, max_pixels=1000)
    old = Image.MAX_IMAGE_PIXELS
    try:  # a limit between Pillow's warning and error thresholds is an error too, not a warning
        Image.MAX_IMAGE_PIXELS = 3000
        with pytest.raises(ImageDecodeError, match="too large"):
            decode_image(data, max_pixels=None)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_draft_decoding_keeps_size_and_colours():
    a = np.zeros((400, 600, 3), np.uint8)
    a[:, :300] = (255, 0, 0)
    a[:, 300:] = (0, 0, 255)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=95)
    full, fast = decode_image(b.getvalue()), decode_image(b.getvalue(), draft=64)
    assert full.size == (600, 400) and min(fast.size) >= 64 and fast.size[0] < 600
    assert np.allclose(np.asarray(full.resize((150, 100))).mean((0, 1)), np.asarray(fast.resize((150, 100))).mean((0, 1)),
                       atol=3)


# ----------------------------------------------------------------------------------- whole runs
def test_directory_with_bad_and_odd_files(tmp_path, enc, vocab):
    root = _write_files(tmp_path / "imgs")
    (root / "sub.png").mkdir()  # a directory with an image extension
    db = tmp_path / "db.lancedb"
    old_limit = Image.MAX_IMAGE_PIXELS
    s = ingest(root, db, model=enc, vocab=vocab, workers=1, batch_size=4, quiet=True)
    assert Image.MAX_IMAGE_PIXELS == old_limit  # the global limit is restored
    assert s.ok == len(GOOD) and s.errors == len(BAD) and s.exit_code == 0
    rows = {r["uri"]: r for r in _check_consistent(db)}
    for name, (_, reason) in BAD.items():
        assert rows[name]["status"] == "error" and reason in rows[name]["error"], (name, rows[name]["error"])
    for name in GOOD:
        assert rows[name]["status"] == "ok", (name, rows[name]["error"])
    assert "café ☕ 日本語.png" in rows  # unicode path kept as written
    text = str(s)
    assert "error 6" in text and "image too large" in text and "e.g." in text
    # re-run: bad rows are "there" and skipped; --retry-errors re-attempts them (still failing)
    s2 = ingest(root, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s2.ok, s2.errors, s2.skipped) == (0, 0, len(GOOD) + len(BAD))
    s3 = ingest(root, db, model=enc, vocab=vocab, workers=0, quiet=True, retry_errors=True)
    assert s3.errors == len(BAD) and s3.skipped == len(GOOD)
    assert len(_check_consistent(db)) == len(GOOD) + len(BAD)


def test_retry_errors_after_fixing_files(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=4)
    good = (root / rows[1]["uri"]).read_bytes()
    (root / rows[1]["uri"]).write_bytes(b"")  # broken for now
    man = write_csv(root / "m.csv", rows + [{**rows[0], "id": "late", "uri": "imgs/late.png"}])
    db = tmp_path / "db.lancedb"
    s = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True)
    assert (s.ok, s.errors) == (3, 2)
    (root / rows[1]["uri"]).write_bytes(good)  # fixed
    (root / "imgs" / "late.png").write_bytes(good)  # arrived
    s = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True, retry_errors=True)
    assert (s.ok, s.errors, s.skipped) == (2, 0, 3)
    t = _check_consistent(db)
    assert len(t) == 5 and all(r["status"] == "ok" for r in t)
    # content ids (directory source): the uri-keyed error row is replaced by the content-keyed ok row
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.png").write_bytes(b"garbage")
    db2 = tmp_path / "db2.lancedb"
    assert ingest(d, db2, model=enc, vocab=vocab, workers=0, quiet=True).errors == 1
    (d / "a.png").write_bytes(good)
    assert ingest(d, db2, model=enc, vocab=vocab, workers=0, quiet=True, retry_errors=True).ok == 1
    t = _check_consistent(db2)
    assert [(r["uri"], r["status"]) for r in t] == [("a.png", "ok")]


def test_manifest_missing_paths_and_lowered_pixel_limit(tmp_path, enc, vocab):
    root, rows = make_dataset(tmp_path, n=4)
    rows += [{**rows[0], "id": "missing", "uri": "imgs/does_not_exist.png"},
             {**rows[0], "id": "dir", "uri": "imgs"},
             {**rows[0], "id": "", "uri": rows[2]["uri"]}]
    man = write_csv(root / "m.csv", rows)
    db = tmp_path / "db.lancedb"
    s = ingest(man, db, model=enc, vocab=vocab, workers=0, quiet=True, max_pixels=100)  # 12x12 = 144 px: too large
    assert s.ok == 0 and s.errors == 7 and s.exit_code == 1
    got = {r["id"]: r["error"] for r in _check_consistent(db)}
    assert got["missing"].startswith("file not found") and got["dir"].startswith("is a directory")
    assert "too large" in got["im000"]
    s = ingest(man, tmp_path / "db2.lancedb", model=enc, vocab=vocab, workers=0, quiet=True)
    assert s.ok == 5 and s.errors == 2  # the row with an empty id gets a uri-derived id


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not prevent reading (see the simulated test below)")
def test_unreadable_permissions_real(tmp_path, enc, vocab):  # pragma: no cover - not run as root
    root, rows = make_dataset(tmp_path, n=3)
    p = root / rows[0]["uri"]
    p.chmod(0)
    try:
        s = ingest(write_csv(root / "m.csv", rows), tmp_path / "db.lancedb", model=enc, vocab=vocab, workers=0,
                   quiet=True)
    finally:
        p.chmod(0o644)
    assert s.ok == 2 and s.errors == 1 and "permission denied" in str(s)


def test_unreadable_permissions_simulated(tmp_path, enc, vocab, monkeypatch):
    """Root can read chmod-000 files, so the open() of one file is made to fail as it would for a user."""
    root, rows = make_dataset(tmp_path, n=3)
    target = str(root / rows[0]["uri"])
    real_open = open

    def guarded_open(path, *a, **k):
        if str(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(decode_module, "open", guarded_open, raising=False)
    s = ingest(write_csv(root / "m.csv", rows), tmp_path / "db.lancedb", model=enc, vocab=vocab, workers=0,
               quiet=True)
    assert s.ok == 2 and s.errors == 1
    row = [r for r in _check_consistent(tmp_path / "db.lancedb") if r["status"] == "error"][0]
    assert row["error"] == f"permission denied: {rows[0]['uri']}"


def test_worker_crash_is_isolated_to_its_image(tmp_path, vocab):
    enc = CrashingEncoder()
    root, rows = make_dataset(tmp_path, n=6)
    Image.new("RGB", (13, 13), (255, 0, 0)).save(root / "imgs" / "killer.png")
    rows.append({**rows[0], "id": "killer", "uri": "imgs/killer.png"})
    db = tmp_path / "db.lancedb"
    s = ingest(write_csv(root / "m.csv", rows), db, model=enc, vocab=vocab, workers=1, batch_size=4, quiet=True)
    assert s.ok == 6 and s.errors == 1
    got = {r["id"]: r for r in _check_consistent(db)}
    assert "decoder crashed" in got["killer"]["error"]


def test_crash_between_postings_and_rows_commit(tmp_path, enc, vocab, monkeypatch):
    """A crash after a batch's postings commit but before its rows commit: the re-run repairs it."""
    root, rows = make_dataset(tmp_path, n=12)
    man = write_csv(root / "m.csv", rows)
    db = tmp_path / "db.lancedb"
    calls = {"n": 0}
    real_align = ImageStore.align

    def dying_align(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch: its postings are committed, its rows never will be
            raise KeyboardInterrupt("simulated crash")
        return real_align(self, batch)

    monkeypatch.setattr(ImageStore, "align", dying_align)
    with pytest.raises(KeyboardInterrupt):
        ingest(man, db, model=enc, vocab=vocab, batch_size=4, workers=0, quiet=True)
    monkeypatch.setattr(ImageStore, "align", real_align)
    s = ImageStore(db)
    assert s.count() == 4
    orphan = set(s.postings.to_arrow().column("image_id").to_pylist()) - set(s.table.to_arrow().column("id")
                                                                               .to_pylist())
    assert orphan  # postings of the crashed batch exist without their rows ...
    ingest(man, db, model=enc, vocab=vocab, batch_size=4, workers=0, quiet=True)
    t = _check_consistent(db)  # ... and after the re-run everything is exactly once and consistent
    assert sorted(r["id"] for r in t) == sorted(r["id"] for r in rows)


def test_sigkill_mid_run_then_resume_exactly_once(tmp_path, vocab):
    """A real SIGKILL of a running ingest (process group, decode workers included), then a re-run."""
    n = 160
    root, rows = make_dataset(tmp_path, n=n)
    man = write_csv(root / "m.csv", rows)
    db = tmp_path / "db.lancedb"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_ingest_fakes import SlowFakeEncoder, WORDS
        from lance_concepts.concepts.vocabulary import Vocabulary
        from lance_concepts.lake.ingest import ingest
        ingest({str(man)!r}, {str(db)!r}, model=SlowFakeEncoder(delay=0.08), vocab=Vocabulary(WORDS, name="colours"),
               batch_size=4, workers=1, quiet=True)
        print("FINISHED")
    """))
    err_log = tmp_path / "stderr.txt"
    with open(err_log, "wb") as errf:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=errf, env={**os.environ})
    rows_at_kill = 0
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                rows_at_kill = ImageStore(db).count() if (db / "images.lance").exists() else 0
            except Exception:  # the table is being created
                continue
            if rows_at_kill >= 24:
                break
        assert proc.poll() is None, "the ingest finished (or died) before it could be killed: " + \
            err_log.read_text(errors="replace")[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its decode worker
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after_kill = ImageStore(db).count()
    assert 0 < after_kill < n, after_kill
    s = ingest(man, db, model=FakeEncoder(), vocab=vocab, batch_size=8, workers=0, quiet=True)
    assert s.skipped == after_kill and s.ok == n - after_kill and s.errors == 0
    t = _check_consistent(db)
    assert sorted(r["id"] for r in t) == sorted(r["id"] for r in rows)  # nothing lost, nothing duplicated
