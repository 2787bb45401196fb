"""Concepts tied to a class label or a split: over-representation tests with lift and nPMI, split shift.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..lake.aggregates import sort_key
from ..records import to_records
from ..threads import hot_path
from .conditions import where_condition
from .connection import check_column, connection_state, open_connection
from .crosstab import concept_crosstab
from .examples import ExampleSource, examples_html, label_concept_examples
from .labels import LABEL_MATCH_THRESHOLD, label_name_rules
from .findings import excluded_findings, under_represented
from .plots import plot_spurious
from .statistics import benjamini_hochberg, lift, npmi, proportion_test


@dataclass
class SpuriousResult:
    """Concepts over- and under-represented per label, the concepts left out because they name the label
    (with the rule that left each out), and with a split column, per-label split shifts.

    ``ratio`` = prevalence / prevalence_other: the comparison printed ("89% vs 15%, x5.9"). ``lift`` =
    prevalence / the concept's share of all images (label included), the classic association measure;
    ``min_lift`` filters on it."""

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
    under_table: pa.Table | None = None
    excluded_table: pa.Table | None = None
    source: ExampleSource | None = None

    def records(self) -> list[dict]:
        return to_records(self.combined())

    def to_arrow(self) -> pa.Table:
        return self.combined()

    def to_pandas(self):
        return self.combined().to_pandas()

    def combined(self) -> pa.Table:
        """Over-represented rows (kind='over_represented'), under-represented rows, split-shift rows
        (kind='split_shift'), then the excluded concepts (kind='excluded', with ``excluded_by``), with one
        common set of columns (null where a statistic does not apply)."""
        parts = [t for t in (self.table, self.under_table, self.split_table, self.excluded_table)
                 if t is not None and t.num_rows]
        if not parts:
            return self.table
        cols, types = [], {}
        for t in [self.table] + parts:
            for f in t.schema:
                if f.name not in types:
                    cols.append(f.name)
                    types[f.name] = f.type

        def widen(t):
            for c in cols:
                if c not in t.column_names:
                    t = t.append_column(c, pa.nulls(t.num_rows, types[c]))
            return t.select(cols).cast(pa.schema([(c, types[c]) for c in cols]))
        return pa.concat_tables([widen(t) for t in parts])

    def examples(self, label, concept: str, n: int = 6) -> pa.Table:
        """The images behind one finding: up to ``n`` with ``label`` and ``concept`` ('with concept',
        strongest first) and up to ``n`` with the label without it ('without concept'); columns group,
        id, uri, weight."""
        if self.source is None:
            raise InputError("this result does not know its table; run spurious(db, ...) again")
        return label_concept_examples(self.source, label, concept, n=n)

    def findings(self, n: int = 10) -> list[dict]:
        """The strongest findings over all labels (largest |prevalence difference|), both directions."""
        rows = self.table.to_pylist() + (self.under_table.to_pylist() if self.under_table is not None else [])
        return sorted(rows, key=lambda r: -abs(r["change"]))[:n]

    def summary(self, per_label: int = 3, max_labels: int = 20) -> str:
        """Strongest findings first; per label only when there are few labels (or ``max_labels`` is raised)."""
        p = self.params
        lines = [f"{self.n_images} images, {len(self.labels)} labels ({self.label_column}). A finding reads "
                 f"'concept: share of the label's images vs share of the other labels' images, ratio of the two'; "
                 f"one-sided tests, BH q < {p.get('alpha')}, lift (vs all images) >= {p.get('min_lift')} (over) or "
                 f"ratio <= 1/{p.get('min_lift')} (under), support >= {p.get('min_support')} images."]
        over = self.table.to_pylist()
        under = self.under_table.to_pylist() if self.under_table is not None else []
        with_f = {r["label"] for r in over + under}
        lines.append(f"{len(over)} over-represented (+), {len(under)} under-represented (-) findings in "
                     f"{len(with_f)} of {len(self.labels)} labels; strongest:")
        for r in self.findings(min(10, max(1, len(over) + len(under)))):
            if over or under:
                lines.append(f"  {r['label']}: {_finding_text(r)}")
        if len(self.labels) <= max_labels:
            by: dict = {}
            for r in over + under:
                by.setdefault(r["label"], []).append(r)
            lines.append("per label:")
            for lab in self.labels:
                rs = by.get(lab, [])
                if rs:
                    rs = [r for r in rs if r["kind"] == "over_represented"][:per_label] + \
                         [r for r in rs if r["kind"] == "under_represented"][:per_label]
                    lines.append(f"  {lab}: " + "; ".join(_finding_text(r) for r in rs))
            quiet = [str(lab) for lab in self.labels if lab not in with_f]
            if quiet:
                lines.append(f"  no finding: {', '.join(quiet)}")
        else:
            lines.append(f"(per-label lines left out for {len(self.labels)} labels: see the table, or "
                         f"summary(max_labels={len(self.labels)}))")
        lines.append(_excluded_text(self))
        if self.split_table is not None:
            lines.append(f"split shift ({self.split_column}): {self.split_table.num_rows} (label, concept, split) "
                         f"differences at q < {p.get('alpha')} and |change| >= {p.get('min_change')}")
            for r in self.split_table.to_pylist()[:8]:
                lines.append(f"  {r['label']} / {r['concept']}: {r['split']} {r['prevalence']:.0%} vs "
                             f"{r['reference_split']} {r['reference_prevalence']:.0%} (q={r['q_value']:.2g})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return spurious_html(self)

    def plot(self, path, max_labels: int = 6, per_label: int = 6):
        return plot_spurious(self, path, max_labels=max_labels, per_label=per_label)


def _finding_text(r) -> str:
    sign = "+" if r["kind"] == "over_represented" else "-"
    ratio = "x inf" if r["ratio"] == float("inf") else f"x{r['ratio']:.2g}"
    return f"{sign}{r['concept']} ({r['prevalence']:.0%} vs {r['prevalence_other']:.0%}, {ratio})"


def _excluded_text(res) -> str:
    rows = res.excluded_table.to_pylist() if res.excluded_table is not None else []
    head = f"left out as naming the label ({res.label_match}): {len(rows)} (label, concept) pairs seen in enough images"
    if not rows:
        return head
    rows = sorted(rows, key=lambda r: (r["concept"] == str(r["label"]), -r["change"]))[:8]
    return head + "; largest: " + "; ".join(f"{r['label']}: {r['concept']} ({r['prevalence']:.0%} vs "
                                            f"{r['prevalence_other']:.0%}, by {r['excluded_by']})" for r in rows)


def spurious_html(res, n_findings: int = 8, n_examples: int = 5, with_summary: bool = True) -> str:
    """Summary plus, for the strongest findings, thumbnails with the concept next to without it."""
    import html

    rows = []
    for r in res.findings(n_findings):
        ex = ""
        if res.source is not None:
            try:
                ex = examples_html(res.source, res.examples(r["label"], r["concept"], n=n_examples), size=64)
            except InputError as exc:
                ex = f"<small>no examples: {html.escape(str(exc))}</small>"
        rows.append(f"<tr><td>{html.escape(str(r['label']))}</td><td>{html.escape(_finding_text(r))}</td>"
                    f"<td>{ex}</td></tr>")
    head = f"<pre>{html.escape(res.summary())}</pre>" if with_summary else ""
    return (f"{head}<table><tr><th>label</th><th>finding</th>"
            f"<th>examples</th></tr>{''.join(rows)}</table>")


@hot_path()
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
    con, owned = open_connection(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        st = connection_state(con)
        check_column(con, label_column, what="label column")
        groups = [label_column] + ([split_column] if split_column else [])
        if split_column:
            check_column(con, split_column, what="split column")
        where, params = where_condition(con, where, params)  # the where-language, values bound
        ct = concept_crosstab(con, groups, where=where, params=params, min_weight=min_weight, engine=engine)
        if not ct.groups:
            raise InputError(f"no images with concepts and a {label_column!r} value")
        if split_column:
            labels = sorted({g[0] for g in ct.groups}, key=sort_key)
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
            rules, how = {lab: {} for lab in labels}, "nothing (label_match='none')"
        else:
            rules, how = label_name_rules(con, labels, threshold=label_threshold, method=label_match)
        excluded = {lab: set(r) for lab, r in rules.items()}
        tbl, counts = _over_represented(labels, n, present, wsum, st.names, excluded, min_support, min_lift, alpha,
                                        top)
        under = under_represented(labels, n, present, st.names, min_support, min_lift, alpha, top,
                                  naming=set().union(*excluded.values()) if excluded else ())
        excluded_tbl = excluded_findings(labels, n, present, st.names, rules, min_support)
        split_tbl = None
        if split_column:
            split_tbl = _split_shift(ct, st.names, split_reference, min_support, min_change, alpha, top)
        excl_names = {lab: sorted(st.names.name(c) for c in excluded.get(lab, ())) for lab in labels}
        return SpuriousResult(table=tbl, label_column=label_column, split_column=split_column, labels=labels,
                              label_match=how, excluded=excl_names, n_images=int(n.sum()),
                              params={"min_weight": min_weight, "min_support": min_support, "min_lift": min_lift,
                                      "alpha": alpha, "top": top, "min_change": min_change,
                                      "tested_pairs": counts["tested"], "engine": ct.engine},
                              split_table=split_tbl, label_counts={lab: int(x) for lab, x in zip(labels, n)},
                              under_table=under, excluded_table=excluded_tbl,
                              source=ExampleSource.of(db, table, storage_options, min_weight, label_column))
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
                           "change", "ratio", "lift", "npmi", "mean_weight", "mean_weight_other", "p_value", "q_value")}
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
        out["ratio"].append(float(prev[i] / prev_o[i]) if prev_o[i] > 0 else float("inf"))
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
