"""SpLiCE along the l1 path on the geometry of a real ViT-B-32 (``splice_geometry.py``), against the
authors' default solver (scikit-learn Lasso per image, tol 1e-6), interleaved on the same inputs.

    .venv/bin/python benchmarks/bench_splice_path.py --l1 0.02,0.05,0.1,0.25,0.5 --repeats 3 --sk-images 12
    .venv/bin/python benchmarks/bench_splice_path.py --l1 0.001 --images 8 --sk-images 2 --repeats 1

Per l1: ours on all ``--images`` photos (median and worst of ``--repeats`` rows/s), sklearn on the
first ``--sk-images`` per repeat; accuracy of ours against sklearn at tol 1e-10 (max_iter 1e6) on
those images: relative objective gap (max), and the share of rows whose KKT violation (float64,
full dictionary) is within the solver's threshold ("certified"). ``--device cuda`` times the same
solver on a GPU next to the CPU (see ``bench_splice_gpu.py``). The image mean is estimated from the
photos (random weights: the authors' means do not apply).
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

from lance_concepts.concepts.splice import SpliceDecomposer, kkt_violation, lasso_objective  # noqa: E402
from lance_concepts.threads import describe  # noqa: E402
from splice_geometry import vit_b32_problem  # noqa: E402


def sklearn_rows(D, V, lam, tol, max_iter):
    from sklearn.linear_model import Lasso

    A = np.asarray(D, np.float64).T
    out = np.zeros((len(V), D.shape[0]))
    for i, v in enumerate(np.asarray(V, np.float64)):
        m = Lasso(alpha=lam / (2 * D.shape[1]), positive=True, fit_intercept=False, tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(A, v)
        out[i] = m.coef_
    return out


def one_l1(E, X, mean, lam, args):
    dec = SpliceDecomposer(E, mean, lam, device=args.device).fit()
    V = dec.transform_input(X)
    D = dec.dictionary_
    dec.decompose(X[:4])  # warm-up
    ours_t, sk_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W = dec.decompose(X)
        ours_t.append(time.perf_counter() - t0)
        if args.sk_images:
            t0 = time.perf_counter()
            sklearn_rows(D, V[:args.sk_images], lam, 1e-6, 10_000)
            sk_t.append(time.perf_counter() - t0)
    stats = dec.last_stats_
    row = {"l1": lam, "ours_med": len(X) / statistics.median(ours_t), "ours_worst": len(X) / max(ours_t),
           "nnz": float(W.getnnz(1).mean()), "rounds": float(stats["rounds"].mean()),
           "unconverged": int(stats["unconverged"])}
    if args.sk_images:
        n = args.sk_images
        row["sk_med"] = n / statistics.median(sk_t)
        row["ratio_per_repeat"] = [(len(X) / o) / (n / s) for o, s in zip(ours_t, sk_t)]
        ref = sklearn_rows(D, V[:n], lam, 1e-10, 1_000_000)
        o, o_ref = lasso_objective(D, V[:n], W[:n], lam), lasso_objective(D, V[:n], ref, lam)
        row["gap_max"] = float(((o - o_ref) / o_ref).max())
        row["sk_ref_kkt_max"] = float(kkt_violation(D, V[:n], ref, lam).max())
    kkt = kkt_violation(D, V, W, lam)
    row["certified"] = float((kkt <= dec.kkt_threshold_ + 1e-7).mean())
    row["kkt_max"] = float(kkt.max())
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--l1", default="0.02,0.05,0.1,0.25,0.5")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sk-images", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    E, X = vit_b32_problem(max(args.images, 300))
    X = X[: args.images]
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    mean = Z.mean(0)
    print(f"threads: {describe()}", file=sys.stderr)
    print("| l1 | non-zeros | rounds | ours rows/s median (worst) | sklearn rows/s | ratio per repeat | gap vs sklearn 1e-10 (max) | certified | worst KKT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lam in (float(x) for x in args.l1.split(",")):
        r = one_l1(E, X, mean, lam, args)
        ratios = ", ".join(f"{x:.0f}x" for x in r.get("ratio_per_repeat", []))
        print(f"| {lam:g} | {r['nnz']:.1f} | {r['rounds']:.2f} | {r['ours_med']:,.1f} ({r['ours_worst']:,.1f}) | "
              f"{r.get('sk_med', float('nan')):.2f} | {ratios} | {r.get('gap_max', float('nan')):.1e} | "
              f"{r['certified']:.0%} | {r['kkt_max']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
