"""One rule for turning Arrow rows and NumPy values into plain JSON-ready Python.

Table metadata, result objects' ``.records()`` and the CLI's JSON output all go through these two
functions, so a date, a NaN or a NumPy scalar looks the same wherever a user meets it.
"""
from __future__ import annotations

import base64
import datetime as _dt
import math
import os

import numpy as np
import pyarrow as pa


def jsonable(v):
    """``v`` with NumPy scalars/arrays, dates, NaN, paths and bytes replaced by JSON values."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.reshape(-1).tolist()]
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def to_records(table: pa.Table) -> list[dict]:
    """JSON-ready records (dates as ISO strings, NaN as null, maps as objects)."""
    out = []
    for row in table.to_pylist():
        rec = {}
        for k, v in row.items():
            if isinstance(v, list) and v and isinstance(v[0], tuple) and len(v[0]) == 2:  # MAP
                v = {a: b for a, b in v}
            rec[k] = jsonable(v)
        out.append(rec)
    return out


def format_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e6):
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if a < 100 else f"{v:.1f}"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, (_dt.datetime,)):
        return v.isoformat(sep=" ")
    if isinstance(v, dict):
        return ", ".join(f"{k}={format_cell(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(format_cell(x) for x in v)
    return str(v)
