"""The statistics of the reports, exact and vectorised: Wilson intervals, two-proportion and Fisher tests,
Benjamini-Hochberg, lift, nPMI, Jensen-Shannon (plain-words definitions: :mod:`lance_concepts.query`).
"""
from __future__ import annotations

import math

import numpy as np

from ..lake.aggregates import optional_kernel


# ============================================================================================ stats
def wilson_interval(k, n, z: float = 1.959963984540054):
    """95% Wilson score interval of k successes out of n (vectorised); (nan, nan) where n == 0."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        z2 = z * z
        den = 1.0 + z2 / n
        centre = (p + z2 / (2 * n)) / den
        half = (z / den) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        lo = np.clip(centre - half, 0.0, 1.0)
        hi = np.clip(centre + half, 0.0, 1.0)
    lo = np.where(n > 0, lo, np.nan)
    hi = np.where(n > 0, hi, np.nan)
    return lo, hi


def _fisher_tail(x, N, K, n, upper, screen: float | None = None):
    """P(X >= x) where ``upper`` else P(X <= x), X ~ Hypergeometric(population N, K successes, n draws),
    vectorised. A tail that does not contain the mode is summed from x outward (the terms fall off
    fast); one that does is 1 minus the opposite tail, which does not.

    ``screen``: only tails <= ``screen`` are needed exactly: a tail whose first four terms already
    exceed it is returned as their sum (a lower bound, still > ``screen``) without the full sum."""
    x, N, K, n = (np.asarray(a, dtype=np.float64) for a in (x, N, K, n))
    x, N, K, n = np.broadcast_arrays(x, N, K, n)
    upper = np.broadcast_to(np.asarray(upper, dtype=bool), x.shape)
    kernel = _fisher_kernel()
    if kernel is not None and x.size:  # the same sums, element by element (numba is optional)
        out = np.empty(x.size)
        kernel(*(np.ascontiguousarray(a).ravel() for a in (x, N, K, n, upper)),
               -1.0 if screen is None else float(screen), out)
        return np.clip(out.reshape(x.shape), 0.0, 1.0)
    mode = np.floor((n + 1) * (K + 1) / (N + 2))
    direct = np.where(upper, x > mode, x < mode)
    out = np.empty(x.shape)
    comp = ~direct
    if screen is not None and direct.any():
        # a lower bound of the tail: its first four terms (pmf(x) and three ratio steps outward)
        lb = np.exp(_log_pmf(x, N, K, n))
        term = lb.copy()
        k = x.copy()
        rest = N - K - n
        with np.errstate(invalid="ignore", divide="ignore"):
            for _ in range(3):
                r = np.where(upper, (K - k) * (n - k) / ((k + 1) * (rest + k + 1)),
                             k * (rest + k) / ((K - k + 1) * (n - k + 1)))
                term = term * np.nan_to_num(np.clip(r, 0.0, None), nan=0.0)
                lb = lb + term
                k = np.where(upper, k + 1, k - 1)
        over = direct & (lb > screen)
        out[over] = np.minimum(lb[over], 1.0)
        direct = direct & ~over
    if direct.any():
        out[direct] = _tail_outward(x[direct], N[direct], K[direct], n[direct], upper[direct])
    if comp.any():
        xo = np.where(upper[comp], x[comp] - 1, x[comp] + 1)
        out[comp] = 1.0 - _tail_outward(xo, N[comp], K[comp], n[comp], ~upper[comp])
    return np.clip(out, 0.0, 1.0)


def _build_fisher_kernel(numba):
    """A numba version of :func:`_fisher_tail` when numba is installed (about 3x faster on the spurious
    report's ~120,000 exact tests); LANCE_CONCEPTS_NUMBA=0 turns it off, as for the cross-table."""

    @numba.njit(cache=True, nogil=True)
    def _outward(x, N, K, n, up, screen):  # pragma: no cover - jitted
        lo = max(0.0, n - (N - K))
        hi = min(n, K)
        if x < lo or x > hi:
            return 0.0
        logp = (math.lgamma(K + 1) - math.lgamma(x + 1) - math.lgamma(K - x + 1)
                + math.lgamma(N - K + 1) - math.lgamma(n - x + 1) - math.lgamma(N - K - n + x + 1)
                - math.lgamma(N + 1) + math.lgamma(n + 1) + math.lgamma(N - n + 1))
        t = math.exp(logp)
        s = t
        k = x
        rest = N - K - n
        steps = 0
        while True:
            if up:
                if k >= hi:
                    break
                t *= (K - k) * (n - k) / ((k + 1) * (rest + k + 1))
                k += 1
            else:
                if k <= lo:
                    break
                t *= k * (rest + k) / ((K - k + 1) * (n - k + 1))
                k -= 1
            s += t
            steps += 1
            if steps == 3 and screen >= 0 and s > screen:
                break  # a lower bound above the screen is all the caller needs
            if t <= s * 1e-17:
                break
        return min(s, 1.0)

    @numba.njit(cache=True, nogil=True)
    def _k(x, N, K, n, upper, screen, out):  # pragma: no cover - jitted
        for i in range(x.shape[0]):
            mode = math.floor((n[i] + 1) * (K[i] + 1) / (N[i] + 2))
            if (x[i] > mode) if upper[i] else (x[i] < mode):
                out[i] = _outward(x[i], N[i], K[i], n[i], upper[i], screen)
            else:  # the tail holds the mode: 1 - the opposite tail, summed exactly
                xo = x[i] - 1 if upper[i] else x[i] + 1
                out[i] = 1.0 - _outward(xo, N[i], K[i], n[i], not upper[i], -1.0)

    return _k


_fisher_kernel = optional_kernel(_build_fisher_kernel)


def _log_pmf(x, N, K, n):
    """log P(X = x), X ~ Hypergeometric(N, K, n), from log-gamma."""
    from scipy.special import gammaln

    return (gammaln(K + 1) - gammaln(x + 1) - gammaln(K - x + 1)
            + gammaln(N - K + 1) - gammaln(n - x + 1) - gammaln(N - K - n + x + 1)
            - gammaln(N + 1) + gammaln(n + 1) + gammaln(N - n + 1))


def _tail_outward(x, N, K, n, upper):
    """Mass from x outward (upward where ``upper``) for x on the far side of the mode: log pmf at x from
    log-gamma, then the ratio recurrence over 6 sd + 12 values (the remainder is negligible)."""
    out = np.zeros(x.shape)
    if x.size == 0:
        return out
    lo0 = np.maximum(0, n - (N - K))
    hi0 = np.minimum(n, K)
    inside = (x >= lo0) & (x <= hi0)
    if not inside.all():  # outside the support the tail is empty
        if inside.any():
            out[inside] = _tail_outward(x[inside], N[inside], K[inside], n[inside], upper[inside])
        return out
    var = n * K * (N - K) * (N - n) / (N * N * np.maximum(N - 1, 1))
    lo = np.maximum(0, n - (N - K))
    hi = np.minimum(n, K)
    room = np.where(upper, hi - x, x - lo)
    width = (np.minimum(room, np.ceil(6 * np.sqrt(var) + 12)) + 1).astype(np.int64)
    order = np.argsort(width, kind="stable")
    budget = 1_000_000  # cells x terms per chunk (bounds the temporaries to ~50 MB)
    i = 0
    while i < len(order):
        w_probe = int(width[order[min(len(order) - 1, i + 1023)]])
        j = min(len(order), i + max(1, budget // max(w_probe, 1)))
        idx = order[i:j]
        i = j
        wmax = int(width[idx].max())
        Ki, Ni, ni, xi, up = K[idx], N[idx], n[idx], x[idx], upper[idx]
        logp0 = _log_pmf(xi, Ni, Ki, ni)
        if wmax > 1:
            steps = np.arange(wmax - 1)[None, :]
            d = np.where(up, 1.0, -1.0)[:, None]
            k = xi[:, None] + d * steps  # the value we step from
            Kc, nc, rest = Ki[:, None], ni[:, None], (Ni - Ki - ni)[:, None]
            # pmf(k + 1) / pmf(k) upward, pmf(k - 1) / pmf(k) downward: one log per term
            num = np.where(up[:, None], (Kc - k) * (nc - k), k * (rest + k))
            den = np.where(up[:, None], (k + 1) * (rest + k + 1), (Kc - k + 1) * (nc - k + 1))
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.log(num / den)
            ratio = np.where(steps < (width[idx, None] - 1), ratio, -np.inf)
            logp = np.concatenate([logp0[:, None], logp0[:, None] + np.cumsum(ratio, axis=1)], axis=1)
            out[idx] = np.minimum(1.0, np.exp(logp).sum(axis=1))
        else:
            out[idx] = np.minimum(1.0, np.exp(logp0))
    return out


def proportion_test(x1, n1, x2, n2, alternative: str = "two-sided", min_expected: float = 5.0,
                    screen: float | None = None):
    """p-values of H0: p1 == p2 for counts x1/n1 vs x2/n2 (vectorised).

    Pooled two-proportion z-test where all four expected cell counts are >= ``min_expected``; Fisher's
    exact test (hypergeometric) elsewhere (two-sided: twice the tail on the observed side, capped at 1).
    ``alternative``: 'two-sided', 'greater' (p1 > p2) or 'less'.

    ``screen``: the caller needs exact p-values only where p <= ``screen`` (Benjamini-Hochberg at level
    alpha: a p-value above alpha can only give q > alpha, and only its being above alpha matters for
    the others' ranks). Exact tests whose p is certainly above it return a lower bound above it."""
    from scipy.special import ndtr

    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less; got {alternative!r}")
    x1, n1, x2, n2 = (np.asarray(a, dtype=np.float64) for a in (x1, n1, x2, n2))
    x1, n1, x2, n2 = np.broadcast_arrays(x1, n1, x2, n2)
    N = n1 + n2
    K = x1 + x2
    with np.errstate(invalid="ignore", divide="ignore"):
        # the smallest expected cell count: smallest row margin x smallest column margin / N
        e_min = np.minimum(n1, n2) * np.minimum(K, N - K) / N
        pp = K / N
        se = np.sqrt(pp * (1 - pp) * (1 / n1 + 1 / n2))
        z = (x1 / n1 - x2 / n2) / se
    p = np.ones(x1.shape, dtype=np.float64)
    big = (e_min >= min_expected) & (se > 0)
    if alternative == "two-sided":
        p[big] = 2 * ndtr(-np.abs(z[big]))
    elif alternative == "greater":
        p[big] = ndtr(-z[big])
    else:
        p[big] = ndtr(z[big])
    small = ~big & (n1 > 0) & (n2 > 0) & (K > 0) & (K < N)
    if small.any():
        xs, Ns, Ks, ns = x1[small], N[small], K[small], n1[small]
        if alternative == "two-sided":  # twice the tail on the observed side
            side = xs > ns * Ks / Ns
            p[small] = np.minimum(1.0, 2 * _fisher_tail(xs, Ns, Ks, ns, side,
                                                        None if screen is None else screen / 2))
        else:
            p[small] = _fisher_tail(xs, Ns, Ks, ns, alternative == "greater", screen)
    return np.clip(np.nan_to_num(p, nan=1.0), 0.0, 1.0)


def benjamini_hochberg(p, n_tests: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate) of a family of p-values (same result as
    ``scipy.stats.false_discovery_control(p, method='bh')``).

    ``n_tests``: the size of the family when ``p`` holds only its p-values <= some alpha (every omitted
    one above alpha): the q-values below alpha are then exactly those of the whole family (an omitted
    p gives p * m / rank > alpha, so it never lowers a q-value below alpha), and the others are at
    least alpha in both."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    m = p.size if n_tests is None else int(n_tests)
    if m < p.size:
        raise ValueError(f"n_tests={m} is smaller than the {p.size} p-values given")
    if p.size == 0:
        return p.copy()
    flat = p.ravel()
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, flat.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(flat.size)
    out[order] = np.minimum(q, 1.0)
    return out.reshape(p.shape)


def lift(joint, n_label, n_concept, n_total):
    """P(concept | label) / P(concept) from counts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(joint, float) / n_label) / (np.asarray(n_concept, float) / n_total)


def npmi(joint, n_label, n_concept, n_total):
    """Normalised pointwise mutual information of label and concept from counts, in [-1, 1]."""
    joint = np.asarray(joint, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pj = joint / n_total
        pmi = np.log(pj / ((np.asarray(n_label, float) / n_total) * (np.asarray(n_concept, float) / n_total)))
        out = pmi / -np.log(pj)
    out = np.where(joint <= 0, -1.0, out)
    out = np.where(np.isclose(pj, 1.0), 1.0, out)
    return np.clip(out, -1.0, 1.0)


def js_divergence(p, q, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint) of non-negative vectors
    (normalised here) along ``axis``."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = np.broadcast_arrays(p, q)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / p.sum(axis=axis, keepdims=True)
        q = q / q.sum(axis=axis, keepdims=True)
        m = 0.5 * (p + q)
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=axis)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=axis)
    return np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0)


def mean_interval(wsum, wsq, n, z: float = 1.959963984540054):
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = wsum / n
        var = np.maximum(wsq / n - mean * mean, 0.0)
        half = z * np.sqrt(var / n)
    return mean, mean - half, mean + half


def homogeneity_p(present, n):
    """p-value per concept (column) of the chi-square test that the prevalence is equal in all groups."""
    from scipy.special import chdtrc

    x = np.asarray(present, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)[:, None]
    pooled = x.sum(axis=0) / n.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = (((x - n * pooled) ** 2) / (n * pooled * (1 - pooled))).sum(axis=0)
    df = max(x.shape[0] - 1, 1)
    p = chdtrc(df, stat)
    return np.where((pooled > 0) & (pooled < 1), np.nan_to_num(p, nan=1.0), 1.0)
