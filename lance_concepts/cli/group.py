"""The ``lance-concepts`` command group: expected errors become one red line and exit code 2, not a traceback.
"""
from __future__ import annotations

import sys

import click

from .. import __version__


class _FriendlyErrors(click.Group):
    """Turn the package's expected errors (missing weights, bad input) into one clear line, not a traceback."""

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
