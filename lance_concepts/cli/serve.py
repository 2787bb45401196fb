"""``lance-concepts serve``: the web explorer over a database (a shell over :func:`lance_concepts.serve`)."""
from __future__ import annotations

import warnings

import click

from .group import main
from .options import DB_OPTION, TABLE_OPTION


@main.command("serve")
@DB_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but 127.0.0.1/localhost is reachable by others (there is no login).")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0: any free port).")
@click.option("--open", "open_browser", is_flag=True, help="Open the explorer in a web browser.")
@click.option("--sql-timeout", default=10.0, show_default=True, type=float, help="Seconds a SQL-box query may run.")
@click.option("--no-warm", is_flag=True, help="Do not make every thumbnail in the background at start.")
@TABLE_OPTION
def serve_cmd(db, host, port, open_browser, sql_timeout, no_warm, table):
    """Browse, filter, search and report on DB in a web browser (read-only; Ctrl-C stops)."""
    from ..serve.server import serve

    def show(message, category, *args, **kwargs):
        click.secho(f"Warning: {message}", fg="yellow", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        serve(db, port=port, host=host, table=table, open_browser=open_browser, sql_timeout_s=sql_timeout,
              warm_thumbnails=not no_warm)
