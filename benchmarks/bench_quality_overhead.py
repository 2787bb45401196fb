"""What the quality columns add to ingest: per-image time of decode + CLIP preprocessing with and
without lake.quality.image_quality, on real photos.

    PYTHONPATH=. python benchmarks/bench_quality_overhead.py --photos ../shared/datasets/imagenet-sample --n 300
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lance_concepts.lake.decode import decode_image
from lance_concepts.lake.quality import image_quality
from lance_concepts.models.encoder import load_encoder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="../shared/datasets/imagenet-sample")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    pre = load_encoder("demo").preprocess
    datas = [p.read_bytes() for p in sorted(Path(a.photos).iterdir())[:a.n]]
    base, extra = [], []
    for _ in range(a.repeats):  # interleaved, so load changes on a shared machine hit both alike
        t0 = time.perf_counter()
        ims = [decode_image(d, draft=448) for d in datas]
        for im in ims:
            pre(im)
        t1 = time.perf_counter()
        for d, im in zip(datas, ims):
            image_quality(d, im)
        t2 = time.perf_counter()
        base.append((t1 - t0) / len(datas))
        extra.append((t2 - t1) / len(datas))
    b, e = np.median(base) * 1e3, np.median(extra) * 1e3
    print(f"{len(datas)} photos: decode + preprocess {b:.2f} ms/image, quality columns {e:.2f} ms/image "
          f"(+{e / b:.0%}), medians of {a.repeats} passes")


if __name__ == "__main__":
    main()
