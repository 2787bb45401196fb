"""``lance-concepts sql``, ``filter``, ``drift``, ``spurious`` and ``report``: read-only questions in DuckDB.
"""
from __future__ import annotations

import click

from .group import main
from .options import (
    DB_OPTION,
    FORMAT_OPTION,
    OUTPUT_OPTION,
    STORAGE_OPTION,
    TABLE_OPTION,
    check_writable,
    emit,
    parse_storage_options,
    split_names,
)


@main.command("sql")
@DB_OPTION
@click.argument("query", required=False)
@click.option("--file", "file", default=None,
              help="A .sql file, or the name of a library query (concept_filter, concept_drift, ...).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind $NAME (repeatable); lists as a,b,c. Values are never pasted into the SQL text.")
@click.option("--materialize", is_flag=True, help="Copy the tables into DuckDB first (repeated heavy queries).")
@click.option("--list", "list_queries", is_flag=True, help="List the library queries and their parameters.")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def sql_cmd(db, query, file, params, materialize, list_queries, table, fmt, output, storage_options):
    """Run SQL over the tables: images, concepts, image_concepts (long: image_id, concept_id, concept,
    weight) and any other table of the database, with concept macros:

    \b
      SELECT uri FROM images WHERE concept_weight(images, 'desert') > 0.1
      SELECT * FROM concept_images('desert', 0.1)       -- fast, through the index
      SELECT uri, top_concepts(images, 5) FROM images LIMIT 10
    """
    from ..query.named import list_queries as _list
    from ..query.named import load_query
    from ..query.named import sql as run_sql

    if list_queries:
        for name in _list():
            q = load_query(name)
            ps = ", ".join([f"{p.name}" + ("" if p.required else f"={p.default}") for p in q.params.values()]
                           + [f"{p.name}={p.default} (column)" for p in q.idents.values()])
            first = q.doc.splitlines()[0] if q.doc else ""
            first = first[len(name) + 1:].strip() if first.startswith(name + ":") else first
            click.echo(f"{name}: {first}\n    params: {ps}")
        return
    bound = {}
    for p in params:
        if "=" not in p:
            raise click.BadParameter(f"expected NAME=VALUE, got {p!r}", param_hint="--param")
        k, v = p.split("=", 1)
        bound[k.strip()] = v
    check_writable(output=output)
    result = run_sql(db, query, file=file, params=bound, materialize=materialize, table=table,
                     storage_options=parse_storage_options(storage_options))
    emit(result, fmt, output)


@main.command("filter")
@DB_OPTION
@click.option("--concept", "concepts", multiple=True, required=True, help="Concept name (repeatable).")
@click.option("--min", "min_weight", multiple=True, type=float, default=(0.1,), show_default=True,
              help="Weight must be above this; once for all concepts or once per --concept.")
@click.option("--any", "match_any", is_flag=True, help="OR: any concept passes (default AND: every concept).")
@click.option("--limit", type=int, default=None, help="At most this many images, strongest first.")
@click.option("--columns", default="uri", show_default=True, help="Image columns to show, comma-separated.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG: weight histograms of the concepts with the thresholds.")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def filter_cmd(db, concepts, min_weight, match_any, limit, columns, plot, table, fmt, output, storage_options):
    """Images whose concept weights pass the thresholds (weight > --min), strongest first."""
    from ..query.filter import filter as run_filter
    from ..query.plots import plot_filter

    check_writable(plot=plot, output=output)
    cols = [c.strip() for c in columns.split(",") if c.strip()]
    result = run_filter(db, list(concepts), list(min_weight), match="any" if match_any else "all", limit=limit,
                        columns=cols, table=table, storage_options=parse_storage_options(storage_options))
    emit(result, fmt, output, f"{result.num_rows} image{'' if result.num_rows == 1 else 's'}")
    if plot:
        plot_filter(db, list(concepts), list(min_weight), plot, table=table,
                    storage_options=parse_storage_options(storage_options))
        click.echo(f"plot: {plot}", err=True)


@main.command("drift")
@DB_OPTION
@click.option("--time-column", default="timestamp", show_default=True, help="Timestamp/date column.")
@click.option("--every", type=click.Choice(["day", "week", "month", "quarter", "year"]), default="month",
              show_default=True)
@click.option("--concepts", "concepts", multiple=True, help="Concepts to show (repeatable or a,b,c).")
@click.option("--top", default=10, show_default=True, help="Without --concepts: the N most prevalent.")
@click.option("--reference", default=None, help="Reference window, e.g. 2024-01 (default: the first).")
@click.option("--min-weight", default=0.0, show_default=True, help="Present = weight above this.")
@click.option("--alpha", default=0.05, show_default=True, help="False discovery rate (Benjamini-Hochberg).")
@click.option("--min-change", default=0.10, show_default=True, help="Alert only for |prevalence change| >= this.")
@click.option("--min-support", default=10, show_default=True, help="Test concepts seen in at least N images.")
@click.option("--where", default=None, help="Condition on images in the where-language of search, e.g. \"split = 'test' AND concept('sand') > 0.1\" (values are bound, never pasted into SQL).")
@click.option("--weight-intervals", is_flag=True, help="Also 95% intervals of the mean weights (slower).")
@click.option("--materialize", is_flag=True, help="Copy the tables into DuckDB first.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG: curves with 95% intervals.")
@click.option("--choose", type=click.Choice(["change", "prevalence"]), default="change", show_default=True,
              help="Without --concepts: tabulate the concepts that changed most, or the most prevalent.")
@click.option("--windows", "show_windows", is_flag=True,
              help="Also print the per-window table after the summary (other formats always write it).")
@click.option("--current", default=None, help="Moving window, e.g. 'last 7 days' (then --reference "
              "'previous 28 days', 'first 30 days' or 'YYYY-MM-DD..YYYY-MM-DD'; default previous 28 days).")
@click.option("--now", default=None, help="With --current: the day windows count back from (default today, UTC).")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def drift_cmd(db, time_column, every, concepts, top, reference, min_weight, alpha, min_change, min_support, where,
              weight_intervals, materialize, plot, choose, show_windows, current, now, table, fmt, output,
              storage_options):
    """Concept prevalence (Wilson 95%) and mean weight per time window; change tests against the
    reference window with Benjamini-Hochberg control; alerts; rising and falling concepts; the
    Jensen-Shannon divergence of each window's concept distribution from the reference."""
    from ..query.drift import drift

    check_writable(plot=plot, output=output)
    res = drift(db, time_column, every, concepts=split_names(concepts) or None, top=top, reference=reference,
                min_weight=min_weight, alpha=alpha, min_change=min_change, min_support=min_support, where=where,
                weight_intervals=weight_intervals or bool(plot), materialize=materialize, table=table,
                storage_options=parse_storage_options(storage_options), choose=choose, current=current, now=now)
    emit(res.table, fmt, output, res.summary(), summary_first=True, show_table=show_windows)
    if plot:
        res.plot(plot)
        click.echo(f"plot: {plot}", err=True)


@main.command("spurious")
@DB_OPTION
@click.option("--label-column", default="label", show_default=True)
@click.option("--split-column", default=None, help="Also report per-label concept shifts between splits.")
@click.option("--split-reference", default=None, help="Split the others are compared with (default: largest).")
@click.option("--min-weight", default=0.0, show_default=True, help="Present = weight above this.")
@click.option("--min-support", default=5, show_default=True, help="Test (label, concept) pairs seen >= N times.")
@click.option("--min-lift", default=1.5, show_default=True)
@click.option("--alpha", default=0.05, show_default=True, help="False discovery rate (Benjamini-Hochberg).")
@click.option("--min-change", default=0.10, show_default=True, help="Split shift: smallest |change| reported.")
@click.option("--top", default=10, show_default=True, help="At most N concepts per label.")
@click.option("--label-match", type=click.Choice(["auto", "string", "embedding", "none"]), default="auto",
              show_default=True, help="How concepts that merely name the label are found and left out.")
@click.option("--label-threshold", default=None, type=float,
              help="Centred text-embedding cosine for --label-match embedding/auto (default 0.6).")
@click.option("--where", default=None, help="Condition on images in the where-language of search, e.g. \"split = 'test' AND concept('sand') > 0.1\" (values are bound, never pasted into SQL).")
@click.option("--materialize", is_flag=True, help="Copy the tables into DuckDB first.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG: per-label concept bars.")
@click.option("--max-labels", default=20, show_default=True,
              help="Summary lists findings per label only up to this many labels (strongest overall first).")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def spurious_cmd(db, label_column, split_column, split_reference, min_weight, min_support, min_lift, alpha,
                 min_change, top, label_match, label_threshold, where, materialize, plot, max_labels, table, fmt,
                 output, storage_options):
    """Concepts over-represented in each label (lift, nPMI, one-sided test with Benjamini-Hochberg),
    leaving out concepts that merely name the label; with --split-column, per-label differences
    between splits."""
    from ..query.labels import LABEL_MATCH_THRESHOLD
    from ..query.spurious import spurious

    check_writable(plot=plot, output=output)
    res = spurious(db, label_column, split_column, min_weight=min_weight, min_support=min_support,
                   min_lift=min_lift, alpha=alpha, top=top, min_change=min_change, split_reference=split_reference,
                   label_match=label_match,
                   label_threshold=LABEL_MATCH_THRESHOLD if label_threshold is None else label_threshold,
                   where=where, materialize=materialize, table=table,
                   storage_options=parse_storage_options(storage_options))
    emit(res.combined(), fmt, output, res.summary(max_labels=max_labels), summary_first=True)
    if plot:
        res.plot(plot)
        click.echo(f"plot: {plot}", err=True)


@main.command("report")
@DB_OPTION
@click.option("--html", "html", type=click.Path(dir_okay=False), required=True, help="HTML file to write.")
@click.option("--time-column", default="timestamp", show_default=True)
@click.option("--every", type=click.Choice(["day", "week", "month", "quarter", "year"]), default="month",
              show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--split-column", default=None)
@click.option("--top", default=8, show_default=True, help="Concepts per section / per label.")
@click.option("--min-weight", default=0.0, show_default=True)
@click.option("--label-match", type=click.Choice(["auto", "string", "embedding", "none"]), default="auto",
              show_default=True)
@click.option("--no-materialize", is_flag=True, help="Query Lance directly instead of copying into DuckDB once.")
@click.option("--check", "check_spec", default=None, help="TOML spec of `check`: adds an Expectations section.")
@STORAGE_OPTION
@TABLE_OPTION
def report_cmd(db, html, time_column, every, label_column, split_column, top, min_weight, label_match,
               no_materialize, check_spec, table, storage_options):
    """One self-contained HTML page: summary, drift and spurious-correlation sections with figures."""
    from ..query.html import report

    check_writable(html=html)
    path = report(db, html, time_column=time_column, every=every, label_column=label_column,
                  split_column=split_column, top=top, min_weight=min_weight, label_match=label_match,
                  materialize=not no_materialize, table=table, storage_options=parse_storage_options(storage_options),
                  check=check_spec)
    click.echo(f"wrote {path}")
