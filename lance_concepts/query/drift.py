"""Concept prevalence over time: per-window prevalence with intervals, change tests and alerts.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..lake.aggregates import WINDOWS
from ..records import to_records
from ..threads import hot_path
from .conditions import where_condition
from .connection import as_list, check_column, connection_state, open_connection
from .crosstab import concept_crosstab
from .drift_null import by_change, js_null, window_bounds
from .examples import ExampleSource, examples_html, window_examples
from .plots import plot_drift
from .statistics import (
    benjamini_hochberg,
    homogeneity_p,
    js_divergence,
    mean_interval,
    proportion_test,
    wilson_interval,
)


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
    js_null: dict = field(default_factory=dict)
    window_starts: dict = field(default_factory=dict)
    source: ExampleSource | None = None

    def records(self) -> list[dict]:
        return to_records(self.table)

    def to_arrow(self) -> pa.Table:
        return self.table

    def to_pandas(self):
        return self.table.to_pandas()

    def peak_window(self, concept: str) -> str:
        """The window where ``concept`` differs most from the reference (its alert's window if it has one)."""
        for a in self.alerts:
            if a["concept"] == concept:
                return a["window"]
        rows = [r for r in self.table.to_pylist() if r["concept"] == concept and r["window"] != self.reference]
        if not rows:
            raise InputError(f"concept {concept!r} is not in this drift result; concepts: {', '.join(self.concepts)}")
        return max(rows, key=lambda r: abs(r["change"]))["window"]

    def examples(self, concept: str, window: str | None = None, n: int = 6) -> pa.Table:
        """Images showing ``concept`` in the reference window (group 'reference <w>') next to those in
        ``window`` (default: where it peaks, group 'peak <w>'), strongest weight first; columns group, id,
        uri, weight."""
        if self.source is None:
            raise InputError("this result does not know its table; run drift(db, ...) again")
        window = window or self.peak_window(concept)
        if window not in self.window_starts:
            raise InputError(f"window {window!r} not found; windows: {', '.join(self.windows)}")
        wins = {f"reference {self.reference}": window_bounds(self.window_starts[self.reference], self.every),
                f"peak {window}": window_bounds(self.window_starts[window], self.every)}
        return window_examples(self.source, self.time_column, wins, concept, n=n)

    def _repr_html_(self) -> str:
        import html

        parts = [f"<pre>{html.escape(self.summary())}</pre>"]
        for a in self.alerts[:6]:
            try:
                ex = examples_html(self.source, self.examples(a["concept"], n=5), size=64) if self.source else ""
            except InputError as exc:
                ex = f"<small>{html.escape(str(exc))}</small>"
            parts.append(f"<h4>{html.escape(a['concept'])} {a['direction']}</h4>{ex}")
        return "".join(parts)

    def summary(self, *, windows: int = 12) -> str:
        """Alerts, rising and falling first (with counts), then the divergences next to their no-drift level."""
        p = self.params
        lines = [f"{len(self.windows)} windows of one {self.every} ({self.windows[0]} .. {self.windows[-1]}), "
                 f"{sum(self.n_images.values())} images; reference window {self.reference}; "
                 f"{p.get('tested_concepts')} concepts tested; alert = prevalence not the same in all windows and "
                 f"a window with BH q < {p.get('alpha')} and |change| >= {p.get('min_change')}"]
        lines.append(f"alerts ({len(self.alerts)}): " + ("; ".join(
            f"{a['concept']} {a['direction']} {a['reference_prevalence']:.1%} -> {a['prevalence']:.1%} "
            f"({a['window']}, q={a['q_value']:.2g})" for a in self.alerts[:10]) or "none")
            + (f"; +{len(self.alerts) - 10} more" if len(self.alerts) > 10 else ""))
        last = self.windows[-1] if self.reference != self.windows[-1] else self.windows[0]
        lines.append(f"rising most ({len(self.rising)}, {self.reference} -> {last}): "
                     + (", ".join(f"{r['concept']} {r['change']:+.1%}" for r in self.rising) or "-"))
        lines.append(f"falling most ({len(self.falling)}, {self.reference} -> {last}): "
                     + (", ".join(f"{r['concept']} {r['change']:+.1%}" for r in self.falling) or "-"))
        ws = [w for w in self.windows if w != self.reference]
        shown = ws if len(ws) <= windows else sorted(ws, key=lambda w: -(self.js[w] - self.js_null.get(w, 0)))[:windows]
        lines.append("Jensen-Shannon divergence from the reference, next to its no-drift level for windows of the same "
                     "size (small windows inflate it)" + (f"; the {windows} most above it" if len(ws) > windows else "")
                     + ": " + ", ".join(f"{w} {self.js[w]:.3f} (null {self.js_null.get(w, float('nan')):.3f})"
                                        for w in shown))
        lines.append(f"concepts in the per-window table: {', '.join(self.concepts[:12])}"
                     + (f" (+{len(self.concepts) - 12})" if len(self.concepts) > 12 else "")
                     + f" (chosen by {p.get('choose', 'change')})")
        return "\n".join(lines)

    def plot(self, path, max_concepts: int = 8):
        return plot_drift(self, path, max_concepts=max_concepts)


@hot_path()
def drift(db, time_column: str = "timestamp", every: str = "month", *, concepts: Sequence[str] | None = None,
          top: int = 10, reference: str | None = None, min_weight: float = 0.0, alpha: float = 0.05,
          min_change: float = 0.10, min_support: int = 10, n_trend: int = 5, where: str | None = None,
          params: Mapping[str, Any] | None = None, weight_intervals: bool = False, materialize: bool = False,
          table: str = "images", engine: str = "auto",
          storage_options: Mapping[str, str] | None = None, choose: str = "change", current: str | None = None,
          now=None) -> DriftResult:
    """Concept prevalence and mean weight per time window, and what changed.

    Windows that move: ``current="last 7 days"`` with ``reference="previous 28 days"`` (the default
    then), a fixed period ``"2024-01-01..2024-01-31"`` or ``"first 30 days"``, counted back from
    ``now`` (default today, UTC): two windows, the same statistics (:mod:`lance_concepts.query.windows`).

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
    ``where``: optional condition on ``images`` in the where-language of search (``$name`` values from ``params``).
    ``weight_intervals``: also the 95% intervals of the mean weights (one more sum per posting: about
    a third slower at a million images; the columns are null without it).
    ``choose``: without ``concepts``, tabulate the ``top`` concepts that changed most ('change', the
    default: smallest q against the reference, then largest change) or the most prevalent ('prevalence').
    ``js_null`` (in the result and summary): each window's divergence under no drift, for comparison.
    ``engine``: where the counts come from (:func:`lance_concepts.query.crosstab.concept_crosstab`): 'auto' reads
    the table's rollup (:mod:`lance_concepts.lake.rollup`) when it is up to date and can answer, else scans.
    """
    con, owned = open_connection(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        st = connection_state(con)
        check_column(con, time_column, what="time column", kinds=("TIMESTAMP", "DATE"))
        if every not in WINDOWS:
            raise InputError(f"every must be one of {', '.join(WINDOWS)}; got {every!r}")
        if choose not in ("change", "prevalence"):
            raise InputError(f"choose must be 'change' or 'prevalence'; got {choose!r}")
        chosen = [st.names.id(c) for c in as_list(concepts)]
        where, params = where_condition(con, where, params)  # the where-language, values bound
        if current is not None:  # two moving windows summed from the daily counts
            from .windows import windowed_crosstab

            ct, _cur, _ref = windowed_crosstab(con, time_column, current, reference, now=now, where=where,
                                               params=params, min_weight=min_weight,
                                               second_moment=weight_intervals, engine=engine)
            every, reference = "window", "first"
        else:
            ct = concept_crosstab(con, time_column, every=every, where=where, params=params,
                                  min_weight=min_weight, second_moment=weight_intervals, engine=engine)
        if not ct.groups:
            raise InputError(f"no images with concepts and a {time_column!r} value"
                             + (" matching the condition" if where else ""))
        res = _drift_from_crosstab(ct, st.names, time_column, every, chosen, top, reference, min_weight, alpha,
                                   min_change, min_support, n_trend, choose=choose)
        res.source = ExampleSource.of(db, table, storage_options, min_weight)
        return res
    finally:
        if owned:
            con.close()


def _drift_from_crosstab(ct, names, time_column, every, chosen, top, reference, min_weight, alpha, min_change,
                         min_support, n_trend, choose: str = "prevalence") -> DriftResult:
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
        omni_q[tested] = benjamini_hochberg(homogeneity_p(ct.present[:, tested], n))
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
    elif choose == "change":
        sel = by_change(ct.present, n, qvals, r, tested, int(top))
        for a in alerts:
            cid = names.id(a["concept"])
            if cid not in sel:
                sel.append(cid)
    else:
        sel = [int(c) for c in np.argsort(-total_present, kind="stable")[: max(int(top), 0)] if total_present[c] > 0]
        for a in alerts:  # alerts are always shown
            cid = names.id(a["concept"])
            if cid not in sel:
                sel.append(cid)
    sel_a = np.array(sel, dtype=np.int64)
    lo, hi = wilson_interval(ct.present[:, sel_a], n[:, None])
    if ct.weight_sq is not None:
        mean, mlo, mhi = mean_interval(ct.weight_sum[:, sel_a], ct.weight_sq[:, sel_a], n[:, None])
        mlo = np.maximum(mlo, 0.0)  # weights are non-negative: so is the interval
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
                       js_null={labels[g]: float(v) for g, v in enumerate(
                           js_null(n, ct.weight_sum, ct.present, ct.weight_sq, r))},
                       window_starts={labels[g]: ct.groups[g] for g in range(G)},
                       n_images={labels[g]: int(n[g]) for g in range(G)},
                       params={"min_weight": min_weight, "alpha": alpha, "min_change": min_change,
                               "min_support": min_support, "tested_concepts": int(len(tested)),
                               "engine": ct.engine, "alert_concepts": sorted(alert_set), "choose":
                                   "given" if chosen else choose})


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
