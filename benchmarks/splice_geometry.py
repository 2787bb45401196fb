"""A SpLiCE problem with the geometry of a real ViT-B-32: its text tower on the authors' 10k LAION
concepts and its image tower on real photos.

Why: the synthetic coherent dictionary (``tests/splice_problems.py``) is easier than a real text
tower along the l1 path (at l1 = 0.05 it needs ~80 concepts per image where ViT-B-32 needs ~150),
and the working-set solver's cost is set by support sizes. The weights are random (no download is
possible here), so only the architecture's geometry is real, which is what the solver sees.

Nothing from ``../shared`` is copied into the repository: the vocabulary and photos are read at run
time and the embeddings are cached outside it (``$LANCE_CONCEPTS_CACHE`` or ``~/.cache``).

    .venv/bin/python benchmarks/splice_geometry.py --images 300     # builds (or finds) the cache
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LANCE_CONCEPTS_SHARED", REPO.parent / "shared"))


def cache_dir() -> Path:
    root = os.environ.get("LANCE_CONCEPTS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lance-concepts")
    path = Path(root) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def authors_top_concepts(k: int = 10_000) -> list[str]:
    """The authors' top-k LAION words: the LAST k lines (their file is in ascending frequency)."""
    path = SHARED / "reference" / "splice" / "laion.txt"
    if not path.is_file():
        raise SystemExit(f"{path} not found: the ViT-B-32 problem needs ../shared (or $LANCE_CONCEPTS_SHARED)")
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [w for w in lines if w.strip()][-k:]


def photos(n: int) -> list[Path]:
    folder = SHARED / "datasets" / "imagenet-sample"
    files = sorted(p for p in folder.glob("*.JPEG"))
    if len(files) < n:
        raise SystemExit(f"{folder} has {len(files)} photos, {n} asked for")
    return files[:n]


def vit_b32_problem(n_images: int = 300, n_concepts: int = 10_000, quiet: bool = False):
    """-> (raw text embeddings (c, 512), raw image embeddings (n, 512)) float32, cached."""
    path = cache_dir() / f"splice_vitb32_random_c{n_concepts}_n{n_images}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["E"], f["X"]
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from lance_concepts.models.encoder import ClipEncoder

    t0 = time.perf_counter()
    enc = ClipEncoder("ViT-B-32", pretrained=None, device="cpu", seed=0)
    with torch.inference_mode():
        E = enc.encode_text(authors_top_concepts(n_concepts))
        if not quiet:
            print(f"[geometry] {len(E)} concepts encoded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        images = [Image.open(p).convert("RGB") for p in photos(n_images)]
        X = enc.encode_images(images)
    np.savez(path, E=np.asarray(E, np.float32), X=np.asarray(X, np.float32))
    if not quiet:
        print(f"[geometry] cached in {path} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return np.asarray(E, np.float32), np.asarray(X, np.float32)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--concepts", type=int, default=10_000)
    a = ap.parse_args()
    E, X = vit_b32_problem(a.images, a.concepts)
    print(E.shape, X.shape)
