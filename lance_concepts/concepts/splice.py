"""SpLiCE: sparse, non-negative decomposition of CLIP image embeddings into concept embeddings.

Method (faithful to Bhalla et al., NeurIPS 2024, and to the authors' code)
--------------------------------------------------------------------------
Dictionary: ``E = normalize(text_embeddings)``, ``D = normalize(E - E.mean(0))`` (rows = concepts,
the concept mean is the mean over the vocabulary given). For each raw image embedding ``x``::

    z = normalize(x);  v = normalize(z - image_mean)
    w = argmin_{w >= 0} ||D^T w - v||^2 + lam * ||w||_1          (lam = ``l1_penalty``)
    z_hat = normalize(normalize(w @ D) + image_mean);  cosine = z_hat . z

``lam`` is the authors' ``l1_penalty``. The paper writes the penalty as ``2 * lambda * ||w||_1``, so
paper ``lambda = lam / 2``; scikit-learn's ``Lasso(positive=True, fit_intercept=False)`` on
``(D^T, v)`` solves the same problem with ``alpha = lam / (2 * d)``. The image mean is *not*
renormalised (the authors' MSCOCO mean has norm ~0.56).

Solver (the improvement; the objective is unchanged)
----------------------------------------------------
The authors solve one image at a time with scikit-learn's coordinate descent over all ``c`` concepts
(~28 embeddings/s for 10k concepts on 2 cores), or with an ADMM that factorises a ``c x c`` matrix.
Here a batch of images (``batch_size``, default 1,024) is solved at once with a *working-set*
method: its full-dictionary work is a few dense GEMMs, its per-image work is on small problems.

1. ``C = V D^T`` for the whole batch: one BLAS GEMM (torch; CPU or CUDA), into a reused buffer,
   with the dictionary padded to a multiple of 16 rows (MKL's fast path).
2. Per image, a working set ``W``: first the ``working_set`` (32) concepts with the largest
   ``C - lam/2``; in later rounds the current support plus its strongest KKT violators
   (``max(min_add, (grow - 1) |S|)`` of them, only those with a positive violation). On ``W`` the
   problem is ``min 0.5 w'G w - q'w, w >= 0`` with ``G = D_W D_W^T`` and ``q = D_W v - lam/2``.
   ``G`` is incremental (the support block is kept from the previous round; only ``D_N D_W^T`` for
   the new candidates is computed, by a batched ``bmm`` on gathered rows) and ``q`` comes for free
   from the round's GEMM (``q_j = d_j.r - lam/2 + G_jS w_S``).
3. The small problems are solved *exactly*, all images in lock-step (numpy), in chunks of images
   with similar working-set sizes (the padded width is a chunk's largest set): a few sweeps of
   vectorised coordinate descent (float32) guess the support, then block principal pivoting
   (Kim & Park's NNLS method, with Murty's single-pivot backup rule, which guarantees finite
   termination for a positive-definite ``G``) polishes it in float64: solve ``G_FF w_F = q_F`` on the
   guessed support (one batched LAPACK call on the support block), swap the variables that violate
   primal or dual feasibility, repeat. With the CD guess this is usually one or two solves.
4. Optimality is *verified on the full dictionary*: residuals ``R = V - W D`` (a sparse product)
   and one GEMM ``R D^T`` give every concept's KKT residual. An image is accepted when its largest
   violation, in the gradient units of the objective (``lam - 2 d_j.r``), is at most ``kkt_tol``;
   otherwise its violators enter its working set, and only the images not yet accepted go round
   again (``max_rounds`` caps this).

Why this road: CLIP vocabularies are coherent (rows highly correlated), so the support of a solution
is not the top of the initial correlations (support concepts are often ranked in the hundreds or
thousands), and any method that touches the full dictionary per image per iteration (scikit-learn's
CD, homotopy/LARS, skglm, celer) pays ``c x d`` matrix-vector products, which are memory-bound.
Batched into GEMMs they are compute-bound; an image needs about 4 of them at lam 0.25 on a 10k
coherent dictionary (the last one is the verification), and the GEMMs are about half of the time.
Measured and left out: gap-safe screening (after one working-set round it screens nothing, after
two ~30% of the concepts per image, and the union over a batch is the whole vocabulary, so it does
not shrink a batched GEMM); larger working sets (64 or 128 candidates barely reduce the rounds,
4.1 -> 3.9, and multiply the Gram work); a ``c x c`` Gram (400 MB for 10k concepts; updating
residual correlations from Gram rows is a memory-bound sparse product, no cheaper than a GEMM round);
per-image compiled NNLS calls (scipy's ``nnls``: ~0.15 ms per call, slower than the lock-step batch).
No ``c x c`` matrix is ever formed; memory is ``O(batch_size * c)``.

Results are exact solutions of the stated problem up to ``kkt_tol`` (float32 round-off in the
dictionary products is ~1e-6 at d = 512: keep ``kkt_tol`` above ~1e-5), deterministic for a given input and
batch size, and agree with scikit-learn's tightly converged solution (tests: objective within 1e-4
relative, support Jaccard >= 0.95, on random, coherent and real demo-model dictionaries).

Duplicate dictionary rows are solved once; their weight goes to the first occurrence. A concept
whose centred embedding is zero (only possible in a one-concept vocabulary) is never used.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..models.encoder import resolve_device
from ..threads import hot_path

__all__ = [
    "SpliceDecomposer",
    "decompose",
    "estimate_image_mean",
    "load_image_mean",
    "kkt_violation",
    "lasso_objective",
    "prepare_dictionary",
    "center_embeddings",
    "SpliceConvergenceWarning",
    "SpliceMeanWarning",
    "MIN_MEAN_ROWS",
    "l1_for_target_l0",
]


def concept_mean(dictionary) -> np.ndarray:
    """Mean of the L2-normalised concept embeddings: the "text" centre of concept arithmetic."""
    return _unit_rows(_to_numpy(dictionary, "dictionary"), "dictionary").mean(0).astype(np.float32)


# solver constants (see the module docstring and the methods that use them for the reasons)
POLISH_FRACTION = 0.3  # exact polish once a round brings at most this share of new candidates
PROX_RIDGE = 1e-3  # proximal ridge for over-complete working sets (the Gram's diagonal is 1)
PROX_STEPS = 8  # proximal steps before the exact pivoting solve on their support
PROX_STOP = 1e-9
KKT_FLOOR = 2e-7  # float32 dictionary products cannot certify below this (gradient units)
BOOST_AT = 10.0  # grow faster when the worst violation exceeds this many l1 penalties
BOOST_MAX = 4.0


class SpliceConvergenceWarning(UserWarning):
    """Some images did not reach the KKT tolerance within ``max_rounds`` working-set rounds."""


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------

def _to_numpy(a, name: str, *, ndim: int | tuple[int, ...] = 2) -> np.ndarray:
    """numpy / torch / array-like -> float64 numpy array, validated (finite, right rank)."""
    if a is None:
        raise InputError(f"{name} is missing")
    try:
        import torch

        if isinstance(a, torch.Tensor):
            a = a.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency of the project
        pass
    if sp.issparse(a):
        a = a.toarray()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} is not a numeric array: {exc}") from None
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        raise InputError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"{name} contains NaN or infinite values (first at index {tuple(int(i) for i in bad)})")
    return arr


def _unit_rows(a: np.ndarray, name: str, *, allow_zero: bool = False) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    zero = norms[..., 0] == 0
    if zero.any() and not allow_zero:
        i = int(np.flatnonzero(zero.reshape(-1))[0])
        raise InputError(f"{name}: row {i} has zero norm and cannot be normalised")
    return a / np.where(norms == 0, 1.0, norms)


def prepare_dictionary(dictionary) -> np.ndarray:
    """Raw concept text embeddings (c, d) -> SpLiCE dictionary ``normalize(E - E.mean(0))`` (float32).

    ``E`` is the row-normalised input. A row whose centred embedding is zero stays zero (it can never
    receive weight)."""
    E = _unit_rows(_to_numpy(dictionary, "dictionary"), "dictionary")
    if E.shape[0] == 0:
        raise InputError("dictionary is empty (no concepts)")
    Dc = E - E.mean(0)
    norms = np.linalg.norm(Dc, axis=1, keepdims=True)
    tiny = norms[:, 0] <= 1e-12
    Dc[tiny] = 0.0
    norms[tiny] = 1.0
    return (Dc / norms).astype(np.float32)


MIN_MEAN_ROWS = 100
"""Fewest embeddings an image mean should be estimated from (see :func:`estimate_image_mean`)."""


class SpliceMeanWarning(UserWarning):
    """The image mean was estimated from fewer than :data:`MIN_MEAN_ROWS` embeddings."""


def estimate_image_mean(embeddings) -> np.ndarray:
    """Mean of the L2-normalised embeddings (d,), float32; like the authors' MSCOCO means, not renormalised.

    Refused below 2 rows: centring one embedding by itself leaves rounding noise, which would be
    normalised and decomposed as if it were signal. Below :data:`MIN_MEAN_ROWS` (100) a
    :class:`SpliceMeanWarning` is emitted: the estimate is off by about ``1/sqrt(n)`` of a centred
    embedding's norm (10% at 100 rows), and each image is partly centred by itself."""
    X = _to_numpy(embeddings, "embeddings", ndim=(1, 2))
    Z = _unit_rows(X.reshape(-1, X.shape[-1]) if X.ndim == 1 else X, "embeddings")
    n = Z.shape[0]
    if n < 2:
        raise InputError(
            f"cannot estimate an image mean from {n} embedding{'s' if n != 1 else ''}: centring an image by "
            f"its own embedding leaves only rounding noise. Pass image_mean (a reference mean, e.g. the authors' "
            f"*_image_mean.npy) or fit on at least {MIN_MEAN_ROWS} embeddings")
    if n < MIN_MEAN_ROWS:
        warnings.warn(
            f"image mean estimated from only {n} embeddings (fewer than {MIN_MEAN_ROWS}): it is off by about "
            f"{1 / math.sqrt(n):.0%} of a centred embedding and the decompositions depend on this batch. "
            "Pass image_mean or fit on more embeddings", SpliceMeanWarning, stacklevel=2)
    return Z.mean(0).astype(np.float32)


def load_image_mean(path) -> np.ndarray:
    """A reference image mean saved with ``np.save`` (e.g. the authors' ``*_image_mean.npy``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image mean file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise InputError(f"cannot read image mean {path}: {exc}") from None
    return _to_numpy(np.asarray(arr).reshape(-1), f"image mean {path.name}", ndim=1).astype(np.float32)


def center_embeddings(embeddings, image_mean) -> np.ndarray:
    """Raw image embeddings (n, d) -> ``normalize(normalize(x) - image_mean)`` (float32)."""
    X = _to_numpy(embeddings, "embeddings")
    m = _to_numpy(image_mean, "image_mean", ndim=1)
    if X.shape[1] != m.shape[0]:
        raise InputError(f"embeddings have dimension {X.shape[1]} but image_mean has {m.shape[0]}")
    Z = _unit_rows(X, "embeddings")
    return _unit_rows(Z - m, "centred embeddings").astype(np.float32)


def _check_real(name: str, value, *, low: float, inclusive: bool = False) -> None:
    """A real number above ``low``; bools are refused (``True`` is not a penalty of 1.0)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        ok = math.isfinite(value) and (value >= low if inclusive else value > low)
    if not ok:
        bound = f">= {low:g}" if inclusive else ("positive" if low == 0 else f"> {low:g}")
        raise InputError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_int(name: str, value, *, low: int) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= low
    if not ok:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


# --------------------------------------------------------------------------------------------
# optimality measures (float64, chunked; used by tests and available to users)
# --------------------------------------------------------------------------------------------

def _weights_dense_rows(weights, rows: slice, c: int) -> np.ndarray:
    if sp.issparse(weights):
        return np.asarray(weights[rows].toarray(), dtype=np.float64)
    return np.asarray(weights[rows], dtype=np.float64).reshape(-1, c)


def kkt_violation(D, V, weights, l1_penalty: float, *, chunk: int = 256) -> np.ndarray:
    """Largest KKT violation per image of ``min_{w>=0} ||D^T w - v||^2 + lam ||w||_1``.

    ``D`` (c, d) is the prepared (centred, normalised) dictionary, ``V`` (n, d) the centred image
    embeddings, ``weights`` (n, c) dense or sparse. With ``g_j = lam - 2 d_j^T (v - D^T w)`` (the
    gradient of the smooth part plus the penalty), optimality is ``g_j = 0`` where ``w_j > 0`` and
    ``g_j >= 0`` where ``w_j = 0``; the violation is ``max(max_{w_j>0} |g_j|, max_{w_j=0} -g_j, 0)``,
    plus ``-min(w)`` if some weight is negative. Computed in float64 on the full dictionary."""
    D = np.asarray(D, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64).reshape(-1, D.shape[1])
    n, c = V.shape[0], D.shape[0]
    out = np.zeros(n)
    for s in range(0, n, chunk):
        rows = slice(s, min(n, s + chunk))
        W = _weights_dense_rows(weights, rows, c)
        R = V[rows] - W @ D
        g = l1_penalty - 2.0 * (R @ D.T)
        pos = W > 0
        viol = np.where(pos, np.abs(g), np.maximum(-g, 0.0)).max(1) if c else np.zeros(len(W))
        neg = np.maximum(-W.min(1), 0.0) if c else 0.0
        out[rows] = np.maximum(viol, neg)
    return out


def lasso_objective(D, V, weights, l1_penalty: float, *, chunk: int = 1024) -> np.ndarray:
    """``||D^T w - v||^2 + lam * ||w||_1`` per image (float64)."""
    D = np.asarray(D, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64).reshape(-1, D.shape[1])
    n, c = V.shape[0], D.shape[0]
    out = np.zeros(n)
    for s in range(0, n, chunk):
        rows = slice(s, min(n, s + chunk))
        W = _weights_dense_rows(weights, rows, c)
        R = W @ D - V[rows]
        out[rows] = (R * R).sum(1) + l1_penalty * np.abs(W).sum(1)
    return out


# --------------------------------------------------------------------------------------------
# small-problem solvers: all images of a round in lock-step, numpy float64
# --------------------------------------------------------------------------------------------

def _batched_matvec(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.matmul(G, x[:, :, None])[:, :, 0]


def _cd_sweeps(G: np.ndarray, q: np.ndarray, x: np.ndarray, sweeps: int) -> np.ndarray:
    """Coordinate descent on ``0.5 x'Gx - q'x, x >= 0`` for all images at once, in float32.

    Only used to guess the support for the exact pivoting polish, so single precision is enough."""
    if sweeps <= 0 or x.shape[1] == 0:
        return x
    K = x.shape[1]
    G = G.astype(np.float32, copy=False)
    x = x.astype(np.float32)
    g = q.astype(np.float32) - np.matmul(G, x[:, :, None])[:, :, 0]  # negative gradient
    inv_diag = 1.0 / np.diagonal(G, axis1=1, axis2=2)
    tmp = np.empty_like(g)
    for _ in range(sweeps):
        for j in range(K):
            xj = x[:, j]
            new = xj + g[:, j] * inv_diag[:, j]
            np.maximum(new, 0.0, out=new)
            delta = new - xj
            x[:, j] = new
            np.multiply(G[:, j, :], delta[:, None], out=tmp)
            g -= tmp
    return x.astype(np.float64)


def _masked_solve(G: np.ndarray, q: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Solve ``G_FF z_F = q_F`` per image (z = 0 off F) as one batched LAPACK call on the F block."""
    n, K = q.shape
    order = _front(F)  # the F variables first, trimmed to the largest |F|
    p = order.shape[1]
    z = np.zeros((n, K))
    if p == 0:
        return z
    Fp = np.take_along_axis(F, order, 1)
    Gp = _sub_gram(G, order)
    M = np.where(Fp[:, :, None] & Fp[:, None, :], Gp, 0.0)  # float64 for the solve
    diag = np.arange(p)
    M[:, diag, diag] += np.where(Fp, 1e-12, 1.0)  # identity off F; a 1e-12 ridge keeps G_FF regular
    rhs = np.where(Fp, np.take_along_axis(q, order, 1), 0.0)
    try:
        zp = np.linalg.solve(M, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        zp = np.stack([np.linalg.lstsq(M[i], rhs[i], rcond=None)[0] for i in range(n)])
    np.put_along_axis(z, order, np.where(Fp, zp, 0.0), 1)
    return np.where(F, z, 0.0)


def _bpp(G: np.ndarray, q: np.ndarray, F: np.ndarray, valid: np.ndarray, eps: float, max_iter: int):
    """Block principal pivoting for ``min 0.5 x'Gx - q'x, x >= 0`` (Kim & Park 2011), batched.

    Returns (x, converged). Finite termination for positive-definite G thanks to Murty's backup
    rule; ``max_iter`` is a safety net (the caller keeps its previous feasible point)."""
    n, K = q.shape
    x = np.zeros_like(q)
    converged = np.zeros(n, dtype=bool)
    F = F & valid
    alpha = np.full(n, 3)
    beta = np.full(n, K + 1)
    act = np.arange(n)
    for _ in range(max_iter):
        Ga, qa, Fa = G[act], q[act], F[act]
        z = _masked_solve(Ga, qa, Fa)
        y = _batched_matvec(Ga, z) - qa
        bad = (Fa & (z < 0.0)) | (~Fa & valid[act] & (y < -eps))
        nbad = bad.sum(1)
        ok = nbad == 0
        if ok.any():
            x[act[ok]] = z[ok]
            converged[act[ok]] = True
        rest = ~ok
        if not rest.any():
            break
        act, bad, nbad = act[rest], bad[rest], nbad[rest]
        a, b = alpha[act], beta[act]
        full = nbad < b
        dec = ~full & (a >= 1)
        single = ~full & ~dec
        beta[act[full]] = nbad[full]
        alpha[act[full]] = 3
        alpha[act[dec]] = a[dec] - 1
        flip = bad.copy()
        if single.any():
            last = K - 1 - np.argmax(bad[single][:, ::-1], axis=1)
            flip[single] = False
            flip[np.flatnonzero(single), last] = True
        F[act] ^= flip
    return x, converged


def _prox_bpp(G, q, x0, valid, eps, max_iter, mu: float = PROX_RIDGE, steps: int = PROX_STEPS):
    """Exact solve of ``min 0.5 x'Gx - q'x, x >= 0`` for a positive SEMI-definite ``G``.

    Why: once a working set has more variables than dimensions its Gram is singular (and float32
    round-off makes it slightly indefinite), and block principal pivoting loses its termination
    guarantee. Proximal-point steps ``x+ = argmin 0.5 x'(G + mu I)x - (q + mu x)'x`` are positive
    definite problems, solved exactly by pivoting; their fixed point is a solution of the original
    problem and each step lowers its objective. They shrink the support to at most ``d`` independent
    variables (a Lasso solution has one), after which one plain pivoting solve on the proximal
    support gives the exact solution (accepted only if it terminates). Returns (x, converged)."""
    K = q.shape[1]
    Gm = G + mu * np.eye(K)[None]
    x, ok = x0.copy(), np.zeros(len(q), bool)
    for _ in range(steps):
        xn, ok = _bpp(Gm, q + mu * x, x > 0, valid, eps, max_iter)
        xn = np.where(ok[:, None], xn, x)
        moved = np.abs(xn - x).max(1) if K else np.zeros(len(q))
        x = xn
        if moved.max(initial=0.0) < PROX_STOP:
            break
    xb, exact = _bpp(G, q, x > 0, valid, eps, max_iter)
    return np.where(exact[:, None], xb, x), ok | exact


# --------------------------------------------------------------------------------------------
# the decomposer# --------------------------------------------------------------------------------------------
# the decomposer
# --------------------------------------------------------------------------------------------


class SpliceDecomposer:
    """SpLiCE decomposition of CLIP image embeddings over a concept dictionary (scikit-learn style).

    Parameters
    ----------
    dictionary : (c, d) array or torch tensor
        RAW concept text embeddings (un-normalised, un-centred), one row per concept. The SpLiCE
        dictionary ``normalize(E - E.mean(0))`` (``E`` = normalised rows) is built in :meth:`fit`.
    image_mean : (d,) vector, path to a ``.npy`` file, or ``None`` / ``"estimate"``
        The mean of L2-normalised image embeddings used for centring (not renormalised). With
        ``None``/``"estimate"`` it is estimated as the mean of the normalised embeddings given to
        :meth:`fit`, or, if :meth:`fit` got none, to the first :meth:`decompose` call; it is then
        kept. Fit on the whole collection for a mean that does not depend on the first batch.
    l1_penalty : float
        ``lam`` of ``||D^T w - v||^2 + lam ||w||_1`` (authors' default 0.25; paper lambda = lam/2;
        sklearn ``alpha = lam / (2 d)``). Larger means sparser.
    kkt_tol : float
        Stopping rule, RELATIVE to ``l1_penalty``: an image's solution is accepted when its largest
        KKT violation on the full dictionary (gradient units, see :func:`kkt_violation`) is at most
        ``kkt_threshold_ = max(kkt_tol * l1_penalty, KKT_FLOOR)``. Relative because an absolute
        tolerance that is loose at l1 = 0.25 is 10% of the penalty at l1 = 1e-3. The default 4e-4
        is the former absolute 1e-4 at the authors' l1 = 0.25. ``KKT_FLOOR`` (2e-7) is what the
        float32 dictionary products can certify.
    max_rounds : int
        Working-set rounds (one dictionary GEMM each) before giving up on an image; the unfinished
        ones keep their best feasible solution and a :class:`SpliceConvergenceWarning` is emitted.
    working_set, grow, min_add : int, float, int
        Initial working-set size; later rounds use ``support + max(min_add, (grow - 1) * |support|)``
        candidates (the strongest violators).
    cd_sweeps : int
        Coordinate-descent sweeps before the exact pivoting polish in each round.
    max_pivots : int
        Safety cap on block-principal-pivoting iterations per round.
    batch_size : int
        Images per batch (bounds memory: about ``batch_size * c * 4`` bytes for the correlations).
    device : "auto" | "cpu" | "cuda[:i]"
        Where the dictionary products run (torch). Small problems always run on the CPU.
    concepts : optional list of concept names (same order as ``dictionary``), for :meth:`intervene`.
    """

    def __init__(
        self,
        dictionary,
        image_mean=None,
        l1_penalty: float = 0.25,
        *,
        kkt_tol: float = 4e-4,
        max_rounds: int = 50,
        working_set: int = 32,
        grow: float = 2.0,
        min_add: int = 24,
        cd_sweeps: int = 8,
        max_pivots: int = 100,
        batch_size: int = 1024,
        device: str = "auto",
        concepts: Sequence[str] | None = None,
    ):
        self.dictionary = dictionary
        self.image_mean = image_mean
        self.l1_penalty = l1_penalty
        self.kkt_tol = kkt_tol
        self.max_rounds = max_rounds
        self.working_set = working_set
        self.grow = grow
        self.min_add = min_add
        self.cd_sweeps = cd_sweeps
        self.max_pivots = max_pivots
        self.batch_size = batch_size
        self.device = device
        self.concepts = concepts

    # the CUDA code path (torch gathers and sparse products) also runs on the CPU when set (tests)
    _torch_only = False

    # ---------------------------------------------------------------- fitting
    def _check_params(self):
        _check_real("l1_penalty", self.l1_penalty, low=0.0)
        _check_real("kkt_tol", self.kkt_tol, low=0.0)
        _check_real("grow", self.grow, low=1.0, inclusive=True)
        for name in ("batch_size", "max_rounds", "working_set", "min_add", "max_pivots"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("cd_sweeps", self.cd_sweeps, low=0)

    def fit(self, embeddings=None) -> "SpliceDecomposer":
        """Build the dictionary (``dictionary_``, ``concept_mean_``) and fix ``image_mean_``."""
        import torch

        self._check_params()
        raw = _to_numpy(self.dictionary, "dictionary")
        if raw.shape[0] == 0 or raw.shape[1] == 0:
            raise InputError(f"dictionary is empty: shape {raw.shape}")
        E = _unit_rows(raw, "dictionary")
        self.concept_mean_ = E.mean(0).astype(np.float32)
        self.dictionary_ = prepare_dictionary(raw)
        self.n_concepts_, self.dim_ = self.dictionary_.shape
        if self.concepts is not None and len(self.concepts) != self.n_concepts_:
            raise InputError(f"{len(self.concepts)} concept names for {self.n_concepts_} dictionary rows")

        # unique, non-zero rows: the solver's dictionary; weights map back to first occurrences
        D = self.dictionary_
        nonzero = np.flatnonzero(np.abs(D).sum(1) > 0)
        _, first, inverse = np.unique(D[nonzero], axis=0, return_index=True, return_inverse=True)
        keep = np.sort(first)  # positions in `nonzero`, first occurrences, in dictionary order
        self._solver_to_concept = nonzero[keep]
        self.n_duplicates_ = int(len(nonzero) - len(keep))
        self.kkt_threshold_ = max(float(self.kkt_tol) * float(self.l1_penalty), KKT_FLOOR)
        self.device_ = resolve_device(self.device)
        # + zero padding rows (at least one: the padding concept of the solver's ragged arrays), up to a
        # multiple of 16 rows, which keeps the dictionary GEMM on MKL's fast path
        n_pad = 16 - len(keep) % 16
        Du = np.vstack([D[self._solver_to_concept], np.zeros((n_pad, self.dim_), np.float32)])
        self._Dn = np.ascontiguousarray(Du)
        self._Du = torch.from_numpy(self._Dn).to(self.device_)
        self._cu = len(keep)

        m = self.image_mean
        if isinstance(m, (str, os.PathLike)) and str(m) != "estimate":
            m = load_image_mean(m)
        if m is None or (isinstance(m, str) and m == "estimate"):
            self.image_mean_ = estimate_image_mean(embeddings) if embeddings is not None and len(embeddings) else None
        else:
            m = _to_numpy(m, "image_mean", ndim=(1, 2)).reshape(-1)
            if m.shape[0] != self.dim_:
                raise InputError(f"image_mean has dimension {m.shape[0]} but the dictionary has {self.dim_}")
            self.image_mean_ = m.astype(np.float32)
        return self

    def set_l1_penalty(self, l1_penalty: float) -> "SpliceDecomposer":
        """Change the penalty of a fitted decomposer without rebuilding its dictionary (l1 searches)."""
        _check_real("l1_penalty", l1_penalty, low=0.0)
        self.l1_penalty = l1_penalty
        if hasattr(self, "dictionary_"):
            self.kkt_threshold_ = max(float(self.kkt_tol) * float(l1_penalty), KKT_FLOOR)
        return self

    def _ensure_fitted(self, embeddings=None):
        if not hasattr(self, "dictionary_"):
            self.fit(embeddings)
        if self.image_mean_ is None:
            if embeddings is None or len(embeddings) == 0:
                raise InputError("image_mean is to be estimated but no embeddings were given yet: call fit(embeddings)")
            self.image_mean_ = estimate_image_mean(embeddings)

    def _prepare(self, embeddings) -> np.ndarray:
        X = _to_numpy(embeddings, "embeddings", ndim=(1, 2))
        if X.ndim == 1:
            X = X[None, :]
        if X.shape[0] == 0:  # nothing to centre: no image mean needed (nor estimated)
            if not hasattr(self, "dictionary_"):
                self.fit()
            if X.shape[1] not in (0, self.dim_):
                raise InputError(f"embeddings have dimension {X.shape[1]} but the dictionary has {self.dim_}")
            return np.zeros((0, self.dim_), np.float32)
        self._ensure_fitted(X)
        if X.shape[1] != self.dim_:
            raise InputError(f"embeddings have dimension {X.shape[1]} but the dictionary has {self.dim_}")
        return center_embeddings(X, self.image_mean_)

    def transform_input(self, embeddings) -> np.ndarray:
        """The centred, normalised embeddings ``v`` the decomposition fits (n, d) float32."""
        return self._prepare(embeddings)

    # ---------------------------------------------------------------- decomposition
    @hot_path()
    def decompose(self, embeddings) -> sp.csr_matrix:
        """Sparse non-negative concept weights (n, c) float32 CSR for raw image embeddings (n, d).

        Runs under the thread policy of :mod:`lance_concepts.threads` (numpy's BLAS on one thread
        while torch's pool runs the dictionary GEMMs): the batched small solves otherwise fight
        torch's threads for the cores."""
        V = self._prepare(embeddings)
        n = V.shape[0]
        t0 = time.perf_counter()
        stats = {"n": n, "rounds": np.zeros(n, np.int32), "kkt": np.zeros(n, np.float32)}
        indptr = [np.zeros(1, np.int64)]
        indices, data = [], []
        bs = int(self.batch_size)
        for s in range(0, n, bs):
            rows, idx, w, rounds, kkt = self._solve_batch(V[s:s + bs])
            counts = np.bincount(rows, minlength=min(bs, n - s))
            indptr.append(indptr[-1][-1] + np.cumsum(counts))
            indices.append(self._solver_to_concept[idx])
            data.append(w)
            stats["rounds"][s:s + bs] = rounds
            stats["kkt"][s:s + bs] = kkt
        indptr = np.concatenate(indptr)
        indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        data = np.concatenate(data).astype(np.float32) if data else np.zeros(0, np.float32)
        out = sp.csr_matrix((data, indices, indptr), shape=(n, self.n_concepts_), dtype=np.float32)
        out.sort_indices()
        stats["seconds"] = time.perf_counter() - t0
        stats["unconverged"] = int((stats["kkt"] > self.kkt_threshold_).sum())
        self.last_stats_ = stats
        if stats["unconverged"]:
            warnings.warn(
                f"{stats['unconverged']} of {n} images did not reach the KKT threshold {self.kkt_threshold_:.3g} "
                f"(kkt_tol={self.kkt_tol:g} x l1_penalty) within "
                f"max_rounds={self.max_rounds} (largest violation {stats['kkt'].max():.3g}); "
                "their weights are feasible but not optimal",
                SpliceConvergenceWarning,
                stacklevel=2,
            )
        return out

    def _solve_batch(self, V: np.ndarray):
        """Working-set solve of one batch.

        Returns (row, solver index, weight) triplets sorted by row, plus per-image rounds and final
        KKT violation. Per image the state is its support ``S`` (padded with the zero padding
        concept), the weights on it and the Gram ``G_SS``; a round adds candidates ``N`` and only
        computes ``D_N D_W^T`` (incremental Gram)."""
        import torch

        n, d = V.shape
        lam = float(self.l1_penalty)
        half = lam / 2.0
        tol = self.kkt_threshold_
        eps_inner = tol / 2.0 * 0.1
        cu = dummy = self._cu
        Dfull = self._Du  # (cu + 1, d): the last row is the zero padding concept
        dev = Dfull.device
        Vt = torch.from_numpy(V).to(dev)

        rounds = np.zeros(n, np.int32)
        kkt = np.full(n, np.inf, np.float32)
        if cu == 0:  # no usable concept (e.g. a one-concept vocabulary): w = 0 is the solution
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), rounds, np.zeros(n, np.float32)
        # final supports, filled as images are accepted
        out_idx = np.full((n, 0), dummy, np.int64)
        out_w = np.zeros((n, 0))
        act = np.arange(n)  # images still running
        S_idx = np.full((n, 0), dummy, np.int64)  # state of the running images, aligned with `act`
        S_w = np.zeros((n, 0))
        S_G = np.zeros((n, 0, 0), np.float32)
        buf = torch.empty((n, Dfull.shape[0]), dtype=torch.float32, device=dev)
        for r in range(int(self.max_rounds) + 1):
            self._round = r
            na = len(act)
            # ---- residual correlations of the running images with every concept: one GEMM
            Rt = Vt if r == 0 else Vt[torch.from_numpy(act).to(dev)]
            if S_idx.shape[1]:
                Rt = Rt - self._combine(S_idx, S_w)
            corr = torch.mm(Rt, Dfull.T, out=buf[:na])  # (na, cpad) = d_j . r; padding columns are 0
            # KKT in half units: corr_j - lam/2 > 0 is a violation for a zero weight (kept lazy)
            rounds[act] += 1
            s = S_idx.shape[1]
            if s:
                Si_t = torch.from_numpy(S_idx).to(dev)
                vS = torch.gather(corr, 1, Si_t) - half
                sup_valid = S_idx != dummy
                on_sup = vS.abs().masked_fill(~torch.from_numpy(sup_valid).to(dev), 0).amax(1).cpu().numpy()
                corr.scatter_(1, Si_t, -math.inf)  # support (and padding) are not candidates
                vS = vS.cpu().numpy().astype(np.float64)
            else:
                on_sup = np.zeros(na, np.float32)
            # the strongest candidates (sorted) of every running image; the first is the largest
            # violation, so no separate max pass is needed
            ns = (S_idx != dummy).sum(1)
            if r == 0:
                m = np.full(na, int(self.working_set))
            else:
                m = self._candidates(ns, kkt[act])
            k = int(min(m.max(), cu))
            vN, N = torch.topk(corr, k, dim=1, sorted=True)
            vN, N = vN.cpu().numpy().astype(np.float64) - half, N.cpu().numpy()
            worst = 2.0 * np.maximum(np.maximum(vN[:, 0], 0.0), on_sup)
            kkt[act] = worst
            done = worst <= tol
            last = r == int(self.max_rounds)
            if done.any() or last:
                fin = np.ones_like(done) if last else done
                width = max(out_idx.shape[1], s)
                out_idx, out_w = _pad_cols(out_idx, width, dummy), _pad_cols(out_w, width, 0.0)
                out_idx[act[fin]] = _pad_cols(S_idx[fin], width, dummy)
                out_w[act[fin]] = _pad_cols(S_w[fin], width, 0.0)
                keep = ~fin
                if not keep.any():
                    break
                act, S_idx, S_w, S_G = act[keep], S_idx[keep], S_w[keep], S_G[keep]
                vN, N, m = vN[keep], N[keep], m[keep]
                if s:
                    vS = vS[keep]
            na = len(act)

            # ---- candidates: the strongest violators with a positive violation, front-compacted
            k = vN.shape[1]
            takeN = (np.arange(k)[None, :] < m[:, None]) & (vN > eps_inner)
            order = _front(takeN)  # topk is sorted, so the kept ones are a prefix; this trims columns
            takeN = np.take_along_axis(takeN, order, 1)
            N = np.where(takeN, np.take_along_axis(N, order, 1), dummy)
            vN = np.where(takeN, np.take_along_axis(vN, order, 1), 0.0)
            if not s:
                vS = np.zeros((na, 0))

            # ---- small problems, in chunks of images with similar working-set sizes (the padded
            # width of a chunk is its largest working set, and the work grows with its square)
            ns = (S_idx != dummy).sum(1)
            nn = takeN.sum(1)
            rank = np.argsort(ns + nn, kind="stable")
            chunks = np.array_split(rank, _n_chunks(na, int((ns + nn).max(initial=0))))
            parts = []
            for rows in chunks:
                if not len(rows):
                    continue
                sc, mc = int(ns[rows].max()), int(nn[rows].max())
                parts.append((rows, self._small_problems(
                    S_idx[rows, :sc], S_w[rows, :sc], S_G[rows, :sc, :sc], vS[rows, :sc],
                    N[rows, :mc], vN[rows, :mc], eps_inner)))
            width = max(p[1][0].shape[1] for p in parts)
            S_idx = np.full((na, width), dummy, np.int64)
            S_w = np.zeros((na, width))
            S_G = np.zeros((na, width, width), np.float32)
            S_G[:, np.arange(width), np.arange(width)] = 1.0
            for rows, (si, sw, sg) in parts:
                w = si.shape[1]
                S_idx[rows, :w] = si
                S_w[rows, :w] = sw
                S_G[rows[:, None, None], np.arange(w)[None, :, None], np.arange(w)[None, None, :]] = sg

        valid = out_idx != dummy
        rows = np.nonzero(valid)[0]
        return rows, out_idx[valid], out_w[valid], rounds, kkt

    def _small_problems(self, S_idx, S_w, S_G, vS, N, vN, eps_inner):
        """One round's small problems for a chunk of images, all in lock-step.

        ``W = [S, N]`` (support first, both front-compacted and padded with the padding concept);
        ``vS``/``vN`` are ``d_j . r - lam/2`` from the round's GEMM. Returns the new support
        (indices, weights, Gram), front-compacted."""
        dummy = self._cu
        na, s = S_idx.shape
        W = np.concatenate([S_idx, N], axis=1)
        Wv = W != dummy
        K = W.shape[1]
        # G = D_W D_W^T: the support block is known, only D_N D_W^T is computed
        G = np.empty((na, K, K), np.float32)
        G[:, :s, :s] = S_G
        B = self._cross_gram(W, s)
        G[:, s:, :] = B
        G[:, :s, s:] = B[:, :, :s].transpose(0, 2, 1)
        pad = ~Wv
        if pad.any():
            ii, jj = np.nonzero(pad)
            G[ii, jj, :] = 0.0
            G[ii, :, jj] = 0.0
            G[ii, jj, jj] = 1.0
        # q_j = d_j.v - lam/2 = (d_j.r - lam/2) + G_{jS} x_S: the GEMM already holds d_j.r
        q = np.concatenate([vS, vN], axis=1)
        if s:
            q += _batched_matvec(G[:, :, :s], S_w)
        q[pad] = -1.0
        x0 = np.zeros((na, K))
        x0[:, :s] = S_w
        x = _cd_sweeps(G, q, x0, int(self.cd_sweeps))
        x = self._polish(G, q, x, Wv, (N != dummy).sum(1), (S_idx != dummy).sum(1), eps_inner)
        # the new support, front-compacted, with its Gram
        pos = (x > 0) & Wv
        order = _front(pos)
        kept = np.take_along_axis(pos, order, 1)
        S_idx = np.where(kept, np.take_along_axis(W, order, 1), dummy)
        S_w = np.where(kept, np.take_along_axis(x, order, 1), 0.0)
        S_G = _sub_gram(G, order)
        ii, jj = np.nonzero(~kept)
        S_G[ii, jj, :] = 0.0
        S_G[ii, :, jj] = 0.0
        S_G[ii, jj, jj] = 1.0
        return S_idx, S_w, S_G

    def _candidates(self, n_sup: np.ndarray, worst: np.ndarray) -> np.ndarray:
        """How many violators enter each working set this round.

        ``max(min_add, (grow - 1) |S|)``, multiplied by up to ``BOOST_MAX`` when the image's worst
        violation at the previous round was more than ``BOOST_AT`` penalties: far from the optimum (small l1, where supports
        run to hundreds of concepts) a round that adds a few dozen concepts wastes a dictionary GEMM."""
        base = np.maximum(int(self.min_add), np.ceil((float(self.grow) - 1.0) * n_sup)).astype(float)
        far = np.asarray(worst, np.float64) / (BOOST_AT * float(self.l1_penalty))
        return np.ceil(base * np.clip(far, 1.0, BOOST_MAX)).astype(int)

    def _polish(self, G, q, x, Wv, n_new, n_sup, eps_inner):
        """The exact solve of the working-set problems, where it pays.

        Images that just received many candidates (more than ``POLISH_FRACTION`` of their support)
        keep the coordinate-descent point: their working set will change again, so an exact solve
        would be thrown away (the outer loop only needs a feasible, improving point). Once few
        candidates enter, block principal pivoting gives the exact solution, which the next round's
        GEMM verifies on the full dictionary. Over-complete working sets (more variables than
        dimensions: ``G`` is singular) go through :func:`_prox_bpp`, whose every step is positive
        definite; so do images whose plain pivoting did not terminate."""
        late = self._round >= int(self.max_rounds) // 2  # never leave an image without the polish
        rows = np.flatnonzero((n_new <= POLISH_FRACTION * n_sup + 2) | late)
        if not len(rows):
            return x
        Gp, qp, xp, Wp = G[rows].astype(np.float64), q[rows], x[rows], Wv[rows]
        over = Wp.sum(1) > self.dim_
        xb, ok = np.array(xp), np.zeros(len(rows), bool)
        plain = np.flatnonzero(~over)
        if len(plain):
            xb[plain], ok[plain] = _bpp(Gp[plain], qp[plain], xp[plain] > 0, Wp[plain], eps_inner, int(self.max_pivots))
        hard = np.flatnonzero(~ok)
        if len(hard):
            xb[hard], ok[hard] = _prox_bpp(Gp[hard], qp[hard], xp[hard], Wp[hard], eps_inner, int(self.max_pivots))
        x[rows] = np.where(ok[:, None], xb, xp)  # (a pivoting failure keeps the feasible CD point)
        return x

    def _combine(self, Si: np.ndarray, Sw: np.ndarray):
        """``W D`` for padded supports (na, s) -> torch (na, d) float32 (a sparse-dense product)."""
        import torch

        na, s = Si.shape
        indptr = np.arange(0, na * s + 1, s, dtype=np.int64)
        if self._Du.device.type == "cpu" and not self._torch_only:
            M = sp.csr_matrix((Sw.reshape(-1).astype(np.float32), Si.reshape(-1), indptr), shape=(na, self._Dn.shape[0]))
            return torch.from_numpy(np.asarray(M @ self._Dn))
        out = []  # device path: gathered rows and a batched product, in chunks
        step = max(1, (1 << 22) // max(1, s * self.dim_))
        for a in range(0, na, step):
            idx = torch.from_numpy(Si[a:a + step].reshape(-1)).to(self._Du.device)
            rows = self._Du.index_select(0, idx).view(-1, s, self.dim_)
            w = torch.from_numpy(Sw[a:a + step].astype(np.float32)).to(self._Du.device)
            out.append(torch.bmm(w[:, None, :], rows)[:, 0])
        return torch.cat(out)

    def _cross_gram(self, W: np.ndarray, s: int) -> np.ndarray:
        """``D_N D_W^T`` with ``N = W[:, s:]`` per image: (na, K - s, K) float32, in chunks."""
        import torch

        na, K = W.shape
        out = torch.empty((na, K - s, K), dtype=torch.float32)
        step = max(1, (1 << 22) // max(1, K * self.dim_))
        cpu = self._Du.device.type == "cpu" and not self._torch_only
        for a in range(0, na, step):
            b = min(na, a + step)
            if cpu:  # numpy's take is several times faster than torch indexing on the CPU
                Dw = torch.from_numpy(self._Dn.take(W[a:b].reshape(-1), axis=0).reshape(b - a, K, self.dim_))
                torch.bmm(Dw[:, s:], Dw.transpose(1, 2), out=out[a:b])
            else:
                idx = torch.from_numpy(W[a:b].reshape(-1)).to(self._Du.device)
                Dw = self._Du.index_select(0, idx).view(b - a, K, self.dim_)
                out[a:b] = torch.bmm(Dw[:, s:], Dw.transpose(1, 2)).cpu()
        return out.numpy()

    # ---------------------------------------------------------------- recomposition & editing
    def _weights(self, weights) -> sp.csr_matrix:
        if not hasattr(self, "dictionary_"):
            raise InputError("decomposer is not fitted")
        if sp.issparse(weights):
            W = sp.csr_matrix(weights, dtype=np.float32)
        else:
            arr = _to_numpy(weights, "weights", ndim=(1, 2))
            W = sp.csr_matrix((arr[None, :] if arr.ndim == 1 else arr).astype(np.float32))
        if W.shape[1] != self.n_concepts_:
            raise InputError(f"weights have {W.shape[1]} columns but the dictionary has {self.n_concepts_} concepts")
        if W.nnz and not np.isfinite(W.data).all():
            raise InputError("weights contain NaN or infinite values")
        return W

    def recompose(self, weights) -> np.ndarray:
        """``z_hat = normalize(normalize(w @ D) + image_mean)`` (n, d) float32 (unit norm).

        An all-zero weight row recomposes to ``normalize(image_mean)``."""
        W = self._weights(weights)
        if W.shape[0] == 0:
            return np.zeros((0, self.dim_), np.float32)
        if self.image_mean_ is None:
            raise InputError("image_mean is unknown: call fit(embeddings) or decompose() first")
        S = np.asarray(W @ self.dictionary_, dtype=np.float64)
        S = _unit_rows(S, "recomposition", allow_zero=True) + self.image_mean_.astype(np.float64)
        return _unit_rows(S, "recomposition", allow_zero=True).astype(np.float32)

    def cosine(self, embeddings, weights) -> np.ndarray:
        """Reconstruction quality ``z_hat . normalize(x)`` per image (n,) float32."""
        X = _to_numpy(embeddings, "embeddings", ndim=(1, 2))
        X = X[None, :] if X.ndim == 1 else X
        self._ensure_fitted(X if len(X) else None)
        if X.shape[1] != self.dim_:
            raise InputError(f"embeddings have dimension {X.shape[1]} but the dictionary has {self.dim_}")
        Z = _unit_rows(X, "embeddings")
        Zh = self.recompose(weights).astype(np.float64)
        if Zh.shape[0] != Z.shape[0]:
            raise InputError(f"{Z.shape[0]} embeddings but {Zh.shape[0]} weight rows")
        return (Zh * Z).sum(1).astype(np.float32)

    def intervene(self, weights, concepts_to_remove) -> sp.csr_matrix:
        """Zero the weights of the given concepts (indices, or names if ``concepts`` was given).

        Recompose the result to get the edited embeddings (the authors' model editing)."""
        W = self._weights(weights).copy()
        if isinstance(concepts_to_remove, (str, int, np.integer)):
            concepts_to_remove = [concepts_to_remove]
        idx = []
        for cpt in concepts_to_remove:
            if isinstance(cpt, str):
                if self.concepts is None:
                    raise InputError("concept names need SpliceDecomposer(..., concepts=[...])")
                try:
                    idx.append(list(self.concepts).index(cpt))
                except ValueError:
                    raise InputError(f"unknown concept {cpt!r}") from None
            else:
                j = int(cpt)
                if not 0 <= j < self.n_concepts_:
                    raise InputError(f"concept index {j} out of range [0, {self.n_concepts_})")
                idx.append(j)
        if idx and W.nnz:
            W.data[np.isin(W.indices, np.asarray(idx))] = 0.0
            W.eliminate_zeros()
        return W

    # ---------------------------------------------------------------- diagnostics
    def kkt_violation(self, embeddings, weights) -> np.ndarray:
        """Largest KKT violation per image on the full dictionary (see :func:`kkt_violation`)."""
        V = self._prepare(embeddings)
        return kkt_violation(self.dictionary_, V, self._weights(weights), float(self.l1_penalty))

    def objective(self, embeddings, weights) -> np.ndarray:
        """``||D^T w - v||^2 + lam ||w||_1`` per image (float64)."""
        V = self._prepare(embeddings)
        return lasso_objective(self.dictionary_, V, self._weights(weights), float(self.l1_penalty))


CHUNK_BYTES = 256 << 20  # working memory of one chunk of small problems (several (n, K, K) float64 arrays)


def _n_chunks(na: int, width: int) -> int:
    """Chunks of similar-size small problems: a few for the padding, more when they are large."""
    per_image = 4 * 8 * max(1, width) ** 2  # G (float32 + float64 copy) and the pivoting's blocks
    return max(1, min(4, na // 128), -(-na * per_image // CHUNK_BYTES))


def _pad_cols(a: np.ndarray, width: int, fill) -> np.ndarray:
    if a.shape[1] >= width:
        return a
    return np.concatenate([a, np.full((a.shape[0], width - a.shape[1]), fill, a.dtype)], axis=1)


def _sub_gram(G: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``G[i][order[i]][:, order[i]]`` for every image i, in one gather."""
    rows = np.arange(G.shape[0])[:, None, None]
    return G[rows, order[:, :, None], order[:, None, :]]


def _front(keep: np.ndarray) -> np.ndarray:
    """Column order that moves each row's kept entries to the front (stable), trimmed to the widest row."""
    width = int(keep.sum(1).max()) if keep.size else 0
    return np.argsort(~keep, axis=1, kind="stable")[:, :width]


def _compact_columns(idx: np.ndarray, keep: np.ndarray, fill, values: np.ndarray | None = None):
    """Move the kept entries of each row to the front (stable), drop all-padding columns."""
    order = np.argsort(~keep, axis=1, kind="stable")
    width = int(keep.sum(1).max()) if keep.size else 0
    order = order[:, :width]
    out = np.take_along_axis(idx, order, 1)
    kept = np.take_along_axis(keep, order, 1)
    out = np.where(kept, out, fill)
    if values is None:
        return out, kept
    return out, np.where(kept, np.take_along_axis(values, order, 1), 0.0)


def decompose(embeddings, dictionary, image_mean=None, l1_penalty: float = 0.25, **kwargs) -> sp.csr_matrix:
    """One-shot SpLiCE decomposition (see :class:`SpliceDecomposer`).

    ``image_mean=None`` estimates it from ``embeddings`` (mean of the normalised embeddings)."""
    dec = SpliceDecomposer(dictionary, image_mean, l1_penalty, **kwargs)
    X = _to_numpy(embeddings, "embeddings", ndim=(1, 2))
    dec.fit(X if (image_mean is None or (isinstance(image_mean, str) and image_mean == "estimate")) and len(X) else None)
    return dec.decompose(X)


def l1_for_target_l0(embeddings, dictionary, target: int, image_mean=None, *, sample: int = 256,
                     rel_tol: float = 0.02, max_evals: int = 20, seed: int = 0, **kwargs) -> float:
    """The ``l1_penalty`` whose decompositions have a median of ``target`` non-zero concepts.

    Why: the SpLiCE paper reports results at fixed sparsity, and the l1 that gives a sparsity
    depends on the model, the vocabulary and the images. The median l0 of a random ``sample`` of
    the embeddings is a non-increasing step function of l1 (in practice), so a bisection on
    ``log(l1)`` between 0 and ``lam_max`` (above which every weight is zero) finds it; it stops
    when the median equals ``target`` or the bracket is narrower than ``rel_tol`` (then the end
    whose median is closer to ``target`` is returned). ``kwargs`` go to :class:`SpliceDecomposer`."""
    _check_int("target", target, low=1)
    X = _to_numpy(embeddings, "embeddings", ndim=(1, 2)).reshape(-1, _to_numpy(dictionary, "dictionary").shape[1])
    if len(X) > sample:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), sample, replace=False))]
    dec = SpliceDecomposer(dictionary, image_mean, 1.0, **kwargs).fit(X if image_mean is None else None)
    if target > dec.dim_:
        raise InputError(f"target l0 {target} exceeds the embedding dimension {dec.dim_}: a Lasso solution "
                         "has at most that many non-zeros")
    V = dec.transform_input(X)
    lam_max = 2.0 * float(np.max(V.astype(np.float64) @ dec.dictionary_.T.astype(np.float64)))

    def median_l0(lam: float) -> float:
        dec.set_l1_penalty(lam)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpliceConvergenceWarning)
            return float(np.median(dec.decompose(X).getnnz(1)))

    # walk down from lam_max (cheap, sparse solves first) until the median reaches the target
    hi, l0_hi = lam_max, 0.0
    lo = lam_max / 4.0
    l0_lo = median_l0(lo)
    while l0_lo < target and lo > lam_max * 1e-6:
        hi, l0_hi = lo, l0_lo
        lo /= 4.0
        l0_lo = median_l0(lo)
    for _ in range(max_evals):
        if hi / lo <= 1.0 + rel_tol:
            break
        mid = math.sqrt(lo * hi)
        m = median_l0(mid)
        if m == target:
            return mid
        if m > target:
            lo, l0_lo = mid, m
        else:
            hi, l0_hi = mid, m
    return lo if abs(l0_lo - target) <= abs(l0_hi - target) else hi
