"""SpLiCE solver: the CUDA path (dictionary GEMMs, gathers and sparse products on the GPU; small
problems on the CPU) next to the CPU path, images/s on the same inputs.

    python benchmarks/bench_splice_gpu.py [--l1 0.25,0.1,0.05] [--images 4096] [--problem coherent|vit-b-32]

Runs unchanged on a CUDA machine; without CUDA it times the CPU path and says that the CUDA part
was skipped. ``--problem vit-b-32`` needs ../shared (see ``splice_geometry.py``); the default is the
synthetic coherent dictionary of the tests (10,000 x 512), which needs nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lance_concepts.concepts.splice import SpliceDecomposer, kkt_violation, prepare_dictionary  # noqa: E402
from tests.splice_problems import clip_like_images, coherent_dictionary, image_mean  # noqa: E402


def problem(args):
    if args.problem == "vit-b-32":
        from splice_geometry import vit_b32_problem

        E, X = vit_b32_problem(300)
        Z = X / np.linalg.norm(X, axis=1, keepdims=True)
        return E, np.repeat(X, -(-args.images // len(X)), axis=0)[: args.images], Z.mean(0)
    E = coherent_dictionary(10_000, 512, seed=0)
    mean = image_mean(512, seed=1)
    return E, clip_like_images(prepare_dictionary(E), args.images, mean, seed=2), mean


def rate(dec, X, repeats, sync):
    dec.decompose(X[:64])
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W = dec.decompose(X)
        sync()
        times.append(time.perf_counter() - t0)
    return len(X) / statistics.median(times), len(X) / max(times), W


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--l1", default="0.25,0.1,0.05")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--problem", choices=["coherent", "vit-b-32"], default="coherent")
    args = ap.parse_args()
    E, X, mean = problem(args)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("CUDA is not available here: timing the CPU path only (the CUDA columns are skipped)", file=sys.stderr)
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu only'}; {len(X)} images, {E.shape[0]} concepts")
    print("| l1 | CPU images/s median (worst) | CUDA images/s median (worst) | CUDA / CPU | supports identical | worst KKT (CUDA) |")
    print("|---|---:|---:|---:|---:|---:|")
    for lam in (float(x) for x in args.l1.split(",")):
        cpu = SpliceDecomposer(E, mean, lam, device="cpu").fit()
        c_med, c_worst, Wc = rate(cpu, X, args.repeats, lambda: None)
        if not cuda:
            print(f"| {lam:g} | {c_med:,.0f} ({c_worst:,.0f}) | skipped (no CUDA) | | | |", flush=True)
            continue
        gpu = SpliceDecomposer(E, mean, lam, device="cuda").fit()
        g_med, g_worst, Wg = rate(gpu, X, args.repeats, torch.cuda.synchronize)
        same = float(((Wc > 0) != (Wg > 0)).nnz == 0)
        kkt = kkt_violation(gpu.dictionary_, gpu.transform_input(X[:256]), Wg[:256], lam).max()
        print(f"| {lam:g} | {c_med:,.0f} ({c_worst:,.0f}) | {g_med:,.0f} ({g_worst:,.0f}) | {g_med / c_med:.1f}x | "
              f"{'yes' if same else 'no'} | {kkt:.1e} |", flush=True)


if __name__ == "__main__":
    main()
