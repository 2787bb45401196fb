"""``lance-concepts demo``: the main job, offline, on the demo world.
"""
from __future__ import annotations

import click

from .group import main


@main.command()
@click.option("--db", default="demo.lancedb", show_default=True, help="LanceDB directory or URI to write to.")
@click.option("--images", "n_images", default=600, show_default=True, help="Number of demo-world images to draw.")
@click.option("--data-dir", default=None, help="Where to write the drawn images (default: next to --db).")
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(db, n_images, data_dir, seed, quiet):
    """Run the main job offline on the demo world and the demo model.

    Draws a small world of coloured shapes on backgrounds (labels, splits, timestamps, a planted
    drift and a planted spurious correlation), ingests it into a local LanceDB table, and prints
    what the concept queries find next to the planted truth. It also writes demo-drift.png,
    demo-spurious.png and demo-report.html beside the folder of drawn images. Re-running reuses them
    and skips what is already ingested.
    """
    from ..demo.job import demo as run_demo

    result = run_demo(db=db, n_images=n_images, data_dir=data_dir, seed=seed, quiet=quiet, echo=click.echo)
    click.echo(result.summary())
    click.echo(f"\nExplore it in a browser: lance-concepts serve --db {db}   (then open http://127.0.0.1:8765)")
