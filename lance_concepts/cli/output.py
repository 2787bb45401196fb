"""Result tables as text for a terminal, CSV, JSON or Parquet: the only place output formats are known.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa

from ..errors import InputError
from ..records import format_cell, to_records


def format_table(table: pa.Table, max_rows: int | None = None, max_width: int = 60) -> str:
    """A plain aligned text table."""
    recs = to_records(table) if table.num_rows else []
    if max_rows is not None:
        recs = recs[:max_rows]
    cols = table.column_names
    rows = []
    for r in recs:
        cells = []
        for c in cols:
            v = r[c]
            s = format_cell(v)
            if len(s) > max_width:
                s = shorten(s, max_width)
            cells.append(s)
        rows.append(cells)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    def line(cells):
        return "  ".join((s.rjust(w) if num else s.ljust(w)) for s, w, num in zip(cells, widths, numeric)).rstrip()
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if max_rows is not None and table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows} more rows")
    return "\n".join(out)


def shorten(text: str, width: int) -> str:
    """Cut the middle, not the end: of a long uri the file name (the end) is what a reader needs."""
    if len(text) <= width:
        return text
    name = text.rsplit("/", 1)[-1]
    tail = min(len(name) + (1 if len(name) < len(text) else 0), width - 1 - max(width // 4, 1))
    tail = max(tail, (width - 1) // 2)
    return text[: width - 1 - tail] + "…" + text[len(text) - tail:]


FORMATS = ("table", "csv", "json", "parquet")


def format_output(table: pa.Table, fmt: str = "table", out=None) -> str | None:
    """Write ``table`` as table / csv / json / parquet to ``out`` (a path) or return the text.

    json: an array of records with the table's snake_case column names as keys. parquet needs ``out``."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if out is None:
            raise InputError("--format parquet needs --output FILE")
        pq.write_table(table, str(out))
        return None
    if fmt == "json":
        text = json.dumps(to_records(table), ensure_ascii=False, indent=1)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(table.column_names)
        for r in to_records(table):
            w.writerow([json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else ("" if v is None else v)
                        for v in r.values()])
        text = buf.getvalue().rstrip("\n")
    else:
        text = format_table(table)
    if out is not None:
        Path(out).write_text(text + "\n", encoding="utf-8")
        return None
    return text
