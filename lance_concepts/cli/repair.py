"""``lance-concepts repair``: rebuild the derived tables after the images table changed behind our back.
"""
from __future__ import annotations

import click

from .group import main
from .options import DB_OPTION, STORAGE_OPTION, TABLE_OPTION, parse_storage_options


@main.command("repair")
@DB_OPTION
@TABLE_OPTION
@STORAGE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
def repair_cmd(db, table, storage_options, quiet):
    """Rebuild the concept postings, scalar indexes and report aggregates from the images table as it
    is now (after deletes/updates done in plain LanceDB, or an interrupted run)."""
    from ..lake.repair import repair

    click.echo(repair(db, table, storage_options=parse_storage_options(storage_options), quiet=quiet).text())
