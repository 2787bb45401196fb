"""Text encoding of many short concepts: truncated-token fast path vs open_clip's plain encode_text.

Usage:
    .venv/bin/python benchmarks/bench_text_encoding.py [--model ViT-B-32] [--n 10000] [--subset 500] [--repeats 3]

Both paths run on the same random subset, interleaved, in one process (the machine is noisy); the
fast path is also timed on all N concepts. Random weights are fine for timing.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch


def concepts(n: int) -> list[str]:
    try:
        from lance_concepts.concepts.vocabulary import load_vocabulary

        words = list(load_vocabulary("default"))
    except Exception:  # the default list is not built yet: synthetic one- and two-word strings
        rng = np.random.default_rng(0)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        words = ["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(n)]
        words = [w if i % 3 else f"{w} {words[i - 1]}" for i, w in enumerate(words)]
    return (words * (n // len(words) + 1))[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--subset", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    from lance_concepts.models.encoder import ClipEncoder

    torch.set_num_threads(torch.get_num_threads())
    enc = ClipEncoder(args.model, pretrained=None, batch_size=args.batch_size)
    texts = concepts(args.n)
    rng = np.random.default_rng(1)
    subset = [texts[i] for i in rng.choice(len(texts), args.subset, replace=False)]
    enc.encode_text(subset[:32])  # warm-up
    plain_t, fast_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); ref = enc.encode_text(subset, truncate=False); plain_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); got = enc.encode_text(subset); fast_t.append(time.perf_counter() - t0)
    diff = float(np.abs(ref - got).max())
    full_t = []
    for _ in range(args.repeats):
        t0 = time.perf_counter(); enc.encode_text(texts); full_t.append(time.perf_counter() - t0)
    plain, fast, full = (statistics.median(x) for x in (plain_t, fast_t, full_t))
    lengths = (enc.tokenizer(texts) != 0).sum(1).numpy()
    result = {
        "model": args.model, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "subset": args.subset, "plain_subset_s": round(plain, 3), "fast_subset_s": round(fast, 3),
        "plain_per_s": round(args.subset / plain, 1), "fast_per_s": round(args.subset / fast, 1),
        "speedup": round(plain / fast, 2), "max_abs_diff": diff,
        "n": args.n, "fast_all_s": round(full, 2), "fast_all_per_s": round(args.n / full, 1),
        "plain_all_s_extrapolated": round(plain * args.n / args.subset, 1),
        "tokens_mean_incl_sot_eot": round(float(lengths.mean()), 2), "tokens_max": int(lengths.max()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
