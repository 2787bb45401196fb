"""Options shared by several commands, and the one place that turns a result table into table / csv / json / parquet output.
"""
from __future__ import annotations

import click

# --- commands (keep each one thin: parse options, call the Python API, print) ---

MODEL_OPTION = click.option("--model", default="ViT-B-32", show_default=True,
                            help="open_clip architecture, or 'demo' for the offline demo model.")
PRETRAINED_OPTION = click.option("--pretrained", default="laion2b_s34b_b79k", show_default=True,
                                 help="open_clip pretrained tag or a local weights file (.bin/.pt/.safetensors).")


def parse_storage_options(pairs):
    from ..errors import InputError

    out = {}
    for p in pairs:
        if "=" not in p:
            raise InputError(f"--storage-option takes KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out or None


STORAGE_OPTION = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="Object-store option passed to Lance/LanceDB (repeatable), e.g. aws_region=eu-west-1, "
         "aws_endpoint=http://127.0.0.1:9000, allow_http=true; credentials also come from AWS_* variables.")
ENGINE_OPTION = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                              help="local: this machine; ray: Ray Data actors + lance-ray writes (scale-out).")
RAY_ADDRESS_OPTION = click.option("--ray-address", default=None,
                                   help="With --engine ray: the cluster ('auto', 'ray://head:10001'); "
                                        "default: a local Ray instance.")
RAY_ACTORS_OPTION = click.option("--ray-actors", type=int, default=None,
                                  help="With --engine ray: model actors (default: one per GPU, else per CPU).")


# --- SQL over the concept tables (lance_concepts.query) ---

FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
                              default="table", show_default=True,
                              help="json: an array of records with snake_case keys; parquet needs --output.")
OUTPUT_OPTION = click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                              help="Write the result to this file instead of standard output.")
DB_OPTION = click.option("--db", required=True, help="LanceDB directory or URI.")
TABLE_OPTION = click.option("--table", default="images", show_default=True, help="Images table.")


def emit(table, fmt, output, summary=None, *, summary_first: bool = False, show_table: bool = True):
    """Write the table; in the terminal format the summary goes first (``summary_first``: a reader sees
    the findings before the detail) or last, and ``show_table=False`` prints the summary alone."""
    from .output import format_output

    if summary_first and summary and fmt == "table" and output is None:
        click.echo(summary)
        if show_table:
            click.echo("")
            click.echo(format_output(table, fmt, output))
        return
    text = format_output(table, fmt, output)
    if text is not None:
        click.echo(text)
    if summary and fmt == "table":
        click.echo("")
        click.echo(summary)
    elif output is not None:
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)


def split_names(values):
    out = []
    for v in values or ():
        out += [s for s in (x.strip() for x in v.split(",")) if s] if "," in v and not v.startswith("=") else [v]
    return out


def check_writable(**paths) -> None:
    """Refuse an output path that cannot be written BEFORE the work (a plot after a minute-long report
    must not fail with a traceback). Keyword: the option's name without dashes, value: the path or None."""
    import os
    from pathlib import Path

    from ..errors import InputError

    for option, path in paths.items():
        if not path:
            continue
        p = Path(path)
        parent = p.parent if str(p.parent) else Path(".")
        flag = "--" + option.replace("_", "-")
        if p.is_dir():
            raise InputError(f"{flag} {path}: is a directory, give a file name")
        if not parent.is_dir():
            raise InputError(f"{flag} {path}: the folder {parent} does not exist")
        if not os.access(p if p.exists() else parent, os.W_OK):
            raise InputError(f"{flag} {path}: not writable (permission denied)")
