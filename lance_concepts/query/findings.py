"""The other half of a spurious correlation (concepts a label lacks) and the findings left out because the
concept names the label: both reported, so nothing is dropped silently."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .statistics import benjamini_hochberg, proportion_test

_FLOAT = pa.float64()


def under_represented(labels, n, present, names, min_support, min_lift, alpha, top, naming=()) -> pa.Table:
    """Concepts a label has clearly less often than the other labels (kind='under_represented').

    Tested: pairs whose expected count in the label (concept share overall x label size) is at least
    ``min_support``, so absence can be significant; one-sided test (label less often), Benjamini-Hochberg
    within this family; reported where q < alpha and ratio <= 1 / min_lift, most negative change first.
    ``naming``: concept ids that name some label; left out here, since 'square' is trivially rare among
    circles."""
    N = float(n.sum())
    tot = present.sum(axis=0)
    ok = tot >= min_support
    ok[[c for c in naming if c < len(ok)]] = False
    cols = np.flatnonzero(ok)
    exp = np.outer(n, tot[cols]) / max(N, 1.0)
    li, cj = np.nonzero(exp >= min_support)
    ci = cols[cj]
    a, nl = present[li, ci], n[li]
    b, no = tot[ci] - a, N - nl
    with np.errstate(invalid="ignore", divide="ignore"):
        prev, prev_o = a / nl, np.where(no > 0, b / np.maximum(no, 1), np.nan)
    down = prev < prev_o
    p = np.ones(len(a))
    if down.any():
        p[down] = proportion_test(a[down], nl[down], b[down], no[down], "less", screen=alpha)
    q = np.ones(len(p))
    small = np.flatnonzero(p <= alpha)
    q[small] = benjamini_hochberg(p[small], n_tests=len(p))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = prev / prev_o
    keep = np.flatnonzero((q < alpha) & (ratio <= 1.0 / min_lift))
    keep = keep[np.lexsort(((prev - prev_o)[keep], li[keep]))]
    rows, per = [], {}
    for i in keep:
        lab = labels[li[i]]
        per[lab] = per.get(lab, 0) + 1
        if per[lab] > top:
            continue
        rows.append({"kind": "under_represented", "label": lab, "concept": names.name(int(ci[i])), "rank": per[lab],
                     "n_label": int(nl[i]), "n_present": int(a[i]), "prevalence": float(prev[i]),
                     "prevalence_other": float(prev_o[i]), "change": float(prev[i] - prev_o[i]),
                     "ratio": float(ratio[i]), "lift": float(prev[i] / (tot[ci[i]] / N)),
                     "p_value": float(p[i]), "q_value": float(q[i])})
    return _table(rows, labels, ["kind", "label", "concept", "rank", "n_label", "n_present", "prevalence",
                                 "prevalence_other", "change", "ratio", "lift", "p_value", "q_value"])


def excluded_findings(labels, n, present, names, rules, min_support) -> pa.Table:
    """Every concept left out because it names its label, the rule that left it out, and the numbers it
    had (kind='excluded'), so a reader sees e.g. 'hammer' dropped for 'circle' by the embedding rule."""
    li = {lab: k for k, lab in enumerate(labels)}
    N = float(n.sum())
    tot = present.sum(axis=0)
    rows = []
    for lab, rs in rules.items():
        k = li.get(lab)
        if k is None:
            continue
        for c, rule in sorted(rs.items(), key=lambda kv: -present[k, kv[0]] if kv[0] < present.shape[1] else 0):
            if c >= present.shape[1]:
                continue
            a, nl = float(present[k, c]), float(n[k])
            if a < min_support:
                continue
            no = N - nl
            po = (tot[c] - a) / no if no > 0 else float("nan")
            rows.append({"kind": "excluded", "label": lab, "concept": names.name(int(c)), "excluded_by": rule,
                         "n_label": int(nl), "n_present": int(a), "prevalence": a / nl, "prevalence_other": po,
                         "change": a / nl - po, "ratio": (a / nl) / po if po and po > 0 else float("inf")})
    return _table(rows, labels, ["kind", "label", "concept", "excluded_by", "n_label", "n_present", "prevalence",
                                 "prevalence_other", "change", "ratio"])


def _table(rows, labels, cols) -> pa.Table:
    label_type = pa.array(list(labels[:1])).type if len(labels) else pa.string()
    types = {"kind": pa.string(), "label": label_type, "concept": pa.string(), "excluded_by": pa.string(),
             "rank": pa.int32(), "n_label": pa.int64(), "n_present": pa.int64()}
    return pa.table({c: pa.array([r[c] for r in rows], types.get(c, _FLOAT)) for c in cols})
