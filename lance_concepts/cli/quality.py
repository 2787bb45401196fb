"""``lance-concepts quality`` and ``duplicates``: image issues and duplicate groups (thin shells)."""
from __future__ import annotations

import click

from .group import main
from .options import DB_OPTION, FORMAT_OPTION, OUTPUT_OPTION, STORAGE_OPTION, TABLE_OPTION, emit, parse_storage_options


@main.command("quality")
@DB_OPTION
@click.option("--backfill", is_flag=True, help="First add the quality columns (and content_sha256) where missing.")
@click.option("--root", default=None, help="Backfill: folder relative uris are read from.")
@click.option("--dark", type=float, default=None, help="brightness below this (default 0.12).")
@click.option("--bright", type=float, default=None, help="brightness above this (default 0.92).")
@click.option("--low-contrast", type=float, default=None, help="contrast below this (default 0.04).")
@click.option("--blurry", type=float, default=None, help="blur / luma variance below this (default 0.01).")
@click.option("--tiny", type=int, default=None, help="shorter side below this many pixels (default 64).")
@click.option("--extreme-aspect", type=float, default=None, help="long/short side above this (default 3).")
@click.option("--examples", default=3, show_default=True)
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def quality_cmd(db, backfill, root, dark, bright, low_contrast, blurry, tiny, extreme_aspect, examples, table,
                storage_options, fmt, output):
    """Counts and example images of dark, bright, low-contrast, blurry, tiny, extreme-aspect,
    greyscale and duplicate images; each issue is printed with its SQL condition."""
    from ..lake.backfill import backfill_quality
    from ..query.quality import quality

    so = parse_storage_options(storage_options)
    if backfill:
        r = backfill_quality(db, table, root=root, storage_options=so)
        click.echo(f"backfill: {r['rows']} rows, {r['failed']} unreadable, added {', '.join(r['added']) or '-'}",
                   err=True)
    th = {"dark": dark, "bright": bright, "low_contrast": low_contrast, "blurry": blurry, "tiny": tiny,
          "extreme_aspect": extreme_aspect}
    res = quality(db, thresholds=th, examples=examples, table=table, storage_options=so)
    emit(res.table, fmt, output, res.summary())


@main.command("duplicates")
@DB_OPTION
@click.option("--threshold", default=0.95, show_default=True, help="Embedding cosine for near-duplicates.")
@click.option("--no-exact", is_flag=True, help="Skip exact (content_sha256) groups.")
@click.option("--exact-only", is_flag=True, help="Skip near-duplicates (embedding cosine).")
@click.option("--dry-run", is_flag=True, help="Print the groups without writing duplicate_groups.")
@TABLE_OPTION
@STORAGE_OPTION
@FORMAT_OPTION
@OUTPUT_OPTION
def duplicates_cmd(db, threshold, no_exact, exact_only, dry_run, table, storage_options, fmt, output):
    """Exact and near-duplicate groups, written to the duplicate_groups table (keep = one per group)."""
    from ..retrieval.duplicates import duplicates

    t = duplicates(db, threshold, table=table, exact=not no_exact, near=not exact_only,
                   write=not dry_run,
                   storage_options=parse_storage_options(storage_options))
    n_groups = len(set(t["group_id"].to_pylist()))
    emit(t, fmt, output, f"{n_groups} groups, {t.num_rows} images ({'not written' if dry_run else 'written'})")
