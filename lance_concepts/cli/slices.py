"""``lance-concepts slices``: concept slices of a model's errors (thin shell over :func:`lance_concepts.slices`)."""
from __future__ import annotations

import click

from .group import main
from .options import DB_OPTION, FORMAT_OPTION, OUTPUT_OPTION, STORAGE_OPTION, TABLE_OPTION, emit, parse_storage_options


@main.command("slices")
@DB_OPTION
@click.option("--label-column", default="label", show_default=True)
@click.option("--prediction-column", default=None, help="The model's predictions (compared with the label).")
@click.option("--zero-shot", default=None, metavar="TEMPLATE",
              help='Predict with the table\'s CLIP model instead, e.g. "a photo of a {}".')
@click.option("--score-column", default=None, help="Without predictions: a numeric score (loss) to explain.")
@click.option("--split-column", default=None)
@click.option("--split", default=None, help="Only this value of --split-column.")
@click.option("--min-support", default=20, show_default=True, help="Smallest slice (and rest) tested.")
@click.option("--min-weight", default=0.0, show_default=True, help="Present = weight above this.")
@click.option("--alpha", default=0.05, show_default=True, help="False discovery rate (Benjamini-Hochberg).")
@click.option("--top", default=20, show_default=True)
@click.option("--no-pairs", is_flag=True, help="Single concepts only.")
@click.option("--examples", default=4, show_default=True, help="Example uris per slice (wrong and right).")
@click.option("--where", default=None, help="Extra SQL condition on images (your own SQL).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG: error rate in vs out of slices.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="HTML page with the figure and thumbnails of each slice's examples.")
@click.option("--root", default=None, help="--html: folder relative uris are read from (default: recorded).")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def slices_cmd(db, label_column, prediction_column, zero_shot, score_column, split_column, split, min_support,
               min_weight, alpha, top, no_pairs, examples, where, plot, html_path, root, table, fmt, output, storage_options):
    """Concepts (and pairs) whose presence most raises a model's error rate, overall and per label,
    with example images, BH q-values and worst-group accuracy."""
    from ..query.slices import slices

    res = slices(db, label_column, prediction_column, score_column=score_column, split_column=split_column,
                 split=split, zero_shot=zero_shot, min_support=min_support, min_weight=min_weight, alpha=alpha,
                 top=top, pairs=not no_pairs, examples=examples, where=where, table=table,
                 storage_options=parse_storage_options(storage_options))
    emit(res.table, fmt, output, res.summary())
    if plot:
        res.plot(plot)
        click.echo(f"plot: {plot}", err=True)
    if html_path:
        res.html(html_path, root=root)
        click.echo(f"html: {html_path}", err=True)
