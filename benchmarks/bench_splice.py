"""SpLiCE solver benchmark: lance_concepts' batched working-set solver vs the authors' solvers and
well-kept Lasso libraries, on a coherent CLIP-like dictionary.

Usage:
    .venv/bin/python benchmarks/bench_splice.py [--concepts 10000] [--dim 512] [--images 4096]
        [--l1 0.25] [--subset 64] [--ref 48] [--repeats 3] [--admm-images 8] [--admm-seconds 300]
        [--json out.json]

Problem: ``tests/splice_problems.py``'s coherent dictionary (shared component + low-rank structure +
near-synonym clusters + noise; after centring the rows are highly correlated, like CLIP text
embeddings) and CLIP-like image embeddings (a few concepts + noise around an image mean of norm 0.56).

Methods (all solve ``min_{w>=0} ||D^T w - v||^2 + l1 ||w||_1`` on the same centred inputs):
  ours           SpliceDecomposer.decompose, batches of 1,024, kkt_tol 1e-4 (default settings)
  sklearn-1e-6   the authors' default: sklearn Lasso(alpha=l1/(2d), positive, tol=1e-6, max_iter=10000), per image
  skglm, celer   positive Lasso per image, tol 1e-6 (and 1e-4), warm-up excluded (numba JIT)
  admm           the authors' ADMM as they describe it: rho=5, tol 1e-6 (primal and dual residual
                 norms), up to 2000 iterations, random start, x-update by a Cholesky factor of the
                 c x c matrix 2 D D^T + rho I; batch of --admm-images images, capped at --admm-seconds
  reference      sklearn Lasso tol=1e-8, max_iter=100000 on the first --ref images (accuracy only)

Speed: ours and the per-image baselines run interleaved in one process, --repeats times (medians;
the machine is shared). Peak RSS: each method once more in its own child process on the same data (VmHWM, and the
same process's RSS before solving). Accuracy on the first --ref images against the reference: mean
relative objective difference (negative: lower than the reference), mean support Jaccard, worst KKT
violation (gradient units).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lance_concepts.concepts.splice import SpliceDecomposer, kkt_violation, lasso_objective, prepare_dictionary
from tests.splice_problems import clip_like_images, coherent_dictionary, image_mean  # noqa: E402


def problem(args):
    if args.data:  # a child process: load what the parent generated (keeps generation out of peak RSS)
        with np.load(args.data) as f:
            E, mean, X = f["E"], f["mean"], f["X"]
    else:
        E = coherent_dictionary(args.concepts, args.dim, seed=0)
        mean = image_mean(args.dim, seed=1)
        X = clip_like_images(prepare_dictionary(E), args.images, mean, seed=2)
    dec = SpliceDecomposer(E, mean, args.l1).fit()
    V = dec.transform_input(X)
    return E, mean, X, dec, V


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it is not inherited from the parent at exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- the methods

def run_ours(dec, X):
    return dec.decompose(X)  # scipy.sparse CSR; densified outside the timed region


def run_sklearn(D, V, lam, tol=1e-6, max_iter=10_000):
    from sklearn.linear_model import Lasso

    X = np.asarray(D, np.float64).T
    out = np.zeros((len(V), D.shape[0]))
    for i, v in enumerate(np.asarray(V, np.float64)):
        m = Lasso(alpha=lam / (2 * D.shape[1]), positive=True, fit_intercept=False, tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(X, v)
        out[i] = m.coef_
    return out


def run_lib(name, D, V, lam, tol):
    if name == "skglm":
        from skglm import Lasso
    else:
        from celer import Lasso
    X = np.asfortranarray(np.asarray(D, np.float64).T)
    out = np.zeros((len(V), D.shape[0]))
    for i, v in enumerate(np.asarray(V, np.float64)):
        m = Lasso(alpha=lam / (2 * D.shape[1]), positive=True, fit_intercept=False, tol=tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(X, v)
        out[i] = m.coef_
    return out


def run_admm(D, V, lam, rho=5.0, tol=1e-6, max_iter=2000, seconds=300.0, seed=0):
    """The authors' ADMM as described (batched over images; factorisation of a c x c matrix)."""
    import torch

    C = torch.from_numpy(np.asarray(D, np.float32))
    Vt = torch.from_numpy(np.asarray(V, np.float32))
    c = C.shape[0]
    t0 = time.perf_counter()
    Q = 2 * C @ C.T + rho * torch.eye(c)
    L = torch.linalg.cholesky(Q)
    del Q
    t_factor = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((c, len(V)), generator=g)
    u = torch.randn((c, len(V)), generator=g)
    Cb2 = 2 * (C @ Vt.T)
    it, converged = 0, False
    t1 = time.perf_counter()
    while it < max_iter:
        z_old = z
        x = torch.cholesky_solve(Cb2 + rho * (z - u), L)
        z = torch.clamp(x + u - lam / rho, min=0)
        u = u + x - z
        it += 1
        if (torch.linalg.norm(x - z, dim=0).max() < tol) and (torch.linalg.norm(rho * (z - z_old), dim=0).max() < tol):
            converged = True
            break
        if time.perf_counter() - t1 > seconds:
            break
    t_iter = time.perf_counter() - t1
    return z.T.numpy().astype(np.float64), {"factor_s": t_factor, "iter_s": t_iter, "iterations": it,
                                             "converged": converged, "s_per_iteration": t_iter / max(it, 1)}


# ---------------------------------------------------------------------------- accuracy

def accuracy(D, V, W, ref, lam):
    o = lasso_objective(D, V, W, lam)
    o_ref = lasso_objective(D, V, ref, lam)
    A, B = W > 0, ref > 0
    union = (A | B).sum(1)
    jac = np.where(union == 0, 1.0, (A & B).sum(1) / np.maximum(union, 1))
    return {"rel_objective_mean": float(((o - o_ref) / o_ref).mean()),
            "rel_objective_max": float(((o - o_ref) / o_ref).max()),
            "jaccard_mean": float(jac.mean()), "jaccard_min": float(jac.min()),
            "kkt_max": float(kkt_violation(D, V, W, lam).max()),
            "nnz_mean": float(A.sum(1).mean())}


# ---------------------------------------------------------------------------- workers

def worker(args):
    """One method once, in this (child) process: peak RSS and its own timing."""
    E, mean, X, dec, V = problem(args)
    D = dec.dictionary_
    base, peak0 = rss_mib(), peak_rss_mib()
    if args.worker == "ours":
        dec.decompose(X[:64])
        t0 = time.perf_counter(); run_ours(dec, X); dt = time.perf_counter() - t0; n = len(X)
    elif args.worker == "sklearn":
        t0 = time.perf_counter(); run_sklearn(D, V[:args.subset], args.l1); dt = time.perf_counter() - t0; n = args.subset
    elif args.worker in ("skglm", "celer"):
        run_lib(args.worker, D, V[:2], args.l1, 1e-6)
        t0 = time.perf_counter(); run_lib(args.worker, D, V[:args.subset], args.l1, 1e-6); dt = time.perf_counter() - t0
        n = args.subset
    elif args.worker == "admm":
        W, info = run_admm(D, V[:args.admm_images], args.l1, seconds=args.admm_seconds)
        ref = run_sklearn(D, V[:args.admm_images], args.l1, tol=1e-8, max_iter=100_000)
        print(json.dumps({"rss_before_mib": base, "peak_before_mib": peak0, "peak_rss_mib": peak_rss_mib(), **info,
                          "accuracy": accuracy(D, V[:args.admm_images], W, ref, args.l1)}))
        return
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    print(json.dumps({"rss_before_mib": base, "peak_before_mib": peak0, "peak_rss_mib": peak_rss_mib(),
                      "seconds": dt, "images": n}))


def child(args, method, extra=()):
    cmd = [sys.executable, __file__, "--worker", method, "--concepts", str(args.concepts), "--dim", str(args.dim),
           "--images", str(args.images), "--l1", str(args.l1), "--subset", str(args.subset),
           "--admm-images", str(args.admm_images), "--admm-seconds", str(args.admm_seconds), "--data", args.data,
           *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--l1", type=float, default=0.25)
    ap.add_argument("--subset", type=int, default=64, help="images per repeat for the per-image baselines")
    ap.add_argument("--ref", type=int, default=48, help="images with a tight sklearn reference (accuracy)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--admm-images", type=int, default=8)
    ap.add_argument("--admm-seconds", type=float, default=300.0)
    ap.add_argument("--skip", default="", help="comma-separated methods to leave out")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    skip = set(filter(None, args.skip.split(",")))
    libs = [name for name in ("skglm", "celer") if name not in skip]
    for name in list(libs):
        try:
            __import__(name)
        except ImportError:
            print(f"[{name} not installed: left out]", file=sys.stderr)
            libs.remove(name)

    load_start = os.getloadavg()
    t_start = time.time()
    E, mean, X, dec, V = problem(args)
    D = dec.dictionary_
    k = min(2000, len(D))
    G = D[:k].astype(np.float64) @ D[:k].astype(np.float64).T
    iu = np.triu_indices(k, 1)
    print(f"problem: {args.concepts} concepts x {args.dim} dims, {args.images} images, l1={args.l1}; "
          f"centred dictionary pairwise cosine std {G[iu].std():.3f}, max {G[iu].max():.3f}", file=sys.stderr)

    # --- speed, interleaved
    dec.decompose(X[:64])  # warm-up (torch threads, allocations)
    for name in libs:
        run_lib(name, D, V[:2], args.l1, 1e-6)  # numba JIT warm-up
    sub = V[: args.subset]
    tols = {"1e-6": 1e-6, "1e-4": 1e-4}
    times = {k: [] for k in ["ours", "sklearn-1e-6", *[f"{n}-{t}" for n in libs for t in tols]]}
    outputs = {}
    cpu = {"ours": [], "sklearn-1e-6": []}
    for rep in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        outputs["sklearn-1e-6"] = run_sklearn(D, sub, args.l1)
        times["sklearn-1e-6"].append(time.perf_counter() - t0); cpu["sklearn-1e-6"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        outputs["ours"] = run_ours(dec, X)
        times["ours"].append(time.perf_counter() - t0); cpu["ours"].append(time.process_time() - c0)
        stats = dec.last_stats_
        for name in libs:
            for tname, tol in tols.items():
                key = f"{name}-{tname}"
                t0 = time.perf_counter(); outputs[key] = run_lib(name, D, sub, args.l1, tol); times[key].append(time.perf_counter() - t0)
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    outputs["ours"] = outputs["ours"].toarray()
    n_img = {k: (args.images if k == "ours" else args.subset) for k in times}
    rate = {k: n_img[k] / statistics.median(v) for k, v in times.items()}
    per_rep_ratio = [args.images / o / (args.subset / s) for o, s in zip(times["ours"], times["sklearn-1e-6"])]

    # --- accuracy against a tight reference on the first --ref images
    R = min(args.ref, args.subset)
    ref = run_sklearn(D, V[:R], args.l1, tol=1e-8, max_iter=100_000)
    acc = {k: accuracy(D, V[:R], W[:R], ref, args.l1) for k, W in outputs.items()}

    # --- peak RSS, one child process per method, on the same data (saved once); ADMM (long) last
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args.data = str(Path(tmp) / "problem.npz")
        np.savez(args.data, E=E, mean=mean, X=X)
        rss = {"ours": child(args, "ours"), "sklearn-1e-6": child(args, "sklearn")}
        for name in libs:
            rss[f"{name}-1e-6"] = child(args, name)
        admm = None if "admm" in skip else child(args, "admm")
        args.data = None

    result = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench_splice.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "problem": vars(args) | {"worker": None, "data": None},
        "seconds_total": time.time() - t_start,
        "times": times, "images_per_s": rate, "ours_vs_sklearn_per_repeat": per_rep_ratio,
        "cpu_seconds": cpu, "images_per_cpu_s": {k: n_img[k] / statistics.median(v) for k, v in cpu.items()},
        "ours_stats": {"rounds_mean": float(stats["rounds"].mean()), "rounds_max": int(stats["rounds"].max()),
                       "kkt_max": float(stats["kkt"].max()), "unconverged": int(stats["unconverged"]),
                       "nnz_mean": float((outputs["ours"] > 0).sum(1).mean())},
        "accuracy_vs_reference": acc, "peak_rss": rss, "admm": admm,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(res) -> str:
    rate, acc, rss = res["images_per_s"], res["accuracy_vs_reference"], res["peak_rss"]
    ours = rate["ours"]
    lines = ["| method | embeddings/s (median) | ours is x faster | objective vs reference (mean rel.) | support Jaccard (mean) | worst KKT | RSS MiB before solving -> peak |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in rate:
        a = acc.get(k, {})
        r = rss.get(k) or rss.get(k.replace("-1e-4", "-1e-6")) if not k.endswith("-1e-4") else None
        rs = f"{r['rss_before_mib']:.0f} -> {r['peak_rss_mib']:.0f}" if r and "peak_rss_mib" in r else ""
        lines.append(f"| {k} | {rate[k]:.1f} | {ours / rate[k]:.1f} | {a.get('rel_objective_mean', float('nan')):.1e} | "
                     f"{a.get('jaccard_mean', float('nan')):.3f} | {a.get('kkt_max', float('nan')):.1e} | {rs} |")
    ad = res.get("admm")
    if ad and "iterations" in ad:
        n = res["problem"]["admm_images"]
        lines.append(f"| admm (rho 5, tol 1e-6) | {n / ad['iter_s']:.2f} ({ad['iterations']} iterations"
                     f"{', converged' if ad['converged'] else ', not converged'}; + {ad['factor_s']:.0f} s factorisation) | "
                     f"{ours / (n / ad['iter_s']):.0f} | {ad['accuracy']['rel_objective_mean']:.1e} | "
                     f"{ad['accuracy']['jaccard_mean']:.3f} | {ad['accuracy']['kkt_max']:.1e} | "
                     f"{ad['rss_before_mib']:.0f} -> {ad['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
