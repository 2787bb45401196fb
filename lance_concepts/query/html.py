"""One self-contained HTML page with the summary, drift and spurious findings and their figures.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html as _html
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa

from ..records import format_cell, to_records
from .connection import connection_state, images_columns, open_connection, run_query
from ..errors import InputError
from .drift import drift
from .examples import examples_html
from .spurious import spurious, spurious_html


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
            s = format_cell(v) if not isinstance(v, float) else format_cell(float(v))
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            tds.append(f"<td class='{'n' if num else ''}'>{_html.escape(s)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    more = f"<p class='more'>{table.num_rows - max_rows} more rows not shown</p>" if table.num_rows > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


_CSS = """pre{white-space:pre-wrap;word-break:break-word}
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
           storage_options: Mapping[str, str] | None = None, check=None) -> Path:
    """``check``: a spec for :func:`lance_concepts.query.check.check` (TOML path/text or dict): adds a
    section with every expectation's status, expected, measured and the images to look at.

    Write one self-contained HTML page (figures embedded as PNG data URIs) with a summary of the
    table, the drift section (if ``time_column`` exists) and the spurious-correlation section (if
    ``label_column`` exists). Sections whose column is missing say so. Returns the path."""
    con, owned = open_connection(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        st = connection_state(con)
        cols = images_columns(con)
        summary = _summary(con, st, cols)
        parts = [f"<h1>lance-concepts report</h1><p class='meta'>{_html.escape(str(st.db))}, table "
                 f"<code>{_html.escape(st.table)}</code>, generated {_dt.datetime.now().isoformat(timespec='seconds')}"
                 "</p>", "<h2>Summary</h2>", summary]
        if time_column and time_column in cols:
            res = drift(con, time_column, every, top=top, min_weight=min_weight, alpha=alpha, min_change=min_change,
                        weight_intervals=True)
            parts += ["<h2>Drift over time</h2>", f"<pre>{_html.escape(res.summary())}</pre>",
                      f"<img alt='drift' src='{_fig_data_uri(res.plot)}'>",
                      drift_evidence_html(res),
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
                      "<h3>Findings with the images behind them</h3>",
                      spurious_html(res, n_findings=top * 2, with_summary=False),
                      f"<img alt='spurious' src='{_fig_data_uri(res.plot)}'>", "<h3>Over-represented concepts</h3>",
                      _html_table(res.table, max_rows=80, cols=["label", "concept", "n_label", "prevalence",
                                                                "prevalence_other", "ratio", "lift", "npmi",
                                                                "q_value"])]
            if res.under_table is not None and res.under_table.num_rows:
                parts += ["<h3>Under-represented concepts</h3>",
                          _html_table(res.under_table, max_rows=60, cols=["label", "concept", "n_label", "prevalence",
                                                                          "prevalence_other", "ratio", "q_value"])]
            if res.excluded_table is not None and res.excluded_table.num_rows:
                parts += ["<h3>Left out: concepts that name the label</h3>",
                          _html_table(res.excluded_table, max_rows=60, cols=["label", "concept", "excluded_by",
                                                                             "prevalence", "prevalence_other"])]
            if res.split_table is not None:
                parts += [f"<h3>Split shift ({_html.escape(sp_split)})</h3>", _html_table(res.split_table, 40)]
            elif split_column:
                parts += [f"<p>No split column <code>{_html.escape(split_column)}</code>.</p>"]
        else:
            parts += ["<h2>Spurious correlations</h2>", f"<p>No label column <code>{_html.escape(str(label_column))}"
                      "</code> in the table: section skipped.</p>"]
        if check is not None:
            parts += _check_section(con, check)
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
<li><b>Ratio</b> (x): share of the label's images with the concept divided by the share of the other labels'
images (the two percentages shown). <b>Lift</b>: how many times more often the concept appears in the label
than in all images; <b>nPMI</b>: normalised
pointwise mutual information (0 independent, 1 always together). Concepts that merely name the label are left
out.</li>
<li><b>Jensen-Shannon divergence</b>: how far a window's overall concept mix (share of total weight) is from the
reference window's (0 = same, 1 = disjoint), next to the level windows of the same size reach with no drift at
all (small windows inflate it).</li>
<li><b>Examples</b>: for a spurious finding, images of the label with the concept next to images of the label
without it; for a drift alert, images with the concept from the reference window next to the window where it
peaks. Hover a thumbnail for its id.</li></ul>"""


def drift_evidence_html(res, n_alerts: int = 6, n: int = 5) -> str:
    """Thumbnails for each alert (or, without alerts, the concepts that changed most)."""
    concepts = [a["concept"] for a in res.alerts[:n_alerts]] or res.concepts[:3]
    parts = ["<h3>Evidence: reference window vs the window where each concept peaks</h3>"]
    for c in concepts:
        try:
            ex = examples_html(res.source, res.examples(c, n=n), size=64)
        except InputError as exc:
            ex = f"<small>no examples: {_html.escape(str(exc))}</small>"
        parts.append(f"<div class='ev'><b>{_html.escape(c)}</b>{ex}</div>")
    return "".join(parts)


def _check_section(con, spec) -> list[str]:
    from .check import check as run_check

    res = run_check(con, spec)
    return ["<h2>Expectations</h2>", f"<p>{_html.escape(res.summary())}</p>", _html_table(res.table(), 200)]


def _summary(con, st, cols) -> str:
    q = "SELECT count(*) AS n, count(concept_ids) AS n_ok, avg(len(concept_ids)) AS l0 FROM images"
    r = run_query(con, q).to_pylist()[0]
    meta = st.metadata or {}
    items = [("images", f"{r['n']:,}"), ("with concepts", f"{r['n_ok']:,}"),
             ("errors / no concepts", f"{r['n'] - r['n_ok']:,}"),
             ("mean non-zero concepts per image", f"{(r['l0'] or 0):.1f}"),
             ("vocabulary", f"{len(st.names):,} concepts ({meta.get('vocabulary', meta.get('vocabulary_name', '?'))})"),
             ("model", f"{meta.get('model_name', '?')} / {meta.get('pretrained')}"),
             ("l1 penalty", str(meta.get("l1_penalty", "?")))]
    top = run_query(con, "SELECT concept_name(cid) AS concept, count(*) AS n FROM (SELECT unnest(concept_ids) "
                              "AS cid FROM images) GROUP BY cid ORDER BY n DESC, cid LIMIT 15")
    lis = "".join(f"<tr><th>{_html.escape(k)}</th><td>{_html.escape(v)}</td></tr>" for k, v in items)
    tops = ", ".join(f"{_html.escape(str(x['concept']))} ({x['n'] / max(r['n_ok'], 1):.0%})" for x in top.to_pylist())
    return f"<table>{lis}</table><p>Most frequent concepts: {tops}</p>"
