"""Concept reports over a LanceDB image table: filter, drift over time, spurious correlations, HTML.

Every function takes ``db`` (a LanceDB path/URI, or a connection from :func:`lance_concepts.sql.connect`)
and returns plain data (a pyarrow Table, or a result object with ``.table``, ``.records()``,
``.summary()`` and ``.plot(path)``); the CLI commands ``filter``, ``drift``, ``spurious`` and
``report`` are thin shells over them.

Statistics, in plain words
--------------------------
* *prevalence* of a concept in a set of images: the share of images whose weight for the concept is
  above ``min_weight`` (default 0: the concept is in the image's sparse decomposition at all), with a
  95% Wilson score interval.
* *mean weight*: the average weight over all images of the set (absent = 0), with a normal 95%
  interval (mean +- 1.96 standard errors).
* *change test* (drift, split shift): two-sided two-proportion test of the prevalence in a window (a
  split) against the reference window (split): the pooled z-test when every expected cell count is at
  least 5, otherwise Fisher's exact test (two-sided p = twice the one-sided p on the observed side of
  the expected count, capped at 1).
* *over-representation test* (spurious): the same test, one-sided (label more often than the rest).
* *homogeneity test* (drift alerts): chi-square test that a concept's prevalence is the same in
  every window (G - 1 degrees of freedom), so that one noisy reference window cannot raise an alert.
* *Benjamini-Hochberg*: p-values of all tests of one report are turned into q-values (false-discovery
  rate); a finding needs ``q < alpha`` (default 0.05) **and** an effect size (``min_change`` /
  ``min_lift``) so that tiny but "significant" shifts in large tables are not reported.
* *lift* = P(concept | label) / P(concept); *nPMI* = log(P(label, concept) / (P(label) P(concept)))
  / -log P(label, concept), in [-1, 1] (0 = independent, 1 = always together).
* *Jensen-Shannon divergence* (base 2, in [0, 1]) between a window's concept distribution (the
  concepts' share of the window's total weight) and the reference window's.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import functools
import html as _html
import io
import json
import math
import re
import unicodedata
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .errors import InputError
from . import sql as _sql

__all__ = [
    "filter",
    "concept_filter",
    "plot_filter",
    "drift",
    "spurious",
    "report",
    "DriftResult",
    "SpuriousResult",
    "wilson_interval",
    "proportion_test",
    "benjamini_hochberg",
    "lift",
    "npmi",
    "js_divergence",
    "format_output",
    "to_records",
    "LABEL_MATCH_THRESHOLD",
]

#: Centred cosine similarity (SpLiCE-centred text embeddings) at or above which a concept is taken to
#: merely name the label (see :func:`label_name_concepts`).
LABEL_MATCH_THRESHOLD = 0.6
#: ... and only among the label's nearest concepts, so that a text tower that crowds many words together
#: (the tiny demo model puts 'circle', 'dot', 'hexagon' and 'heart' within 0.05) cannot drop dozens.
LABEL_MATCH_NEIGHBOURS = 5
#: Above this many matches, ``filter`` fetches the image rows with one filtered scan of ``images.id``
#: instead of BTREE index lookups (measured at 1M rows: ~25-40 us per looked-up id, the scan ~200 ms
#: on the loaded 2-core machine, about equal at 5,000 ids).
_LOOKUP_MAX = 5000


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


_fisher_kernel = _sql.optional_kernel(_build_fisher_kernel)


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


def _mean_interval(wsum, wsq, n, z: float = 1.959963984540054):
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = wsum / n
        var = np.maximum(wsq / n - mean * mean, 0.0)
        half = z * np.sqrt(var / n)
    return mean, mean - half, mean + half


# ========================================================================================= helpers
def _open(db, materialize: bool = False, table: str = "images", storage_options=None):
    """(connection, owned) for a path or URI (``storage_options`` for object stores) or an existing connection."""
    import duckdb

    if isinstance(db, duckdb.DuckDBPyConnection):
        return db, False
    return _sql.connect(db, materialize=materialize, table=table, storage_options=storage_options), True


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


def _window_label(v, every: str) -> str:
    if isinstance(v, _dt.datetime):
        d = v.date()
    elif isinstance(v, _dt.date):
        d = v
    else:
        return str(v)
    if every == "year":
        return f"{d.year:04d}"
    if every == "quarter":
        return f"{d.year:04d}-Q{(d.month - 1) // 3 + 1}"
    if every == "month":
        return f"{d.year:04d}-{d.month:02d}"
    if every == "week":
        y, w, _ = d.isocalendar()
        return f"{y:04d}-W{w:02d}"
    return d.isoformat()


def _jsonable(v):
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


def to_records(table: pa.Table) -> list[dict]:
    """JSON-ready records (dates as ISO strings, NaN as null, maps as objects)."""
    out = []
    for row in table.to_pylist():
        rec = {}
        for k, v in row.items():
            if isinstance(v, list) and v and isinstance(v[0], tuple) and len(v[0]) == 2:  # MAP
                v = {a: b for a, b in v}
            rec[k] = _jsonable(v)
        out.append(rec)
    return out


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e6):
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if a < 100 else f"{v:.1f}"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, (_dt.datetime,)):
        return v.isoformat(sep=" ")
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt_cell(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_cell(x) for x in v)
    return str(v)


def format_table(table: pa.Table, max_rows: int | None = None, max_width: int = 60) -> str:
    """A plain aligned text table."""
    recs = to_records(table) if table.num_rows else []
    if max_rows is not None:
        recs = recs[:max_rows]
    cols = table.column_names
    rows = []
    for r in recs:
        cells = []
        for c in cols:
            v = r[c]
            s = _fmt_cell(v)
            if len(s) > max_width:
                s = s[: max_width - 1] + "…"
            cells.append(s)
        rows.append(cells)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    def line(cells):
        return "  ".join((s.rjust(w) if num else s.ljust(w)) for s, w, num in zip(cells, widths, numeric)).rstrip()
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if max_rows is not None and table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows} more rows")
    return "\n".join(out)


FORMATS = ("table", "csv", "json", "parquet")


def format_output(table: pa.Table, fmt: str = "table", out=None) -> str | None:
    """Write ``table`` as table / csv / json / parquet to ``out`` (a path) or return the text.

    json: an array of records with the table's snake_case column names as keys. parquet needs ``out``."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if out is None:
            raise InputError("--format parquet needs --output FILE")
        pq.write_table(table, str(out))
        return None
    if fmt == "json":
        text = json.dumps(to_records(table), ensure_ascii=False, indent=1)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table.column_names)
        for r in to_records(table):
            w.writerow([json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else ("" if v is None else v)
                        for v in r.values()])
        text = buf.getvalue().rstrip("\n")
    else:
        text = format_table(table)
    if out is not None:
        Path(out).write_text(text + "\n", encoding="utf-8")
        return None
    return text


# ========================================================================================== filter
def filter(db, concepts: str | Sequence[str], min_weight: float | Sequence[float] = 0.1, *, match: str = "all",
           limit: int | None = None, columns: Sequence[str] | None = ("uri",), table: str = "images",
           storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """Images whose concept weights pass thresholds, strongest first.

    ``concepts``: one name or several; ``min_weight``: one threshold for all or one per concept
    (weight must be strictly greater); ``match``: 'all' (AND: every concept passes) or 'any' (OR).
    Columns: ``id``, the requested image ``columns`` (default ``uri``), ``weight`` (the concept's
    weight; with several concepts the smallest passing weight for 'all', the largest for 'any') and,
    with several concepts, ``weights`` (concept -> weight). Ordered by ``weight`` descending.
    """
    names = _as_list(concepts)
    if not names:
        raise InputError("filter needs at least one --concept")
    thr = [float(t) for t in (_as_list(min_weight) if not isinstance(min_weight, (int, float)) else [min_weight])]
    if len(thr) == 1:
        thr = thr * len(names)
    if len(thr) != len(names):
        raise InputError(f"give one --min for all concepts or one per concept ({len(names)} concepts, {len(thr)} --min)")
    if match not in ("all", "any"):
        raise InputError(f"match must be 'all' or 'any'; got {match!r}")
    if limit is not None and int(limit) < 1:
        raise InputError("--limit must be positive")
    con, owned = _open(db, table=table, storage_options=storage_options)
    try:
        return _filter(con, names, thr, match, limit, list(columns or []))
    finally:
        if owned:
            con.close()


concept_filter = filter


def _filter(con, names, thr, match, limit, columns) -> pa.Table:
    st = _sql._state(con)
    ids = [st.names.id(n) for n in names]
    seen = {}
    for i, c in zip(ids, thr):  # the same concept twice: keep the stricter threshold
        seen[i] = max(c, seen.get(i, -np.inf))
    uids = list(seen)
    uthr = [seen[i] for i in uids]
    for c in columns:
        _sql.check_column(con, c)
    k = len(uids)
    params = {f"c{j}": int(c) for j, c in enumerate(uids)}
    params["thr"] = [float(t) for t in uthr]
    params["cids"] = [int(c) for c in uids]
    inlist = ", ".join(f"$c{j}" for j in range(k))
    src = ("SELECT image_id, concept_id, weight FROM image_concepts_raw" if st.has_postings else
           "SELECT id AS image_id, unnest(concept_ids) AS concept_id, unnest(concept_weights) AS weight FROM images")
    agg = "min(weight)" if match == "all" else "max(weight)"
    having = f"HAVING count(DISTINCT concept_id) = {k}" if match == "all" else ""
    order_limit = " ORDER BY weight DESC, image_id" + (" LIMIT $lim" if limit else "")
    if limit:
        params["lim"] = int(limit)
    if k == 1:
        q = (f"SELECT image_id, weight FROM ({src}) WHERE concept_id = $c0 AND weight > $thr[1]" + order_limit)
    else:
        q = (f"SELECT image_id, {agg} AS weight, map(list(concept_id), list(weight)) AS wmap FROM ({src}) "
             f"WHERE concept_id IN ({inlist}) AND weight > list_extract($thr, list_position($cids, concept_id)) "
             f"GROUP BY image_id {having}" + order_limit)
    hits = _sql.run_query(con, q, params)
    if k > 1:
        cmap = {c: st.names.name(c) for c in uids}
        wm = hits.column("wmap").to_pylist()
        named = [{cmap[a]: b for a, b in (m.items() if isinstance(m, dict) else m)} for m in wm]
        hits = hits.drop_columns(["wmap"]).append_column(
            "weights", pa.array(named, pa.map_(pa.string(), pa.float32())))
    cols = [c for c in columns if c != "id"]
    if not cols:
        return hits.rename_columns(["id"] + hits.column_names[1:])
    ds = st.sources.get("images")
    if ds is not None and not st.materialized:
        import pyarrow.compute as pc

        # few ids: the BTREE index on images.id; many: one scan of the id column with the set as a
        # filter (Lance reads the other columns only for the matching rows)
        rows = ds.to_table(columns=["id"] + cols, filter=pc.field("id").isin(hits.column("image_id")),
                           use_scalar_index=hits.num_rows <= _LOOKUP_MAX)
        pos = pc.index_in(hits.column("image_id"), value_set=rows.column("id"))
        joined = hits
        for c in cols:
            joined = joined.append_column(c, rows.column(c).take(pos))
    else:
        con.register("_lc_hits", hits)
        try:
            sel = ", ".join(f"i.{_sql.quote_ident(c)}" for c in cols)
            joined = _sql.run_query(con, f"SELECT h.*, {sel} FROM _lc_hits h LEFT JOIN images i ON i.id = h.image_id")
        finally:
            con.unregister("_lc_hits")
    order = ["image_id"] + cols + [c for c in hits.column_names if c != "image_id"]
    joined = joined.select(order).rename_columns(["id"] + order[1:])
    idx = pa.compute.sort_indices(joined, sort_keys=[("weight", "descending"), ("id", "ascending")])
    return joined.take(idx)


# =========================================================================================== drift
@dataclass
class DriftResult:
    """Per window and concept: prevalence (Wilson 95%), mean weight (95%), change vs the reference
    window (p, BH q, alert); per window: Jensen-Shannon divergence from the reference."""

    table: pa.Table
    windows: list[str]
    reference: str
    every: str
    time_column: str
    concepts: list[str]
    alerts: list[dict]
    rising: list[dict]
    falling: list[dict]
    js: dict
    n_images: dict
    params: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        return to_records(self.table)

    def summary(self) -> str:
        p = self.params
        lines = [f"{len(self.windows)} windows of one {self.every} ({self.windows[0]} .. {self.windows[-1]}), "
                 f"{sum(self.n_images.values())} images; reference window {self.reference}; "
                 f"prevalence = weight > {p.get('min_weight')}; alert = BH q < {p.get('alpha')} and "
                 f"|change| >= {p.get('min_change')}"]
        if self.alerts:
            lines.append("alerts: " + "; ".join(
                f"{a['concept']} {a['direction']} {a['reference_prevalence']:.1%} -> {a['prevalence']:.1%} "
                f"({a['window']}, q={a['q_value']:.2g})" for a in self.alerts))
        else:
            lines.append("alerts: none")
        lines.append("rising most: " + (", ".join(f"{r['concept']} {r['change']:+.1%}" for r in self.rising) or "-"))
        lines.append("falling most: " + (", ".join(f"{r['concept']} {r['change']:+.1%}" for r in self.falling) or "-"))
        lines.append("Jensen-Shannon divergence from the reference: "
                     + ", ".join(f"{w} {v:.3f}" for w, v in self.js.items()))
        return "\n".join(lines)

    def plot(self, path, max_concepts: int = 8):
        return _plot_drift(self, path, max_concepts=max_concepts)


def drift(db, time_column: str = "timestamp", every: str = "month", *, concepts: Sequence[str] | None = None,
          top: int = 10, reference: str | None = None, min_weight: float = 0.0, alpha: float = 0.05,
          min_change: float = 0.10, min_support: int = 10, n_trend: int = 5, where: str | None = None,
          params: Mapping[str, Any] | None = None, weight_intervals: bool = False, materialize: bool = False,
          table: str = "images", engine: str = "auto",
          storage_options: Mapping[str, str] | None = None) -> DriftResult:
    """Concept prevalence and mean weight per time window, and what changed.

    ``time_column``: a timestamp/date column of ``images``; ``every``: day | week | month | quarter |
    year. ``concepts``: names to report (default: the ``top`` most prevalent overall). ``reference``:
    the window the others are compared with (its label, e.g. '2024-01', or 'first' / 'last'; default
    the first). ``min_weight``: a concept counts as present when its weight is above this. Every
    concept seen in at least ``min_support`` images is tested in every window against the reference
    (two-sided two-proportion test, BH over all of them). An *alert* is a concept whose prevalence is
    not the same in all windows (chi-square test of homogeneity over all windows, BH over the concepts,
    q < ``alpha``) and that has a window at q < ``alpha`` against the reference with a prevalence change
    of at least ``min_change`` (absolute). ``rising`` / ``falling``:
    the ``n_trend`` concepts whose prevalence changed most between the reference and the last window.
    ``where``: optional SQL condition on ``images`` (with ``$name`` parameters in ``params``).
    ``weight_intervals``: also the 95% intervals of the mean weights (one more sum per posting: about
    a third slower at a million images; the columns are null without it).
    ``engine``: where the counts come from (:func:`lance_concepts.sql.concept_crosstab`): 'auto' reads
    the table's rollup (:mod:`lance_concepts.rollup`) when it is up to date and can answer, else scans.
    """
    con, owned = _open(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        st = _sql._state(con)
        _sql.check_column(con, time_column, what="time column", kinds=("TIMESTAMP", "DATE"))
        if every not in _sql.WINDOWS:
            raise InputError(f"--every must be one of {', '.join(_sql.WINDOWS)}; got {every!r}")
        chosen = [st.names.id(c) for c in _as_list(concepts)]
        ct = _sql.concept_crosstab(con, time_column, every=every, where=where, params=params,
                                   min_weight=min_weight, second_moment=weight_intervals, engine=engine)
        if not ct.groups:
            raise InputError(f"no images with concepts and a {time_column!r} value"
                             + (" matching the condition" if where else ""))
        return _drift_from_crosstab(ct, st.names, time_column, every, chosen, top, reference, min_weight, alpha,
                                    min_change, min_support, n_trend)
    finally:
        if owned:
            con.close()


def _drift_from_crosstab(ct, names, time_column, every, chosen, top, reference, min_weight, alpha, min_change,
                         min_support, n_trend) -> DriftResult:
    labels = [_window_label(g, every) for g in ct.groups]
    G, C = ct.present.shape
    n = ct.n.astype(np.float64)
    if reference in (None, "", "first"):
        r = 0
    elif reference == "last":
        r = G - 1
    else:
        ref = str(reference)
        cands = [i for i, (lab, g) in enumerate(zip(labels, ct.groups))
                 if lab == ref or str(g).startswith(ref) or _window_label(_parse_date(ref), every) == lab]
        if not cands:
            raise InputError(f"reference window {reference!r} not found; windows: {', '.join(labels)}")
        r = cands[0]
    prev = ct.present / np.maximum(n[:, None], 1)
    total_present = ct.present.sum(axis=0)
    tested = np.flatnonzero(total_present >= min_support)
    # change test of every window against the reference, all tested concepts, one BH family
    others = np.array([g for g in range(G) if g != r], dtype=np.int64)
    pvals = np.ones((G, C))
    if len(others) and len(tested):
        x1 = ct.present[np.ix_(others, tested)]
        n1 = np.broadcast_to(n[others][:, None], x1.shape)
        x2 = np.broadcast_to(ct.present[r, tested][None, :], x1.shape)
        n2 = np.full(x1.shape, n[r])
        pvals[np.ix_(others, tested)] = proportion_test(x1, n1, x2, n2, "two-sided")
    qvals = np.ones((G, C))
    if len(others) and len(tested):
        qvals[np.ix_(others, tested)] = benjamini_hochberg(pvals[np.ix_(others, tested)].ravel()).reshape(
            len(others), len(tested))
    change = prev - prev[r][None, :]
    # omnibus: is the prevalence the same in every window? (chi-square test of homogeneity, G - 1 df,
    # BH over the tested concepts). It uses all windows at once, so a noisy reference window alone
    # does not raise an alert.
    omni_q = np.ones(C)
    if G > 1 and len(tested):
        omni_q[tested] = benjamini_hochberg(_homogeneity_p(ct.present[:, tested], n))
    hit = (qvals < alpha) & (np.abs(change) >= min_change) & (omni_q[None, :] < alpha)
    hit[r] = False
    alerts = []
    for c in np.flatnonzero(hit.any(axis=0)):
        gs = np.flatnonzero(hit[:, c])
        g = gs[np.argmax(np.abs(change[gs, c]))]
        alerts.append({"concept": names.name(int(c)), "window": labels[g], "direction":
                       "rising" if change[g, c] > 0 else "falling", "reference_prevalence": float(prev[r, c]),
                       "prevalence": float(prev[g, c]), "change": float(change[g, c]), "q_value": float(qvals[g, c]),
                       "homogeneity_q": float(omni_q[c])})
    alerts.sort(key=lambda a: -abs(a["change"]))
    last = G - 1 if r != G - 1 else 0
    d_last = change[last, tested] if len(tested) else np.zeros(0)
    order = np.argsort(-d_last, kind="stable")
    rising = [{"concept": names.name(int(tested[i])), "change": float(d_last[i]), "q_value": float(qvals[last, tested[i]])}
              for i in order[:n_trend] if d_last[i] > 0]
    falling = [{"concept": names.name(int(tested[i])), "change": float(d_last[i]), "q_value": float(qvals[last, tested[i]])}
               for i in order[::-1][:n_trend] if d_last[i] < 0]
    js = js_divergence(ct.weight_sum, ct.weight_sum[r][None, :], axis=1)
    # which concepts to tabulate
    if chosen:
        sel = list(dict.fromkeys(chosen))
    else:
        sel = [int(c) for c in np.argsort(-total_present, kind="stable")[: max(int(top), 0)] if total_present[c] > 0]
        for a in alerts:  # alerts are always shown
            cid = names.id(a["concept"])
            if cid not in sel:
                sel.append(cid)
    sel_a = np.array(sel, dtype=np.int64)
    lo, hi = wilson_interval(ct.present[:, sel_a], n[:, None])
    if ct.weight_sq is not None:
        mean, mlo, mhi = _mean_interval(ct.weight_sum[:, sel_a], ct.weight_sq[:, sel_a], n[:, None])
    else:
        mean = ct.weight_sum[:, sel_a] / np.maximum(n[:, None], 1)
        mlo = mhi = np.full(mean.shape, np.nan)
    alert_set = {(a["concept"]) for a in alerts}
    rows = {k: [] for k in ("window", "window_start", "concept", "n_images", "n_present", "prevalence",
                            "prevalence_low", "prevalence_high", "mean_weight", "mean_weight_low", "mean_weight_high",
                            "change", "p_value", "q_value", "alert", "js_divergence")}
    for g in range(G):
        for j, c in enumerate(sel_a):
            rows["window"].append(labels[g])
            rows["window_start"].append(_to_date(ct.groups[g]))
            rows["concept"].append(names.name(int(c)))
            rows["n_images"].append(int(n[g]))
            rows["n_present"].append(int(ct.present[g, c]))
            rows["prevalence"].append(float(prev[g, c]))
            rows["prevalence_low"].append(float(lo[g, j]))
            rows["prevalence_high"].append(float(hi[g, j]))
            rows["mean_weight"].append(float(mean[g, j]))
            rows["mean_weight_low"].append(None if np.isnan(mlo[g, j]) else float(mlo[g, j]))
            rows["mean_weight_high"].append(None if np.isnan(mhi[g, j]) else float(mhi[g, j]))
            rows["change"].append(float(change[g, c]))
            rows["p_value"].append(float(pvals[g, c]) if g != r else None)
            rows["q_value"].append(float(qvals[g, c]) if g != r else None)
            rows["alert"].append(bool(hit[g, c]))
            rows["js_divergence"].append(float(js[g]))
    types = {"window_start": pa.date32(), "n_images": pa.int64(), "n_present": pa.int64(), "alert": pa.bool_(),
             "window": pa.string(), "concept": pa.string()}
    tbl = pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in rows.items()})
    return DriftResult(table=tbl, windows=labels, reference=labels[r], every=every, time_column=time_column,
                       concepts=[names.name(int(c)) for c in sel_a], alerts=alerts, rising=rising, falling=falling,
                       js={labels[g]: float(js[g]) for g in range(G)},
                       n_images={labels[g]: int(n[g]) for g in range(G)},
                       params={"min_weight": min_weight, "alpha": alpha, "min_change": min_change,
                               "min_support": min_support, "tested_concepts": int(len(tested)),
                               "engine": ct.engine, "alert_concepts": sorted(alert_set)})


def _homogeneity_p(present, n):
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


def _parse_date(s: str):
    for fmt in ("%Y-%m-%d", "%Y-%m", "%Y"):
        try:
            return _dt.datetime.strptime(s, fmt)
        except ValueError:
            pass
    m = re.fullmatch(r"(\d{4})-Q([1-4])", s)
    if m:
        return _dt.datetime(int(m.group(1)), 3 * int(m.group(2)) - 2, 1)
    return None


def _to_date(v):
    if isinstance(v, _dt.datetime):
        return v.date()
    if isinstance(v, _dt.date):
        return v
    return None


# ======================================================================================== spurious
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _lemma(tok: str) -> str:
    """A crude English lemma (plural -> singular), enough to match 'circles' with 'circle'."""
    t = tok
    for suf, rep in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"), ("oes", "o")):
        if t.endswith(suf) and len(t) > len(suf) + 2:
            return t[: -len(suf)] + rep
    if t.endswith("s") and not t.endswith("ss") and len(t) > 3:
        return t[:-1]
    return t


@functools.lru_cache(maxsize=1 << 16)
def _lemmas(text: str) -> tuple[str, ...]:
    text = unicodedata.normalize("NFKC", str(text)).casefold().replace("_", " ")
    return tuple(_lemma(t) for t in _WORD.findall(text))


def _string_names_label(concept: str, label: str) -> bool:
    """The concept's words are all words of the label ('car' for 'sports car'), or the label's words
    all occur in the concept ('red circle' for 'circle'); plural/singular folded."""
    c, l_ = set(_lemmas(concept)), set(_lemmas(label))
    if not c or not l_:
        return False
    return c <= l_ or l_ <= c


_LEMMA_INDEX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _lemma_index(names) -> tuple[dict, dict]:
    """(lemma -> ids of the concepts containing it, id -> the concept's lemma set), once per vocabulary
    object (a connection's ``ConceptNames``)."""
    got = _LEMMA_INDEX.get(names)
    if got is None:
        words: dict[str, set] = {}
        csets = {}
        for i, c in zip(names.ids, names.names):
            ls = set(_lemmas(c))
            csets[int(i)] = ls
            for w in ls:
                words.setdefault(w, set()).add(int(i))
        got = _LEMMA_INDEX[names] = (words, csets)
    return got


def label_name_concepts(con, labels: Sequence, *, threshold: float = LABEL_MATCH_THRESHOLD,
                        method: str = "auto") -> tuple[dict, str]:
    """For each label, the concept ids that merely name it, and a sentence saying how this was decided.

    Always: the string rule (:func:`_string_names_label`). With ``method`` 'auto' or 'embedding' and
    the table's CLIP model loadable: also the concepts among the label's ``LABEL_MATCH_NEIGHBOURS``
    (5) nearest whose SpLiCE-centred text embedding has cosine >= ``threshold`` with the label's text
    embedding (same encoder, same prompt template, centred with the vocabulary mean of the
    ``concepts`` table). 'string': the string rule only. The threshold 0.6 was chosen on the demo
    model (where 'grass'/'desert' score 0.40/0.44 against 'circle'); it has not been calibrated on
    ViT-B-32 (no weights offline here)."""
    st = _sql._state(con)
    words, csets = _lemma_index(st.names)
    out = {}
    for lab in labels:
        ll = set(_lemmas(str(lab)))
        hits = set()
        if ll:
            cand = set().union(*(words.get(w, set()) for w in ll))
            hits = {i for i in cand if csets[i] <= ll or ll <= csets[i]}
        out[lab] = hits
    how = "string match (same words, singular/plural folded)"
    if method == "string":
        return out, how
    emb, why = _label_embeddings(con, [str(lab) for lab in labels])
    if emb is None:
        if method == "embedding":
            raise InputError(f"cannot compare concept and label text with the table's encoder: {why}")
        return out, how + f"; no text-embedding match ({why})"
    E, ids = _concept_matrix(con)
    mu = E.mean(axis=0)
    D = E - mu
    D /= np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
    L = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12) - mu
    L /= np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-12)
    sims = L @ D.T
    k = min(LABEL_MATCH_NEIGHBOURS, sims.shape[1])
    for j, lab in enumerate(labels):
        near = np.argpartition(-sims[j], k - 1)[:k] if k else np.zeros(0, np.int64)
        out[lab] |= {int(ids[i]) for i in near if sims[j, i] >= threshold}
    return out, how + (f" + text-embedding match ({why}; the label's {LABEL_MATCH_NEIGHBOURS} nearest concepts "
                       f"with centred cosine >= {threshold})")


def _concept_matrix(con):
    tbl = _sql.run_query(con, "SELECT concept_id, embedding FROM concepts ORDER BY concept_id")
    ids = tbl.column("concept_id").to_numpy()
    emb = tbl.column("embedding").combine_chunks()
    d = emb.type.list_size
    E = np.asarray(emb.values, dtype=np.float32).reshape(-1, d).astype(np.float64)
    E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    return E, ids


def _label_embeddings(con, labels: list[str]):
    """(embeddings, description) of the label texts with the table's encoder, or (None, reason)."""
    st = _sql._state(con)
    meta = st.metadata or {}
    model = meta.get("model_name")
    if not model:
        return None, "the table records no model"
    try:
        from .encoder import load_encoder

        enc = load_encoder(model, meta.get("pretrained"))
    except Exception as exc:  # WeightsUnavailableError, unknown architecture, no network, ...
        return None, f"model {model!r} not loadable: {str(exc).splitlines()[0][:160]}"
    fp = meta.get("model_fingerprint")
    if fp and getattr(enc, "fingerprint", fp) != fp:
        return None, f"model {model!r} loads with another fingerprint than the table's"
    tpl = meta.get("prompt_template")
    texts = [tpl.format(t) if tpl else t for t in labels]
    try:
        emb = np.asarray(enc.encode_text(texts), dtype=np.float64)
    except Exception as exc:
        return None, f"encoding failed: {exc}"
    E, _ = _concept_matrix(con)
    if emb.shape[1] != E.shape[1]:
        return None, f"model gives {emb.shape[1]}-d text embeddings, concepts table has {E.shape[1]}-d"
    return emb, f"model {model!r}"


@dataclass
class SpuriousResult:
    """Concepts over-represented per label (and, with a split column, per-label split shifts)."""

    table: pa.Table
    label_column: str
    split_column: str | None
    labels: list
    label_match: str
    excluded: dict
    n_images: int
    params: dict = field(default_factory=dict)
    split_table: pa.Table | None = None
    label_counts: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        return to_records(self.combined())

    def combined(self) -> pa.Table:
        """Over-represented rows (kind='over_represented') then split-shift rows (kind='split_shift'),
        with one common set of columns (null where a statistic does not apply)."""
        a = self.table
        if self.split_table is None or self.split_table.num_rows == 0:
            return a
        b = self.split_table
        cols = list(dict.fromkeys(a.column_names + b.column_names))
        def widen(t):
            for c in cols:
                if c not in t.column_names:
                    typ = a.schema.field(c).type if c in a.column_names else b.schema.field(c).type
                    t = t.append_column(c, pa.nulls(t.num_rows, typ))
            return t.select(cols)
        return pa.concat_tables([widen(a), widen(b)])

    def summary(self, per_label: int = 3) -> str:
        p = self.params
        lines = [f"{self.n_images} images, {len(self.labels)} labels ({self.label_column}); over-represented = "
                 f"one-sided test, BH q < {p.get('alpha')}, lift >= {p.get('min_lift')}, support >= "
                 f"{p.get('min_support')} images; concepts naming the label excluded by {self.label_match}"]
        by = {}
        for r in self.table.to_pylist():
            by.setdefault(r["label"], []).append(r)
        for lab in self.labels:
            rs = by.get(lab, [])
            txt = ", ".join(f"{r['concept']} ({r['prevalence']:.0%} vs {r['prevalence_other']:.0%}, lift "
                            f"{r['lift']:.1f})" for r in rs[:per_label]) or "-"
            lines.append(f"  {lab}: {txt}")
        if self.split_table is not None:
            lines.append(f"split shift ({self.split_column}): {self.split_table.num_rows} (label, concept, split) "
                         f"differences at q < {p.get('alpha')} and |change| >= {p.get('min_change')}")
            for r in self.split_table.to_pylist()[:8]:
                lines.append(f"  {r['label']} / {r['concept']}: {r['split']} {r['prevalence']:.0%} vs "
                             f"{r['reference_split']} {r['reference_prevalence']:.0%} (q={r['q_value']:.2g})")
        return "\n".join(lines)

    def plot(self, path, max_labels: int = 6, per_label: int = 6):
        return _plot_spurious(self, path, max_labels=max_labels, per_label=per_label)


def spurious(db, label_column: str = "label", split_column: str | None = None, *, min_weight: float = 0.0,
             min_support: int = 5, min_lift: float = 1.5, alpha: float = 0.05, top: int = 10,
             min_change: float = 0.10, split_reference: str | None = None, label_match: str = "auto",
             label_threshold: float = LABEL_MATCH_THRESHOLD, where: str | None = None,
             params: Mapping[str, Any] | None = None, materialize: bool = False,
             table: str = "images", engine: str = "auto",
             storage_options: Mapping[str, str] | None = None) -> SpuriousResult:
    """Concepts over-represented in each label compared with the other labels.

    For label L and concept c: ``prevalence`` = share of L's images with weight > ``min_weight``,
    ``prevalence_other`` = the same share among the other labels' images, ``lift``, ``npmi``, a
    one-sided test (L more often than the rest; pooled z or Fisher exact), BH over all (label,
    concept) pairs with at least ``min_support`` images. Reported: q < ``alpha`` and lift >=
    ``min_lift``, at most ``top`` per label, strongest first (largest prevalence difference, then
    lift). Concepts that merely name the label are left out (``label_match``: 'auto' = string rule
    plus text-embedding similarity when the table's encoder loads, 'string', 'embedding', 'none';
    ``label_threshold``: the centred cosine for the embedding rule); the result says which was used.

    With ``split_column``: for every label, the concepts whose prevalence differs between a split and
    the reference split (``split_reference``, default the largest split): two-sided test, BH,
    |change| >= ``min_change``. ``engine``: as for :func:`drift`.
    """
    con, owned = _open(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        st = _sql._state(con)
        _sql.check_column(con, label_column, what="label column")
        groups = [label_column] + ([split_column] if split_column else [])
        if split_column:
            _sql.check_column(con, split_column, what="split column")
        ct = _sql.concept_crosstab(con, groups, where=where, params=params, min_weight=min_weight, engine=engine)
        if not ct.groups:
            raise InputError(f"no images with concepts and a {label_column!r} value")
        if split_column:
            labels = sorted({g[0] for g in ct.groups}, key=_sql._sort_key)
            li = {lab: i for i, lab in enumerate(labels)}
            G, C = len(labels), ct.present.shape[1]
            n = np.zeros(G)
            present = np.zeros((G, C))
            wsum = np.zeros((G, C))
            for j, (lab, _s) in enumerate(ct.groups):
                n[li[lab]] += ct.n[j]
                present[li[lab]] += ct.present[j]
                wsum[li[lab]] += ct.weight_sum[j]
        else:
            labels = list(ct.groups)
            n, present, wsum = ct.n.astype(float), ct.present.astype(float), ct.weight_sum
        if label_match == "none":
            excluded, how = {lab: set() for lab in labels}, "nothing (label_match='none')"
        else:
            excluded, how = label_name_concepts(con, labels, threshold=label_threshold, method=label_match)
        tbl, counts = _over_represented(labels, n, present, wsum, st.names, excluded, min_support, min_lift, alpha,
                                        top)
        split_tbl = None
        if split_column:
            split_tbl = _split_shift(ct, st.names, split_reference, min_support, min_change, alpha, top)
        excl_names = {lab: sorted(st.names.name(c) for c in excluded.get(lab, ())) for lab in labels}
        return SpuriousResult(table=tbl, label_column=label_column, split_column=split_column, labels=labels,
                              label_match=how, excluded=excl_names, n_images=int(n.sum()),
                              params={"min_weight": min_weight, "min_support": min_support, "min_lift": min_lift,
                                      "alpha": alpha, "top": top, "min_change": min_change,
                                      "tested_pairs": counts["tested"], "engine": ct.engine},
                              split_table=split_tbl, label_counts={lab: int(x) for lab, x in zip(labels, n)})
    finally:
        if owned:
            con.close()


def _over_represented(labels, n, present, wsum, names, excluded, min_support, min_lift, alpha, top):
    N = float(n.sum())
    tot = present.sum(axis=0)
    tested = present >= min_support
    li, ci = np.nonzero(tested)
    a = present[li, ci]
    nl = n[li]
    b = tot[ci] - a
    no = N - nl
    # one-sided p only where the label has the concept more often than the rest; elsewhere p >= 0.5
    # and is set to 1, which leaves every q-value below 0.5 unchanged (BH) and saves most exact tests
    with np.errstate(invalid="ignore", divide="ignore"):
        up = (a / nl) > (b / np.maximum(no, 1))
    p = np.ones(len(a))
    if up.any():
        # exact only where it can matter: a pair with p > alpha cannot get q < alpha (see screen)
        p[up] = proportion_test(a[up], nl[up], b[up], no[up], "greater", screen=alpha)
    # q < alpha needs p <= alpha, and the larger p-values only count (n_tests): BH over the small ones
    q = np.ones(len(p))
    small = np.flatnonzero(p <= alpha)
    q[small] = benjamini_hochberg(p[small], n_tests=len(p))
    # the rest only for the significant pairs (a few percent of them)
    lf = np.full(len(a), np.nan)
    prev = np.full(len(a), np.nan)
    prev_o = np.full(len(a), np.nan)
    sig = np.flatnonzero(q < alpha)
    lf[sig] = lift(a[sig], nl[sig], tot[ci[sig]], N)
    with np.errstate(invalid="ignore", divide="ignore"):
        prev[sig] = a[sig] / nl[sig]
        prev_o[sig] = np.where(no[sig] > 0, b[sig] / no[sig], np.nan)
    exm = np.zeros(present.shape, bool)
    for k, lab in enumerate(labels):
        cs = list(excluded.get(lab, ()))
        if cs:
            exm[k, cs] = True
    idx = sig[(lf[sig] >= min_lift) & ~exm[li[sig], ci[sig]]]
    delta = prev - prev_o
    # strongest first within each label: prevalence difference, then lift
    idx = idx[np.lexsort((-lf[idx], -delta[idx], li[idx]))]
    npm = np.full(len(a), np.nan)
    npm[idx] = npmi(a[idx], nl[idx], tot[ci[idx]], N)
    out = {k: [] for k in ("label", "concept", "rank", "n_label", "n_present", "prevalence", "prevalence_other",
                           "change", "lift", "npmi", "mean_weight", "mean_weight_other", "p_value", "q_value")}
    per = {}
    wtot = wsum.sum(axis=0)
    for i in idx:
        lab = labels[li[i]]
        k = per.get(lab, 0)
        if k >= top:
            continue
        per[lab] = k + 1
        c = int(ci[i])
        out["label"].append(lab)
        out["concept"].append(names.name(c))
        out["rank"].append(k + 1)
        out["n_label"].append(int(nl[i]))
        out["n_present"].append(int(a[i]))
        out["prevalence"].append(float(prev[i]))
        out["prevalence_other"].append(float(prev_o[i]))
        out["change"].append(float(delta[i]))
        out["lift"].append(float(lf[i]))
        out["npmi"].append(float(npm[i]))
        out["mean_weight"].append(float(wsum[li[i], c] / nl[i]))
        out["mean_weight_other"].append(float((wtot[c] - wsum[li[i], c]) / no[i]) if no[i] > 0 else float("nan"))
        out["p_value"].append(float(p[i]))
        out["q_value"].append(float(q[i]))
    label_type = pa.array(out["label"]).type if out["label"] else pa.string()
    types = {"label": label_type, "concept": pa.string(), "rank": pa.int32(), "n_label": pa.int64(),
             "n_present": pa.int64()}
    tbl = pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in out.items()})
    tbl = tbl.add_column(0, "kind", pa.array(["over_represented"] * tbl.num_rows, pa.string()))
    return tbl, {"tested": int(len(a))}


def _split_shift(ct, names, split_reference, min_support, min_change, alpha, top) -> pa.Table:
    by_label: dict = {}
    for j, (lab, s) in enumerate(ct.groups):
        by_label.setdefault(lab, {})[s] = j
    split_sizes: dict = {}
    for (lab, s), cnt in zip(ct.groups, ct.n):
        split_sizes[s] = split_sizes.get(s, 0) + int(cnt)
    if split_reference is None:
        ref = max(split_sizes, key=lambda s: (split_sizes[s], str(s)))
    else:
        ref = split_reference
        if ref not in split_sizes:
            raise InputError(f"split {ref!r} not found; splits: {', '.join(map(str, split_sizes))}")
    cand = []  # (label, split, row j, row r, concept ids)
    for lab, rows in by_label.items():
        if ref not in rows:
            continue
        r = rows[ref]
        for s, j in rows.items():
            if s == ref:
                continue
            cs = np.flatnonzero(ct.present[j] + ct.present[r] >= min_support)
            if len(cs):
                cand.append((lab, s, j, r, cs))
    if not cand:
        return _empty_split_table()
    x1 = np.concatenate([ct.present[j, cs] for _, _, j, _, cs in cand])
    n1 = np.concatenate([np.full(len(cs), ct.n[j]) for _, _, j, _, cs in cand])
    x2 = np.concatenate([ct.present[r, cs] for _, _, _, r, cs in cand])
    n2 = np.concatenate([np.full(len(cs), ct.n[r]) for _, _, _, r, cs in cand])
    p = proportion_test(x1, n1, x2, n2, "two-sided")
    q = benjamini_hochberg(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        pr1, pr2 = x1 / n1, x2 / n2
    d = pr1 - pr2
    meta = [(lab, s, int(c)) for lab, s, _, _, cs in cand for c in cs]
    keep = np.flatnonzero((q < alpha) & (np.abs(d) >= min_change))
    keep = keep[np.lexsort((-np.abs(d[keep]),))]
    out = {k: [] for k in ("label", "concept", "split", "reference_split", "n_split", "n_reference", "prevalence",
                           "reference_prevalence", "change", "p_value", "q_value")}
    per = {}
    for i in keep:
        lab, s, c = meta[i]
        key = (lab, s)
        if per.get(key, 0) >= top:
            continue
        per[key] = per.get(key, 0) + 1
        out["label"].append(lab)
        out["concept"].append(names.name(c))
        out["split"].append(s)
        out["reference_split"].append(ref)
        out["n_split"].append(int(n1[i]))
        out["n_reference"].append(int(n2[i]))
        out["prevalence"].append(float(pr1[i]))
        out["reference_prevalence"].append(float(pr2[i]))
        out["change"].append(float(d[i]))
        out["p_value"].append(float(p[i]))
        out["q_value"].append(float(q[i]))
    out_t = {k: pa.array(v) if v else pa.array([], pa.string()) for k, v in out.items()}
    for k in ("n_split", "n_reference"):
        out_t[k] = pa.array(out[k], pa.int64())
    for k in ("prevalence", "reference_prevalence", "change", "p_value", "q_value"):
        out_t[k] = pa.array(out[k], pa.float64())
    tbl = pa.table(out_t)
    kind = pa.array(["split_shift"] * tbl.num_rows, pa.string())
    return tbl.add_column(0, "kind", kind)


def _empty_split_table() -> pa.Table:
    return pa.table({"kind": pa.array([], pa.string()), "label": pa.array([], pa.string()),
                     "concept": pa.array([], pa.string()), "split": pa.array([], pa.string()),
                     "reference_split": pa.array([], pa.string()), "n_split": pa.array([], pa.int64()),
                     "n_reference": pa.array([], pa.int64()), "prevalence": pa.array([], pa.float64()),
                     "reference_prevalence": pa.array([], pa.float64()), "change": pa.array([], pa.float64()),
                     "p_value": pa.array([], pa.float64()), "q_value": pa.array([], pa.float64())})


# =========================================================================================== plots
def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'lance-concepts[plots]'") from None
    return plt


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]


def _line_colours(concepts: Sequence[str]) -> list:
    """One colour per concept; a concept that names a colour ('red', 'red rose') is drawn in it."""
    named = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4", "orange": "#ff7f0e", "purple": "#9467bd",
             "brown": "#8c564b", "pink": "#e377c2", "grey": "#7f7f7f", "gray": "#7f7f7f", "yellow": "#d4b000",
             "black": "#222222", "white": "#bbbbbb", "olive": "#bcbd22", "cyan": "#17becf"}
    out, used = [], set()
    for c in concepts:
        words = str(c).strip().lower().split()
        col = named.get(" ".join(words)) or (named.get(words[0]) if words else None)  # 'red rose' -> red
        if col is not None and col not in used:
            out.append(col)
            used.add(col)
        else:
            out.append(None)
    spare = [c for c in _COLORS + ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"] if c not in used]
    k = 0
    for i, col in enumerate(out):
        if col is None:
            out[i] = spare[k % len(spare)]
            k += 1
    return out


def _plot_drift(res: DriftResult, path, max_concepts: int = 8):
    plt = _plt()
    t = res.table.to_pydict()
    present = set(t["concept"])  # alerts can name concepts outside the ones chosen for the table
    concepts = [c for c in dict.fromkeys([a["concept"] for a in res.alerts] + res.concepts) if c in present]
    concepts = concepts[:max_concepts]
    x_labels = res.windows
    xs = np.arange(len(x_labels))
    fig, axes = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]})
    ax_p, ax_w, ax_j = axes
    alert_concepts = {a["concept"] for a in res.alerts}
    colours = _line_colours(concepts)
    for k, c in enumerate(concepts):
        idx = [i for i, cc in enumerate(t["concept"]) if cc == c]
        col = colours[k]
        p = np.array([t["prevalence"][i] for i in idx])
        lo = np.array([t["prevalence_low"][i] for i in idx])
        hi = np.array([t["prevalence_high"][i] for i in idx])
        mw = np.array([t["mean_weight"][i] for i in idx])
        mlo = np.array([t["mean_weight_low"][i] for i in idx], dtype=float)
        mhi = np.array([t["mean_weight_high"][i] for i in idx], dtype=float)
        al = np.array([t["alert"][i] for i in idx], dtype=bool)
        lw = 2.4 if c in alert_concepts else 1.4
        label = c + ("  (alert)" if c in alert_concepts else "")
        ax_p.plot(xs, p, "-o", color=col, lw=lw, ms=3.5, label=label)
        ax_p.fill_between(xs, lo, hi, color=col, alpha=0.15, lw=0)
        if al.any():
            ax_p.plot(xs[al], p[al], "o", ms=8, mfc="none", mec=col, mew=1.6)
        ax_w.plot(xs, mw, "-", color=col, lw=lw)
        if np.isfinite(mlo).any():
            ax_w.fill_between(xs, np.clip(mlo, 0, None), mhi, color=col, alpha=0.15, lw=0)
    ref_i = x_labels.index(res.reference)
    for ax in (ax_p, ax_w, ax_j):
        ax.axvline(ref_i, color="#999999", ls=":", lw=1)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    ax_p.set_ylabel("prevalence\n(share of images)")
    ax_p.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax_p.set_ylim(bottom=0)
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    thr = res.params.get("min_weight", 0)
    ax_p.set_title(f"Concept prevalence per {res.every} (weight > {thr:g}), 95% Wilson intervals; "
                   f"circles: alert vs reference {res.reference}", fontsize=10, loc="left")
    ax_w.set_ylabel("mean weight")
    has_ci = any(v is not None for v in t["mean_weight_low"])
    ax_w.set_title("Mean concept weight" + (", 95% intervals" if has_ci else ""), fontsize=10, loc="left")
    js = [res.js[w] for w in x_labels]
    ax_j.bar(xs, js, color="#555555", width=0.6)
    ax_j.set_ylabel("JS div.\n(bits)")
    ax_j.set_title("Jensen-Shannon divergence of the concept distribution from the reference", fontsize=10,
                   loc="left")
    step = max(1, len(xs) // 16)
    ax_j.set_xticks(xs[::step])
    ax_j.set_xticklabels(x_labels[::step], rotation=45 if len(xs) > 8 else 0, ha="right" if len(xs) > 8 else "center")
    ax_j.set_xlabel(f"{res.time_column} ({res.every})")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _plot_spurious(res: SpuriousResult, path, max_labels: int = 6, per_label: int = 6):
    plt = _plt()
    rows = res.table.to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    # labels with the strongest findings first
    labels = sorted(by, key=lambda lab: -by[lab][0]["change"])[:max_labels]
    extra = res.split_table is not None and res.split_table.num_rows > 0
    n_panels = max(len(labels), 1) + (1 if extra else 0)
    ncols = min(3, n_panels)
    nrows = int(math.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 0.5 + 2.9 * nrows), squeeze=False)
    flat = axes.ravel()
    for k, lab in enumerate(labels):
        ax = flat[k]
        rs = by[lab][:per_label][::-1]
        ys = np.arange(len(rs))
        ax.barh(ys + 0.2, [r["prevalence"] for r in rs], height=0.4, color="#d62728", label=f"{lab}")
        ax.barh(ys - 0.2, [r["prevalence_other"] for r in rs], height=0.4, color="#9e9e9e", label="other labels")
        ax.set_yticks(ys)
        ax.set_yticklabels([r["concept"] for r in rs], fontsize=9)
        for y, r in zip(ys, rs):
            ax.text(r["prevalence"], y + 0.2, f" x{r['lift']:.1f}", va="center", fontsize=8)
        top_p = max([r["prevalence"] for r in rs] + [r["prevalence_other"] for r in rs] + [0.01])
        ax.set_xlim(0, min(1.12, max(0.2, top_p * 1.3)))
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.set_title(f"{res.label_column} = {lab}  (n={res.label_counts.get(lab, '?')})", fontsize=10, loc="left")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.spines[["top", "right"]].set_visible(False)
    if not labels:
        flat[0].text(0.5, 0.5, "no over-represented concepts", ha="center", va="center")
        flat[0].set_axis_off()
    if extra:
        ax = flat[len(labels) if labels else 1]
        st = res.split_table.to_pylist()[:per_label + 2][::-1]
        ys = np.arange(len(st))
        ax.barh(ys + 0.2, [r["prevalence"] for r in st], height=0.4, color="#1f77b4", label="split")
        ax.barh(ys - 0.2, [r["reference_prevalence"] for r in st], height=0.4, color="#9e9e9e",
                label=f"reference split ({st[0]['reference_split'] if st else ''})")
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{r['label']}: {r['concept']} ({r['split']})" for r in st], fontsize=8)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.set_title(f"largest split differences ({res.split_column})", fontsize=10, loc="left")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.spines[["top", "right"]].set_visible(False)
    for ax in flat[n_panels:]:
        ax.set_axis_off()
    fig.suptitle("Concepts over-represented per label: share of images with the concept, label vs other labels "
                 "(x = lift)", fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_filter(db, concepts: str | Sequence[str], min_weight: float | Sequence[float], path, *,
                table: str = "images", bins: int = 50, storage_options: Mapping[str, str] | None = None):
    """Histogram of each concept's weights over the images that have it, with the threshold and the
    number of images above it: to choose ``--min``."""
    plt = _plt()
    names = _as_list(concepts)
    thr = [float(t) for t in (_as_list(min_weight) if not isinstance(min_weight, (int, float)) else [min_weight])]
    if len(thr) == 1:
        thr = thr * len(names)
    con, owned = _open(db, table=table, storage_options=storage_options)
    try:
        st = _sql._state(con)
        n_img = _sql.run_query(con, "SELECT count(*) AS n FROM images WHERE concept_ids IS NOT NULL").column(0)[0].as_py()
        fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), squeeze=False)
        colours = _line_colours(names)
        for ax, name, t, col in zip(axes[:, 0], names, thr, colours):
            st.names.id(name)
            w = _sql.run_query(con, "SELECT weight FROM concept_images($c, 0.0)", {"c": name}).column(0).to_numpy()
            ax.hist(w, bins=bins, color=col, alpha=0.85, log=True)
            ax.axvline(t, color="#222222", ls="--", lw=1.2)
            above = int((w > t).sum())
            ax.set_title(f"{name}: {len(w):,} of {n_img:,} images have it; {above:,} above {t:g}", fontsize=10,
                         loc="left")
            ax.set_ylabel("images (log)")
            ax.spines[["top", "right"]].set_visible(False)
        axes[-1, 0].set_xlabel("concept weight")
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return Path(path)
    finally:
        if owned:
            con.close()


# ========================================================================================== report
def _fig_data_uri(plot_method) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fig.png"
        plot_method(p)
        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()


def _html_table(table: pa.Table, max_rows: int = 40, cols: Sequence[str] | None = None) -> str:
    if cols:
        table = table.select([c for c in cols if c in table.column_names])
    recs = to_records(table)[:max_rows]
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in table.column_names)
    body = []
    for r in recs:
        tds = []
        for c in table.column_names:
            v = r[c]
            s = _fmt_cell(v) if not isinstance(v, float) else _fmt_cell(float(v))
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            tds.append(f"<td class='{'n' if num else ''}'>{_html.escape(s)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    more = f"<p class='more'>{table.num_rows - max_rows} more rows not shown</p>" if table.num_rows > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}th,td{padding:.25em .6em;border-bottom:1px solid #eee;
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f6f6f6}
img{max-width:100%;border:1px solid #eee}.meta{color:#666;font-size:.9em}.more{color:#888;font-size:.8em}
code{background:#f4f4f4;padding:0 .25em}ul{margin-top:.3em}
"""


def report(db, html, *, time_column: str | None = "timestamp", every: str = "month",
           label_column: str | None = "label", split_column: str | None = None, top: int = 8,
           min_weight: float = 0.0, alpha: float = 0.05, min_change: float = 0.10, min_lift: float = 1.5,
           materialize: bool = True, label_match: str = "auto", table: str = "images",
           storage_options: Mapping[str, str] | None = None) -> Path:
    """Write one self-contained HTML page (figures embedded as PNG data URIs) with a summary of the
    table, the drift section (if ``time_column`` exists) and the spurious-correlation section (if
    ``label_column`` exists). Sections whose column is missing say so. Returns the path."""
    con, owned = _open(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        st = _sql._state(con)
        cols = _sql.images_columns(con)
        summary = _summary(con, st, cols)
        parts = [f"<h1>lance-concepts report</h1><p class='meta'>{_html.escape(str(st.db))}, table "
                 f"<code>{_html.escape(st.table)}</code>, generated {_dt.datetime.now().isoformat(timespec='seconds')}"
                 "</p>", "<h2>Summary</h2>", summary]
        if time_column and time_column in cols:
            res = drift(con, time_column, every, top=top, min_weight=min_weight, alpha=alpha, min_change=min_change,
                        weight_intervals=True)
            parts += ["<h2>Drift over time</h2>", f"<pre>{_html.escape(res.summary())}</pre>",
                      f"<img alt='drift' src='{_fig_data_uri(res.plot)}'>",
                      "<h3>Per window</h3>",
                      _html_table(res.table, max_rows=60, cols=["window", "concept", "n_images", "prevalence",
                                                                "prevalence_low", "prevalence_high", "mean_weight",
                                                                "change", "q_value", "alert"])]
        else:
            parts += ["<h2>Drift over time</h2>", f"<p>No time column <code>{_html.escape(str(time_column))}</code> "
                      "in the table: section skipped.</p>"]
        if label_column and label_column in cols:
            sp_split = split_column if split_column and split_column in cols else None
            res = spurious(con, label_column, sp_split, min_weight=min_weight, alpha=alpha, min_lift=min_lift,
                           min_change=min_change, top=top, label_match=label_match)
            parts += ["<h2>Spurious correlations</h2>", f"<pre>{_html.escape(res.summary())}</pre>",
                      f"<img alt='spurious' src='{_fig_data_uri(res.plot)}'>", "<h3>Over-represented concepts</h3>",
                      _html_table(res.table, max_rows=80, cols=["label", "concept", "n_label", "prevalence",
                                                                "prevalence_other", "lift", "npmi", "q_value"])]
            if res.split_table is not None:
                parts += [f"<h3>Split shift ({_html.escape(sp_split)})</h3>", _html_table(res.split_table, 40)]
            elif split_column:
                parts += [f"<p>No split column <code>{_html.escape(split_column)}</code>.</p>"]
        else:
            parts += ["<h2>Spurious correlations</h2>", f"<p>No label column <code>{_html.escape(str(label_column))}"
                      "</code> in the table: section skipped.</p>"]
        parts.append("<h2>How to read this</h2>" + _HOW_TO_READ)
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>lance-concepts report</title>"
                f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")
        out = Path(html)
        out.write_text(page, encoding="utf-8")
        return out
    finally:
        if owned:
            con.close()


_HOW_TO_READ = """<ul>
<li><b>Prevalence</b>: share of images whose concept weight is above the threshold; bands and brackets are 95%
Wilson intervals.</li>
<li><b>Alert</b>: the prevalence in a window differs from the reference window with Benjamini-Hochberg q below
alpha (two-proportion z-test, Fisher's exact test for small counts) and by at least the minimum change.</li>
<li><b>Lift</b>: how many times more often the concept appears in the label than overall; <b>nPMI</b>: normalised
pointwise mutual information (0 independent, 1 always together). Concepts that merely name the label are left
out.</li>
<li><b>Jensen-Shannon divergence</b>: how far a window's overall concept mix (share of total weight) is from the
reference window's (0 = same, 1 = disjoint).</li></ul>"""


def _summary(con, st, cols) -> str:
    q = "SELECT count(*) AS n, count(concept_ids) AS n_ok, avg(len(concept_ids)) AS l0 FROM images"
    r = _sql.run_query(con, q).to_pylist()[0]
    meta = st.metadata or {}
    items = [("images", f"{r['n']:,}"), ("with concepts", f"{r['n_ok']:,}"),
             ("errors / no concepts", f"{r['n'] - r['n_ok']:,}"),
             ("mean non-zero concepts per image", f"{(r['l0'] or 0):.1f}"),
             ("vocabulary", f"{len(st.names):,} concepts ({meta.get('vocabulary', meta.get('vocabulary_name', '?'))})"),
             ("model", f"{meta.get('model_name', '?')} / {meta.get('pretrained')}"),
             ("l1 penalty", str(meta.get("l1_penalty", "?")))]
    top = _sql.run_query(con, "SELECT concept_name(cid) AS concept, count(*) AS n FROM (SELECT unnest(concept_ids) "
                              "AS cid FROM images) GROUP BY cid ORDER BY n DESC, cid LIMIT 15")
    lis = "".join(f"<tr><th>{_html.escape(k)}</th><td>{_html.escape(v)}</td></tr>" for k, v in items)
    tops = ", ".join(f"{_html.escape(str(x['concept']))} ({x['n'] / max(r['n_ok'], 1):.0%})" for x in top.to_pylist())
    return f"<table>{lis}</table><p>Most frequent concepts: {tops}</p>"
