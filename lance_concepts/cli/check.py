"""``lance-concepts check``: thin shell over :func:`lance_concepts.query.check.check`."""
from __future__ import annotations

import json
import sys

import click

from .group import main
from .options import DB_OPTION, OUTPUT_OPTION, STORAGE_OPTION, TABLE_OPTION, emit, parse_storage_options


@main.command("check")
@DB_OPTION
@click.option("--spec", required=True, help="TOML file of [[expect]] sections (format: README, 'check').")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "junit"]), default="table", show_default=True,
              help="junit: JUnit XML for CI systems.")
@OUTPUT_OPTION
@TABLE_OPTION
@STORAGE_OPTION
def check_cmd(db, spec, fmt, output, table, storage_options):
    """Check declarative expectations (drift, prevalence, lift, error rate, images per day, SpLiCE
    cosine). Exit code 0 when all hold, 1 when any does not, 2 when the spec or database is unusable."""
    from ..errors import InputError
    from ..query.check import check

    if not spec.endswith(".toml"):
        raise InputError(f"spec must be a .toml file; got {spec!r}")
    res = check(db, spec, table=table, storage_options=parse_storage_options(storage_options))
    if fmt == "table":
        emit(res.table(), "table", output, res.summary())
    else:
        text = res.junit_xml() if fmt == "junit" else json.dumps(res.records(), default=str, indent=2)
        if output:
            with open(output, "w") as f:
                f.write(text)
            click.echo(f"wrote {len(res.outcomes)} results to {output}", err=True)
        else:
            click.echo(text)
    sys.exit(0 if res.ok else 1)
