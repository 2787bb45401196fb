"""A tiny deterministic stand-in for ClipEncoder used by the ingest tests (no tests in this module).

Image embedding = mean colour (r, g, b) mapped through a fixed matrix M plus a small texture term;
the text embedding of "red" / "green" / "blue" / ... is the colour's (r, g, b) through the same M,
other words get fixed random vectors. So SpLiCE over a colour vocabulary should name an image's
colour: a planted ground truth for the pipeline, at microseconds per image.
"""
from __future__ import annotations

import hashlib

import numpy as np

DIM = 16
SIZE = 8
COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}
WORDS = list(COLOURS) + ["dog", "car", "tree", "sky", "house", "ocean"]


def _matrix(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, DIM)).astype(np.float32)


def fake_preprocess(im):
    """PIL image -> (3, 8, 8) float32 in [0, 1] (module-level so that worker processes can unpickle it)."""
    im = im.convert("RGB").resize((SIZE, SIZE))
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


class FakeEncoder:
    model_name = "fake"
    pretrained = None
    image_size = SIZE

    def __init__(self, seed: int = 0, fingerprint: str | None = None, dim: int = DIM):
        self.embed_dim = dim
        self.seed = seed
        self.M = _matrix(seed)[:, :dim] if dim <= DIM else np.random.default_rng(seed).standard_normal(
            (4, dim)).astype(np.float32)
        self.fingerprint = fingerprint or f"fake2-{seed}-{dim}"
        self.preprocess = fake_preprocess
        self.calls = 0

    def describe(self):
        return {"model_name": self.model_name, "pretrained": None, "model_fingerprint": self.fingerprint,
                "embed_dim": self.embed_dim, "image_size": SIZE}

    def encode_images(self, x):
        x = np.asarray(x, dtype=np.float32)
        self.calls += 1
        rgb = x.mean(axis=(2, 3))  # (n, 3)
        tex = x.std(axis=(1, 2, 3))[:, None]  # (n, 1)
        feats = np.concatenate([rgb, tex], axis=1)
        return (feats @ self.M + 0.05).astype(np.float32)

    def encode_text(self, texts):
        out = []
        for t in texts:
            if t in COLOURS:
                v = np.array(list(COLOURS[t]) + [0.2], np.float32) @ self.M
            else:
                h = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
                v = np.random.default_rng(h).standard_normal(self.embed_dim).astype(np.float32)
            out.append(v)
        return np.stack(out).astype(np.float32)


class SlowFakeEncoder(FakeEncoder):
    """The same model (same fingerprint) but slow, so that a kill lands in the middle of a run."""

    def __init__(self, delay: float = 0.05, **kw):
        super().__init__(**kw)
        self.delay = delay

    def encode_images(self, x):
        import time

        time.sleep(self.delay)
        return super().encode_images(x)


def crashing_preprocess(im):
    """Kills its (worker) process on 13x13 images: stands in for a crash inside a decoder library."""
    import os

    if im.size == (13, 13):
        os._exit(3)
    return fake_preprocess(im)


class CrashingEncoder(FakeEncoder):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.preprocess = crashing_preprocess
