"""The demo world: deterministic rendering and the planted drift / spurious correlation."""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lance_concepts.demo import world as w

N = 600


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_world")
    manifest = w.generate_dataset(out, n=N, seed=0)
    return out, manifest, w.read_manifest(manifest)


def test_vocabularies_are_distinct_and_nonempty():
    assert len(w.COLOURS) >= 6 and len(w.SHAPES) >= 6 and len(w.BACKGROUNDS) >= 5
    all_words = w.COLOURS + w.SHAPES + w.BACKGROUNDS
    assert len(set(all_words)) == len(all_words)
    assert {"red", "green", "blue", "yellow"} <= set(w.COLOURS)
    assert {"circle", "square", "triangle", "star"} <= set(w.SHAPES)
    assert {"grass", "sand", "water", "snow", "sky"} <= set(w.BACKGROUNDS)


def test_render_is_deterministic_for_a_seed():
    a = w.render("star", "red", "grass", rng=np.random.default_rng(7))
    b = w.render("star", "red", "grass", rng=np.random.default_rng(7))
    c = w.render("star", "red", "grass", rng=np.random.default_rng(8))
    assert a.mode == "RGB" and a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.array_equal(np.asarray(w.render("circle", "blue", "sky", rng=3)),
                          np.asarray(w.render("circle", "blue", "sky", rng=3)))


@pytest.mark.parametrize("size", [32, 64, 96])
def test_render_every_combination_at_several_sizes(size):
    rng = np.random.default_rng(size)
    for shape in w.SHAPES:
        for colour in w.COLOURS:
            img = w.render(shape, colour, w.BACKGROUNDS[int(rng.integers(len(w.BACKGROUNDS)))], size=size, rng=rng)
            assert img.size == (size, size)


def test_shape_is_drawn_in_its_colour():
    # The pixel closest to the fill colour must be near it: the shape is visible in its colour.
    for colour, rgb in w.COLOUR_RGB.items():
        arr = np.asarray(w.render("square", colour, "stone", size=64, rng=1), dtype=np.int32)
        dist = np.abs(arr - np.array(rgb)).sum(-1)
        assert (dist < 50).sum() > 100, colour


def test_render_with_mask_has_the_same_pixels_and_the_shape_mask():
    for shape in w.SHAPES:
        img, mask = w.render_with_mask(shape, "red", "water", rng=5)
        assert np.array_equal(np.asarray(img), np.asarray(w.render(shape, "red", "water", rng=5)))
        assert mask.shape == (64, 64) and mask.dtype == bool and 0.03 < mask.mean() < 0.5, shape
        arr = np.asarray(img, dtype=np.int32)
        red = np.abs(arr - np.array(w.COLOUR_RGB["red"])).sum(-1) < 50
        assert red[~mask].sum() == 0 and red[mask].mean() > 0.5, shape    # red inside (outline aside), water outside


def test_backgrounds_differ_in_mean_colour_or_texture():
    stats = {}
    for bg in w.BACKGROUNDS:
        arr = np.stack([np.asarray(w.render("circle", "black", bg, rng=i), dtype=np.float32) for i in range(4)])
        stats[bg] = np.concatenate([np.median(arr.reshape(-1, 3), 0), [arr.std()]])
    names = list(stats)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(stats[a] - stats[b]).max() > 8, (a, b)


def test_bad_names_raise():
    with pytest.raises(ValueError, match="shape"):
        w.render("blob", "red", "grass")
    with pytest.raises(ValueError, match="colour"):
        w.render("circle", "mauve", "grass")
    with pytest.raises(ValueError, match="background"):
        w.render("circle", "red", "lava")


def test_caption():
    assert w.caption("circle", "red", "grass") == "a photo of a red circle on grass"
    assert w.caption("star", "blue", "sky") == "a photo of a blue star in the sky"
    text = w.caption("heart", "white", "snow", rng=1)
    assert "white" in text and "heart" in text and "snow" in text


def test_manifest_columns_and_files(dataset):
    out, manifest, rows = dataset
    assert manifest == out / "manifest.csv"
    assert len(rows) == N
    assert list(rows[0]) == ["uri", "id", "label", "colour", "shape", "background", "split", "timestamp",
                             "caption"]
    assert len({r["id"] for r in rows}) == N
    for r in rows[:: 37]:
        with Image.open(out / r["uri"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert all(r["label"] == r["shape"] for r in rows)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert sum(r["split"] == "test" for r in rows) == round(0.2 * N)
    world = json.loads((out / "world.json").read_text())
    assert world["seed"] == 0 and world["n"] == N and world["drift_colour"] == "red"


def test_generation_is_deterministic(dataset, tmp_path):
    out, _, rows = dataset
    rows2 = w.read_manifest(w.generate_dataset(tmp_path / "again", n=N, seed=0))
    assert rows2 == rows
    for r in rows[:: 50]:
        assert (out / r["uri"]).read_bytes() == (tmp_path / "again" / r["uri"]).read_bytes()
    rows3 = w.read_manifest(w.generate_dataset(tmp_path / "other", n=60, seed=1))
    assert [r["colour"] for r in rows3] != [r["colour"] for r in rows[:60]]


def _month(r):
    return r["timestamp"][:7]


def test_timestamps_span_twelve_consecutive_months(dataset):
    _, _, rows = dataset
    months = sorted({_month(r) for r in rows})
    assert months == [f"2024-{m:02d}" for m in range(1, 13)]
    counts = Counter(_month(r) for r in rows)
    assert set(counts.values()) == {N // 12}
    for r in rows:
        dt.date.fromisoformat(r["timestamp"])


def test_planted_drift_red_share_rises_linearly(dataset):
    _, _, rows = dataset
    spec = w.WorldSpec()
    months = sorted({_month(r) for r in rows})
    shares = []
    for k, m in enumerate(months):
        sub = [r for r in rows if _month(r) == m]
        share = np.mean([r["colour"] == "red" for r in sub])
        assert abs(share - spec.drift_share(k)) <= 1.0 / len(sub) + 1e-9
        shares.append(share)
    assert shares[0] == pytest.approx(0.10, abs=0.02) and shares[-1] == pytest.approx(0.70, abs=0.02)
    slope = np.polyfit(np.arange(12), shares, 1)[0]
    assert slope == pytest.approx(0.6 / 11, abs=0.005)


def test_shape_and_background_distributions_stay_fixed(dataset):
    _, _, rows = dataset
    by_month = {}
    for r in rows:
        by_month.setdefault(_month(r), []).append(r)
    for sub in by_month.values():  # shapes balanced every month
        counts = Counter(r["shape"] for r in sub)
        assert max(counts.values()) - min(counts.get(s, 0) for s in w.SHAPES) <= 1
    first = [r for r in rows if _month(r) <= "2024-06"]
    last = [r for r in rows if _month(r) > "2024-06"]
    for bg in w.BACKGROUNDS:  # same background mix early and late (sampling tolerance)
        a = np.mean([r["background"] == bg for r in first])
        b = np.mean([r["background"] == bg for r in last])
        assert abs(a - b) < 0.08, bg
    # non-red colours stay uniform among themselves
    others = Counter(r["colour"] for r in rows if r["colour"] != "red")
    expected = sum(others.values()) / (len(w.COLOURS) - 1)
    assert all(abs(v - expected) < 4 * np.sqrt(expected) for v in others.values())


def test_planted_spurious_correlation(dataset):
    _, _, rows = dataset

    def grass_share(shapes):
        sub = [r for r in rows if r["shape"] in shapes]
        return np.mean([r["background"] == "grass" for r in sub]), len(sub)

    p, k = grass_share({"circle"})
    assert abs(p - 0.9) <= 1.0 / k + 1e-9
    p, k = grass_share({"square"})
    assert abs(p - 0.1) <= 1.0 / k + 1e-9
    rest = [s for s in w.SHAPES if s not in ("circle", "square")]
    p, k = grass_share(set(rest))
    base = 1.0 / len(w.BACKGROUNDS)
    assert abs(p - base) < 4 * np.sqrt(base * (1 - base) / k)
    # circles not on grass spread over the other backgrounds
    assert len({r["background"] for r in rows if r["shape"] == "circle"}) >= 4


def test_overrides_and_validation(tmp_path):
    rows = w.read_manifest(w.generate_dataset(tmp_path / "o", n=120, seed=2, drift_start=0.0, drift_end=1.0,
                                              spurious={"star": 1.0}, n_months=6, start_date="2023-11-01",
                                              test_fraction=0.5, size=32))
    assert sorted({_month(r) for r in rows}) == ["2023-11", "2023-12", "2024-01", "2024-02", "2024-03", "2024-04"]
    assert not any(r["colour"] == "red" for r in rows if _month(r) == "2023-11")
    assert all(r["colour"] == "red" for r in rows if _month(r) == "2024-04")
    assert all(r["background"] == "grass" for r in rows if r["shape"] == "star")
    assert sum(r["split"] == "test" for r in rows) == 60
    with Image.open(tmp_path / "o" / rows[0]["uri"]) as im:
        assert im.size == (32, 32)
    with pytest.raises(TypeError, match="unknown generate_dataset option"):
        w.generate_dataset(tmp_path / "bad", n=10, drift_strength=3)
    with pytest.raises(ValueError):
        w.generate_dataset(tmp_path / "bad", n=10, spurious={"circle": 1.5})
    with pytest.raises(ValueError):
        w.generate_dataset(tmp_path / "bad", n=10, drift_colour="mauve")
    with pytest.raises(ValueError):
        w.generate_dataset(tmp_path / "bad", n=0)
