"""The ``lance-concepts`` command group: expected errors become one red line and exit code 2, not a traceback.
"""
from __future__ import annotations

import sys

import click

from .. import __version__


class _FriendlyErrors(click.Group):
    """Turn the package's expected errors (missing weights, bad input) into one clear line, not a traceback,
    and Ctrl-C at any moment into exit code 130 (click's own "Aborted!" exits 1, which reads as a failure)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        from ..errors import LanceConceptsError

        try:
            return super().invoke(ctx)
        except LanceConceptsError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_FriendlyErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lance-concepts")
def main():
    """Make an image collection interpretable and queryable.

    Images become LanceDB rows with a CLIP embedding, SpLiCE concept weights over a word
    vocabulary and FALCON feature labels; DuckDB answers questions about them in SQL.
    """
