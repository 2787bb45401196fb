"""Figures for the reports (matplotlib): drift curves with alerts, spurious findings per label, filter histograms.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .connection import as_list, connection_state, open_connection, run_query

if TYPE_CHECKING:  # annotations only: the result classes call these plots
    from .drift import DriftResult
    from .spurious import SpuriousResult


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


def plot_drift(res: DriftResult, path, max_concepts: int = 8):
    plt = _plt()
    t = res.table.to_pydict()
    present = set(t["concept"])  # alerts can name concepts outside the ones chosen for the table
    concepts = [c for c in dict.fromkeys([a["concept"] for a in res.alerts] + res.concepts) if c in present]
    n_all = len(concepts)
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
    shown = (f"{len(concepts)} of {n_all} concepts\n(alerts first, then by "
             f"{res.params.get('choose', 'change')})" if n_all > len(concepts) else None)
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9, title=shown,
                title_fontsize=8)
    thr = res.params.get("min_weight", 0)
    ax_p.set_title(f"Concept prevalence per {res.every} (weight > {thr:g}), 95% Wilson intervals; "
                   f"circles: alert vs reference {res.reference}", fontsize=10, loc="left")
    ax_w.set_ylabel("mean weight")
    has_ci = any(v is not None for v in t["mean_weight_low"])
    ax_w.set_title("Mean concept weight" + (", 95% intervals" if has_ci else ""), fontsize=10, loc="left")
    js = [res.js[w] for w in x_labels]
    ax_j.bar(xs, js, color="#555555", width=0.6, label="divergence")
    if res.js_null:
        ax_j.plot(xs, [np.nan if w == res.reference else res.js_null.get(w, np.nan) for w in x_labels], "_", color="#d62728", ms=14, mew=2,
                  label="no-drift level, same window size")
        ax_j.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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


def plot_spurious(res: SpuriousResult, path, max_labels: int = 6, per_label: int = 6):
    plt = _plt()
    rows = res.table.to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    # labels with the strongest findings first
    labels_all = sorted(by, key=lambda lab: -by[lab][0]["change"])
    labels = labels_all[:max_labels]
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
            ax.text(r["prevalence"], y + 0.2, f" x{r['ratio']:.1f}", va="center", fontsize=8)
        top_p = max([r["prevalence"] for r in rs] + [r["prevalence_other"] for r in rs] + [0.01])
        ax.set_xlim(0, min(1.12, max(0.2, top_p * 1.3)))
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
        more = f", {len(by[lab]) - per_label} more not shown" if len(by[lab]) > per_label else ""
        ax.set_title(f"{res.label_column} = {lab}  (n={res.label_counts.get(lab, '?')}{more})", fontsize=10,
                     loc="left")
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
    omitted = (f"; {len(labels)} of {len(labels_all)} labels with findings shown (strongest first), "
               f"{len(res.labels) - len(labels_all)} without" if len(labels_all) > len(labels) else "")
    fig.suptitle("Concepts over-represented per label: share of images with the concept, label vs other labels "
                 f"(x = the ratio of the two){omitted}", fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_filter(db, concepts: str | Sequence[str], min_weight: float | Sequence[float], path, *,
                table: str = "images", bins: int = 50, storage_options: Mapping[str, str] | None = None):
    """Histogram of each concept's weights over the images that have it, with the threshold and the
    number of images above it: to choose ``--min``."""
    plt = _plt()
    names = as_list(concepts)
    thr = [float(t) for t in (as_list(min_weight) if not isinstance(min_weight, (int, float)) else [min_weight])]
    if len(thr) == 1:
        thr = thr * len(names)
    con, owned = open_connection(db, table=table, storage_options=storage_options)
    try:
        st = connection_state(con)
        n_img = run_query(con, "SELECT count(*) AS n FROM images WHERE concept_ids IS NOT NULL").column(0)[0].as_py()
        fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), squeeze=False)
        colours = _line_colours(names)
        for ax, name, t, col in zip(axes[:, 0], names, thr, colours):
            st.names.id(name)
            w = run_query(con, "SELECT weight FROM concept_images($c, 0.0)", {"c": name}).column(0).to_numpy()
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
