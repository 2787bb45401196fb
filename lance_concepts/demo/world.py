"""A procedurally drawn toy world for demos, tests and the project's own demo CLIP model.

Every image is one coloured *shape* drawn over a textured *background*. Everything is drawn
with Pillow and numpy from a seeded random generator, so the same seed always gives the same
pixels, and nothing has to be downloaded.

``generate_dataset`` writes a small image collection (PNGs + ``manifest.csv``) with two planted
effects whose ground truth is in the manifest columns:

* **drift**: the share of ``red`` shapes rises linearly from 10% in the first month to 70% in the
  twelfth, while the shape and background distributions stay the same every month;
* **spurious correlation**: 90% of circles are on ``grass`` but only 10% of squares; every other
  shape is on grass at the base rate ``1 / len(BACKGROUNDS)``.

All parameters live in :class:`WorldSpec` and can be overridden, e.g.
``generate_dataset(out, n=1200, seed=3, drift_end=0.9, spurious={"circle": 0.8})``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "SHAPES",
    "BACKGROUNDS",
    "COLOUR_RGB",
    "BACKGROUND_PHRASES",
    "WorldSpec",
    "render",
    "render_with_mask",
    "random_scene",
    "caption",
    "generate_dataset",
    "read_manifest",
]

#: Fill colours (name -> RGB). Each drawn shape gets a small random jitter around these.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 30),
    "green": (40, 175, 60),
    "blue": (35, 75, 225),
    "purple": (140, 50, 185),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
COLOURS: list[str] = list(COLOUR_RGB)
SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart"]
BACKGROUNDS: list[str] = ["grass", "sand", "water", "snow", "sky", "wood", "stone"]

#: How a caption places the shape on each background.
BACKGROUND_PHRASES: dict[str, str] = {
    "grass": "on grass",
    "sand": "on sand",
    "water": "on water",
    "snow": "on snow",
    "sky": "in the sky",
    "wood": "on wood",
    "stone": "on stone",
}

_OUTLINE = (30, 30, 30)


def _rng(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# ----------------------------------------------------------------------------------------------
# Backgrounds: each a float32 (s, s, 3) array in 0..255 with its own texture.
# ----------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, s: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random (cells x cells) grid bilinearly upsampled to s x s."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0.0, cells, s, dtype=np.float32)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]          # (s, cells+1)
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]     # (s, s)


def _tint(base, mod: np.ndarray) -> np.ndarray:
    return np.asarray(base, dtype=np.float32)[None, None, :] + mod[:, :, None]


def _bg_grass(rng, s):
    # Vertical blades: per-column noise stretched along y, plus fine per-pixel noise.
    blade = max(2, s // 10)
    cols = rng.normal(0.0, 1.0, size=(s // blade + 2, s)).astype(np.float32)
    streaks = np.repeat(cols, blade, axis=0)
    off = int(rng.integers(0, blade))
    streaks = streaks[off: off + s]
    img = _tint((62, 145, 52), 22 * streaks)
    img[:, :, 1] += 10 * _smooth_noise(rng, s, 3)
    img += rng.normal(0, 6, size=(s, s, 1)).astype(np.float32)
    return img


def _bg_sand(rng, s):
    img = _tint((222, 196, 142), 8 * _smooth_noise(rng, s, 4))
    img += rng.normal(0, 12, size=(s, s, 1)).astype(np.float32)          # fine grain
    grains = rng.random((s, s)) < 0.04
    img[grains] -= 45
    return img


def _bg_water(rng, s):
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    period = rng.uniform(0.12, 0.2)
    phase = rng.uniform(0, 2 * np.pi)
    wob = 0.04 * np.sin(2 * np.pi * x / rng.uniform(0.3, 0.5) + rng.uniform(0, 2 * np.pi))
    waves = np.sin(2 * np.pi * (y + wob) / period + phase)
    img = _tint((38, 92, 172), 26 * waves ** 3)
    img += 6 * _smooth_noise(rng, s, 3)[:, :, None]
    img += rng.normal(0, 4, size=(s, s, 1)).astype(np.float32)
    return img


def _bg_snow(rng, s):
    img = _tint((238, 242, 250), 5 * _smooth_noise(rng, s, 3))
    img += rng.normal(0, 3, size=(s, s, 1)).astype(np.float32)
    flakes = rng.random((s, s)) < 0.03
    img[flakes] = np.array([175, 190, 215], dtype=np.float32)
    return img


def _bg_sky(rng, s):
    y = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
    top = np.array([95, 160, 235], dtype=np.float32)
    bottom = np.array([185, 218, 252], dtype=np.float32)
    img = np.broadcast_to(top * (1 - y) + bottom * y, (s, s, 3)).copy()
    # Soft white clouds where smooth noise is high.
    cloud = np.clip((_smooth_noise(rng, s, 3) - 0.2) * 2.2, 0, 1)[:, :, None]
    img = img * (1 - cloud) + 250 * cloud
    img += rng.normal(0, 2, size=(s, s, 1)).astype(np.float32)
    return img


def _bg_wood(rng, s):
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    warp = 0.06 * _smooth_noise(rng, s, 2)
    rings = np.sin(2 * np.pi * (y + warp) * rng.uniform(7, 10) + rng.uniform(0, 2 * np.pi))
    img = _tint((150, 98, 55), 22 * rings)
    img *= (1 + 0.05 * _smooth_noise(rng, s, 5))[:, :, None]
    img += rng.normal(0, 4, size=(s, s, 1)).astype(np.float32)
    return img


def _bg_stone(rng, s):
    blot = _smooth_noise(rng, s, 5) + 0.5 * _smooth_noise(rng, s, 10)
    img = _tint((130, 128, 124), 38 * blot)
    img += rng.normal(0, 7, size=(s, s, 1)).astype(np.float32)
    return img


_BACKGROUND_FN = {
    "grass": _bg_grass,
    "sand": _bg_sand,
    "water": _bg_water,
    "snow": _bg_snow,
    "sky": _bg_sky,
    "wood": _bg_wood,
    "stone": _bg_stone,
}


# ----------------------------------------------------------------------------------------------
# Shapes: polygons around (cx, cy) with radius r and rotation theta (radians).
# ----------------------------------------------------------------------------------------------

def _regular(k, r, start, theta):
    return [(r * math.cos(start + theta + 2 * math.pi * i / k), r * math.sin(start + theta + 2 * math.pi * i / k))
            for i in range(k)]


def _shape_points(shape: str, r: float, theta: float) -> list[tuple[float, float]] | None:
    up = -math.pi / 2
    if shape == "circle":
        return None
    if shape == "square":
        return _regular(4, r * 0.92, math.pi / 4, theta)
    if shape == "triangle":
        pts = _regular(3, r * 1.05, up, theta)
        return [(px, py + 0.2 * r) for px, py in pts]
    if shape == "hexagon":
        return _regular(6, r, 0.0, theta)
    if shape == "diamond":
        pts = [(0.0, -r * 1.05), (r * 0.62, 0.0), (0.0, r * 1.05), (-r * 0.62, 0.0)]
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r * (1.05 if i % 2 == 0 else 0.45)
            a = up + math.pi * i / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return _rotate(pts, theta)
    elif shape == "cross":
        a, b = r * 0.95, r * 0.33
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
               (-a, -b), (-b, -b)]
    elif shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((r * hx / 16.0, -r * (hy + 2.5) / 15.0))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return _rotate(pts, theta)


def _rotate(pts, theta):
    c, s = math.cos(theta), math.sin(theta)
    return [(px * c - py * s, px * s + py * c) for px, py in pts]


def render(shape: str, colour: str, background: str, *, size: int = 64, rng=None) -> Image.Image:
    """Draw one ``colour`` ``shape`` on a ``background`` texture as an RGB ``size`` x ``size`` image.

    Shape radius (22-36% of the side), position, a small rotation (+-12 degrees), the colour
    jitter and the background texture are random; ``rng`` (a ``numpy.random.Generator`` or an
    int seed) makes the image deterministic.
    """
    return render_with_mask(shape, colour, background, size=size, rng=rng)[0]


def render_with_mask(shape: str, colour: str, background: str, *, size: int = 64,
                     rng=None) -> tuple[Image.Image, np.ndarray]:
    """:func:`render` (the same pixels for the same ``rng``) plus the shape's boolean mask
    ``(size, size)`` (fill and outline): the ground truth of what a crop of the scene shows."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if colour not in COLOUR_RGB:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOURS}")
    if background not in _BACKGROUND_FN:
        raise ValueError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")
    if int(size) < 16:
        raise ValueError("size must be at least 16 pixels")
    s = int(size)
    g = _rng(rng)
    bg = _BACKGROUND_FN[background](g, s)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (s, s), 0)

    r = g.uniform(0.22, 0.36) * s
    margin = r * 1.1 + 1
    cx = g.uniform(margin, s - margin)
    cy = g.uniform(margin, s - margin)
    theta = math.radians(g.uniform(-12, 12))
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOUR_RGB[colour], g.integers(-14, 15, size=3)))
    width = max(1, round(s / 40))
    pts = _shape_points(shape, r, theta)
    for canvas, f, o in ((ImageDraw.Draw(img), fill, _OUTLINE), (ImageDraw.Draw(mask), 255, 255)):
        if pts is None:
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=f, outline=o, width=width)
        else:
            canvas.polygon([(cx + px, cy + py) for px, py in pts], fill=f, outline=o, width=width)
    return img, np.asarray(mask) > 0


def random_scene(rng=None, *, colours=None, shapes=None, backgrounds=None) -> tuple[str, str, str]:
    """A uniformly random ``(shape, colour, background)`` triple."""
    g = _rng(rng)
    colours = COLOURS if colours is None else colours
    shapes = SHAPES if shapes is None else shapes
    backgrounds = BACKGROUNDS if backgrounds is None else backgrounds
    return (shapes[int(g.integers(len(shapes)))], colours[int(g.integers(len(colours)))],
            backgrounds[int(g.integers(len(backgrounds)))])


_CAPTION_TEMPLATES = [
    "a photo of a {colour} {shape} {where}",
    "a {colour} {shape} {where}",
    "a picture of a {colour} {shape} {where}",
    "a {colour} {shape} drawn {where}",
    "{colour} {shape} {where}",
]


def caption(shape: str, colour: str, background: str, rng=None) -> str:
    """An English caption of the scene. Without ``rng`` the canonical
    ``"a photo of a {colour} {shape} {on grass|in the sky|...}"``; with one, a random template."""
    where = BACKGROUND_PHRASES.get(background, f"on {background}")
    tpl = _CAPTION_TEMPLATES[0] if rng is None else _CAPTION_TEMPLATES[int(_rng(rng).integers(len(_CAPTION_TEMPLATES)))]
    return tpl.format(colour=colour, shape=shape, where=where)


# ----------------------------------------------------------------------------------------------
# Data set with planted drift and a planted spurious correlation
# ----------------------------------------------------------------------------------------------

@dataclass
class WorldSpec:
    """Parameters of ``generate_dataset`` (all overridable). The defaults are the documented demo.

    Months are assigned round-robin so every month holds ``n / n_months`` images (+-1). Within a
    month, the number of ``drift_colour`` images is ``round(share * count)`` with ``share`` going
    linearly from ``drift_start`` (first month) to ``drift_end`` (last month); the other images get
    the other colours uniformly at random. Shapes are balanced per month (uniform, independent of
    time). For each shape listed in ``spurious``, exactly ``round(p * count)`` of its images get
    ``spurious_background`` and the rest the other backgrounds uniformly; shapes not listed get
    every background uniformly (so ``spurious_background`` at the base rate ``1/len(backgrounds)``).
    Backgrounds depend only on the shape, so their distribution is the same every month.
    """

    colours: list[str] = field(default_factory=lambda: list(COLOURS))
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    backgrounds: list[str] = field(default_factory=lambda: list(BACKGROUNDS))
    n_months: int = 12
    start_date: str = "2024-01-01"
    drift_colour: str = "red"
    drift_start: float = 0.10
    drift_end: float = 0.70
    spurious_background: str = "grass"
    spurious: dict = field(default_factory=lambda: {"circle": 0.9, "square": 0.1})
    test_fraction: float = 0.2
    size: int = 64

    def drift_share(self, month: int) -> float:
        """Planted share of ``drift_colour`` in month index ``month`` (0-based)."""
        if self.n_months <= 1:
            return self.drift_start
        return self.drift_start + (self.drift_end - self.drift_start) * month / (self.n_months - 1)

    def validate(self) -> None:
        for name, allowed, values in (("colours", COLOURS, self.colours), ("shapes", SHAPES, self.shapes),
                                      ("backgrounds", BACKGROUNDS, self.backgrounds)):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{name} must be a non-empty subset of {allowed}; got {values}")
        if self.drift_colour not in self.colours:
            raise ValueError(f"drift_colour {self.drift_colour!r} is not among colours {self.colours}")
        if self.spurious_background not in self.backgrounds:
            raise ValueError(f"spurious_background {self.spurious_background!r} is not among {self.backgrounds}")
        for shape, p in self.spurious.items():
            if shape not in self.shapes:
                raise ValueError(f"spurious shape {shape!r} is not among shapes {self.shapes}")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"spurious share for {shape!r} must be in [0, 1]; got {p}")
        for name in ("drift_start", "drift_end", "test_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        if self.n_months < 1:
            raise ValueError("n_months must be >= 1")
        if len(self.colours) == 1 and self.drift_start < 1.0:
            raise ValueError("need at least two colours unless drift_start = drift_end = 1")
        _dt.date.fromisoformat(self.start_date)


def _month_start(start: _dt.date, k: int) -> _dt.date:
    y, m = divmod(start.month - 1 + k, 12)
    return _dt.date(start.year + y, m + 1, 1)


def _balanced(rng: np.random.Generator, values: list, k: int) -> list:
    """``k`` values as evenly spread over ``values`` as possible (random remainder), shuffled."""
    if k <= 0:
        return []
    full, extra = divmod(k, len(values))
    out = list(values) * full + [values[int(i)] for i in rng.permutation(len(values))[:extra]]
    return [out[int(i)] for i in rng.permutation(k)]


def generate_dataset(out_dir, n: int = 600, seed: int = 0, *, spec: WorldSpec | None = None,
                     image_format: str = "png", **overrides) -> Path:
    """Render ``n`` demo images into ``out_dir`` and write ``manifest.csv`` and ``world.json``.

    Returns the path of ``manifest.csv``. Columns: ``uri`` (path relative to ``out_dir``), ``id``,
    ``label`` (= shape), ``colour``, ``shape``, ``background``, ``split`` (train/test),
    ``timestamp`` (ISO date, 12 consecutive months from ``start_date``), ``caption`` (canonical).
    The manifest is the ground truth of the planted drift and spurious correlation; ``world.json``
    records the parameters. Deterministic given ``seed``. ``overrides`` replace fields of ``spec``
    (default :class:`WorldSpec`), e.g. ``drift_end=0.9`` or ``spurious={"circle": 0.8}``.
    """
    if int(n) < 1:
        raise ValueError("n must be >= 1")
    spec = WorldSpec() if spec is None else WorldSpec(**asdict(spec))
    valid = {f.name for f in fields(WorldSpec)}
    for key, value in overrides.items():
        if key not in valid:
            raise TypeError(f"unknown generate_dataset option {key!r}; valid: {sorted(valid)}")
        setattr(spec, key, value)
    spec.validate()
    n = int(n)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    months = np.arange(n) % spec.n_months
    colour = [None] * n
    shape = [None] * n
    others = [c for c in spec.colours if c != spec.drift_colour]
    for m in range(spec.n_months):
        idx = np.flatnonzero(months == m)
        k = len(idx)
        n_drift = int(round(spec.drift_share(m) * k))
        cols = [spec.drift_colour] * n_drift
        cols += [others[int(i)] for i in rng.integers(len(others), size=k - n_drift)] if others else []
        cols = [cols[i] for i in rng.permutation(k)]
        shp = _balanced(rng, spec.shapes, k)
        for j, i in enumerate(idx):
            colour[i], shape[i] = cols[j], shp[j]

    background = [None] * n
    rest = [b for b in spec.backgrounds if b != spec.spurious_background]
    for s_name in spec.shapes:
        idx = [i for i in range(n) if shape[i] == s_name]
        k = len(idx)
        if s_name in spec.spurious:
            n_sp = int(round(float(spec.spurious[s_name]) * k))
            bgs = [spec.spurious_background] * n_sp
            bgs += [rest[int(i)] for i in rng.integers(len(rest), size=k - n_sp)] if rest else \
                [spec.spurious_background] * (k - n_sp)
            bgs = [bgs[i] for i in rng.permutation(k)]
        else:
            bgs = [spec.backgrounds[int(i)] for i in rng.integers(len(spec.backgrounds), size=k)]
        for j, i in enumerate(idx):
            background[i] = bgs[j]

    n_test = int(round(spec.test_fraction * n))
    split = np.array(["train"] * n, dtype=object)
    split[rng.permutation(n)[:n_test]] = "test"

    start = _dt.date.fromisoformat(spec.start_date)
    rows = []
    ext = image_format.lower().lstrip(".")
    for i in range(n):
        m0 = _month_start(start, int(months[i]))
        days = (_month_start(start, int(months[i]) + 1) - m0).days
        ts = m0 + _dt.timedelta(days=int(rng.integers(days)))
        img_seed = int(rng.integers(2**63 - 1))
        img = render(shape[i], colour[i], background[i], size=spec.size, rng=np.random.default_rng(img_seed))
        ident = f"img{i:05d}"
        uri = f"images/{ident}.{ext}"
        img.save(out / uri)
        rows.append({
            "uri": uri, "id": ident, "label": shape[i], "colour": colour[i], "shape": shape[i],
            "background": background[i], "split": split[i], "timestamp": ts.isoformat(),
            "caption": caption(shape[i], colour[i], background[i]),
        })

    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    world = {"n": n, "seed": seed, **asdict(spec),
             "drift_share_by_month": [round(spec.drift_share(m), 6) for m in range(spec.n_months)]}
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(path) -> list[dict]:
    """Rows of a ``manifest.csv`` (or of ``<dir>/manifest.csv``) as dicts of strings."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.csv"
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
