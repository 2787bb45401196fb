"""Image quality columns, backfill, quality issues and duplicate groups: synthetic images with known
answers (always run) and a reference all-pairs search for the near-duplicate groups."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from lance_concepts.concepts.vocabulary import Vocabulary
from lance_concepts.errors import InputError
from lance_concepts.lake.backfill import backfill_quality
from lance_concepts.lake.ingest import ingest
from lance_concepts.lake.quality import QUALITY_COLUMNS, file_facts, pixel_stats
from lance_concepts.lake.store import ImageStore
from lance_concepts.query.quality import quality
from lance_concepts.retrieval.duplicates import duplicates, group_labels, near_duplicate_pairs

from .test_ingest import write_csv
from .test_ingest_fakes import WORDS, FakeEncoder


def _photo(seed=0, size=(96, 64)):
    """A textured colour image with edges (sharp, mid brightness)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3)).astype(np.uint8)
    return Image.fromarray(a).resize(size, Image.NEAREST)


def test_pixel_stats_known_answers():
    im = _photo()
    base = pixel_stats(im)
    dark = pixel_stats(Image.eval(im, lambda v: v // 8))
    blurred = pixel_stats(im.filter(ImageFilter.GaussianBlur(4)))
    grey = pixel_stats(im.convert("L").convert("RGB"))
    assert dark["brightness"] < 0.1 < base["brightness"]
    assert blurred["blur"] < base["blur"] / 10
    assert grey["is_greyscale"] and not base["is_greyscale"]
    assert grey["colourfulness"] < 1e-3 < base["colourfulness"]
    flat = pixel_stats(Image.new("RGB", (50, 50), (128, 128, 128)))
    assert flat["contrast"] == 0 and flat["blur"] == 0 and flat["brightness"] == pytest.approx(128 / 255, abs=1e-3)


def test_file_facts(tmp_path):
    p = tmp_path / "x.jpg"
    _photo(size=(120, 30)).save(p, quality=80)
    data = p.read_bytes()
    f = file_facts(data)
    assert (f["width"], f["height"], f["aspect"], f["format"], f["file_size"]) == (120, 30, 4.0, "JPEG", len(data))
    assert file_facts(b"not an image") == {"file_size": 12}


@pytest.fixture
def lake(tmp_path):
    """6 ordinary images, 2 dark, 1 blurred, 1 tiny, 1 greyscale, 1 exact copy (known answers)."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(6):
        _photo(i).save(d / f"ok{i}.png")
    for i in range(2):
        Image.eval(_photo(10 + i), lambda v: v // 10).save(d / f"dark{i}.png")
    _photo(20).filter(ImageFilter.GaussianBlur(5)).save(d / "blur0.png")
    _photo(21, size=(40, 30)).save(d / "tiny0.png")
    _photo(22).convert("L").save(d / "grey0.png")
    (d / "copy0.png").write_bytes((d / "ok0.png").read_bytes())
    db = tmp_path / "db.lancedb"
    # a manifest with ids: a directory source would key rows by content and merge the exact copy
    man = write_csv(tmp_path / "m.csv", [{"id": p.stem, "uri": f"imgs/{p.name}"} for p in sorted(d.iterdir())])
    s = ingest(str(man), db, model=FakeEncoder(), vocab=Vocabulary(WORDS, name="colours"), workers=0, quiet=True,
               id_column="id")
    assert s.ok == 12
    return str(db), d


def _by_name(db):
    t = ImageStore(db).table.to_arrow()
    return {u.rsplit("/", 1)[-1].split(".")[0]: r for u, r in zip(t["uri"].to_pylist(), t.to_pylist())}


def test_ingest_writes_quality_columns(lake):
    db, d = lake
    rows = _by_name(db)
    assert set(QUALITY_COLUMNS) <= set(rows["ok0"])
    assert (rows["tiny0"]["width"], rows["tiny0"]["height"], rows["ok1"]["format"]) == (40, 30, "PNG")
    assert rows["ok1"]["file_size"] == (d / "ok1.png").stat().st_size
    assert rows["grey0"]["is_greyscale"] and not rows["ok1"]["is_greyscale"]


def test_quality_issues_find_the_planted_images(lake):
    db, _ = lake
    backfill_quality(db)  # content_sha256 (ingest on this branch does not write it yet)
    duplicates(db, near=False)
    res = quality(db, examples=5)
    got = {r["issue"]: (r["n"], r["examples"]) for r in res.records()}
    names = lambda ex: sorted(u.rsplit("/", 1)[-1].split(".")[0] for u in ex)  # noqa: E731
    assert names(got["dark"][1]) == ["dark0", "dark1"]
    assert names(got["blurry"][1]) == ["blur0"]
    assert names(got["tiny"][1]) == ["tiny0"]
    assert names(got["greyscale"][1]) == ["grey0"]
    assert got["duplicate"][0] == 1 and names(got["duplicate"][1])[0] in ("copy0", "ok0")
    assert "brightness < 0.12" in res.summary()
    with pytest.raises(InputError, match="unknown thresholds"):
        quality(db, thresholds={"darkk": 0.1})


def test_backfill_matches_ingest(lake):
    db, _ = lake
    before = _by_name(db)
    ImageStore(db).table.to_lance().drop_columns(["brightness", "blur", "width"])
    r = backfill_quality(db)
    assert {"brightness", "blur", "width"} <= set(r["added"]) and r["failed"] == 0
    after = _by_name(db)
    for k in before:
        for c in ("brightness", "blur", "width"):
            assert after[k][c] == pytest.approx(before[k][c], rel=1e-5)
    assert after["copy0"]["content_sha256"] == after["ok0"]["content_sha256"] != after["ok1"]["content_sha256"]
    assert backfill_quality(db)["added"] == []


def test_near_duplicate_groups_match_all_pairs():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3000, 64)).astype(np.float32)
    src = rng.choice(3000, 200, replace=False)
    noisy = base[src] + 0.15 * rng.standard_normal((200, 64)).astype(np.float32) * np.linalg.norm(
        base[src], axis=1, keepdims=True) / 8
    x = np.vstack([base, noisy])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref_i, ref_j = np.nonzero(np.triu(xn @ xn.T, 1) >= 0.95)
    i, j = near_duplicate_pairs(x, 0.95)
    assert len(ref_i) >= 150
    assert set(zip(i.tolist(), j.tolist())) == set(zip(ref_i.tolist(), ref_j.tolist()))
    lab = group_labels(len(x), i, j)
    assert all(lab[a] == lab[b] for a, b in zip(ref_i, ref_j))


def test_duplicates_table_and_cli(lake):
    from click.testing import CliRunner

    from lance_concepts.cli import main

    db, _ = lake
    backfill_quality(db)
    t = duplicates(db, 0.95)
    exact = t.filter(pa.compute.equal(t["kind"], "exact")).to_pylist()
    assert sorted(r["uri"].rsplit("/", 1)[-1] for r in exact) == ["copy0.png", "ok0.png"]
    assert sum(r["keep"] for r in exact) == 1
    r = CliRunner().invoke(main, ["duplicates", "--db", db, "--format", "json"])
    assert r.exit_code == 0, r.output
    assert any(g["kind"] == "exact" for g in json.loads(r.stdout))
    r = CliRunner().invoke(main, ["quality", "--db", db, "--dark", "0.2"])
    assert r.exit_code == 0 and "brightness < 0.2" in r.output
    r = CliRunner().invoke(main, ["duplicates", "--db", db, "--threshold", "2"])
    assert r.exit_code == 2 and "threshold" in r.output


def test_real_photo_ground_truth(shared_dir, tmp_path):
    """Damaged copies of real photos (benchmarks/quality_ground_truth.py, smaller): every planted dark,
    blurred, tiny and byte-exact copy is found, and the dark and blurry detectors flag no original."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_ground_truth.py"
    spec = importlib.util.spec_from_file_location("qgt", path)
    qgt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qgt)
    rows = qgt.plant(shared_dir / "datasets" / "imagenet-sample", tmp_path, n=40, k=8)
    db = str(tmp_path / "db.lancedb")
    ingest(str(tmp_path / "manifest.csv"), db, model="demo", vocab="demo", id_column="id", quiet=True, workers=0)
    got = qgt.evaluate(db, rows)
    for issue in ("dark", "blurry", "tiny", "duplicates_exact"):
        assert got[issue]["recall"] == 1.0, (issue, got[issue])
    for issue in ("dark", "blurry", "duplicates_exact"):
        assert got[issue]["precision"] == 1.0, (issue, got[issue])


def test_odd_images_do_not_break_quality():
    from lance_concepts.lake.quality import image_quality

    one = Image.new("RGB", (1, 1), (10, 200, 30))
    q = image_quality(b"", one)
    assert q["blur"] == 0 and q["file_size"] == 0 and not q["is_greyscale"]

    class Broken:
        size = (10, 10)

        def reduce(self, k):
            raise OSError("cannot read pixels")

    assert image_quality(b"xx", Broken()) == {"file_size": 2}  # nulls, not a crash
