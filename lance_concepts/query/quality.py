"""Image quality issues as plain SQL conditions on the quality columns (lake/quality.py).

Each issue is one condition a user can paste into ``lance-concepts sql``; :func:`quality` counts
them and shows example images. Thresholds are parameters (bound, never pasted into SQL).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pyarrow as pa

from ..errors import InputError
from ..records import to_records
from .connection import arrow_table, images_columns, open_connection

#: issue -> (condition with $parameters, parameter names it uses)
ISSUES = {
    "dark": ("brightness < $dark", ("dark",)),
    "bright": ("brightness > $bright", ("bright",)),
    "low_contrast": ("contrast < $low_contrast", ("low_contrast",)),
    "blurry": ("blur / greatest(contrast * contrast * 65025, 1) < $blurry", ("blurry",)),
    "tiny": ("least(width, height) < $tiny", ("tiny",)),
    "extreme_aspect": ("greatest(aspect, 1 / aspect) > $extreme_aspect", ("extreme_aspect",)),
    "greyscale": ("is_greyscale", ()),
}
DEFAULTS = {"dark": 0.12, "bright": 0.92, "low_contrast": 0.04, "blurry": 0.01, "tiny": 64,
            "extreme_aspect": 3.0}


@dataclass
class QualityResult:
    table: pa.Table  # issue, condition, n, share, examples
    n_images: int
    thresholds: dict

    def records(self) -> list[dict]:
        return to_records(self.table)

    def summary(self) -> str:
        lines = [f"{self.n_images} images"]
        for r in self.table.to_pylist():
            ex = ", ".join(r["examples"]) or "-"
            lines.append(f"  {r['issue']:<15} {r['n']:>7} ({r['share']:.1%})  WHERE {r['condition']}  e.g. {ex}")
        return "\n".join(lines)


def quality(db, *, thresholds: Mapping[str, float] | None = None, examples: int = 3, table: str = "images",
            storage_options: Mapping[str, str] | None = None) -> QualityResult:
    """Count each issue of :data:`ISSUES` (and duplicates, when ``duplicate_groups`` exists)."""
    th = {**DEFAULTS, **{k: v for k, v in (thresholds or {}).items() if v is not None}}
    unknown = set(thresholds or {}) - set(DEFAULTS)
    if unknown:
        raise InputError(f"unknown thresholds {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    con, owned = open_connection(db, table=table, storage_options=storage_options)
    try:
        if "brightness" not in images_columns(con):
            raise InputError(f"table {table!r} has no quality columns: run `lance-concepts quality --backfill`")
        n = arrow_table(con, "SELECT count(*) AS n FROM images WHERE status = 'ok'")["n"][0].as_py()
        out = {"issue": [], "condition": [], "n": [], "share": [], "examples": []}
        for issue, (cond, names) in ISSUES.items():
            bind = {k: th[k] for k in names}
            cnt = arrow_table(con, f"SELECT count(*) AS n FROM images WHERE status = 'ok' AND ({cond})", bind or None)
            ex = arrow_table(con, f"SELECT uri FROM images WHERE status = 'ok' AND ({cond}) ORDER BY id LIMIT "
                                  f"{int(examples)}", bind or None)
            _add(out, issue, cond.replace("$" + names[0], repr(th[names[0]])) if names else cond,
                 cnt["n"][0].as_py(), n, ex["uri"].to_pylist())
        dup = _duplicates(con, table, examples)
        if dup is not None:
            _add(out, "duplicate", f"id IN (SELECT id FROM {dup[2]} WHERE NOT keep)", dup[0], n, dup[1])
    finally:
        if owned:
            con.close()
    tbl = pa.table({"issue": pa.array(out["issue"], pa.string()), "condition": pa.array(out["condition"]),
                    "n": pa.array(out["n"], pa.int64()), "share": pa.array(out["share"], pa.float64()),
                    "examples": pa.array(out["examples"], pa.list_(pa.string()))})
    return QualityResult(tbl, int(n), th)


def _add(out, issue, cond, k, n, ex):
    out["issue"].append(issue)
    out["condition"].append(cond)
    out["n"].append(int(k))
    out["share"].append(k / n if n else 0.0)
    out["examples"].append([str(u) for u in ex])


def _duplicates(con, table, examples):
    from ..lake.store import derived_table_name

    name = derived_table_name(table, "duplicate_groups")
    try:
        t = arrow_table(con, f'SELECT DISTINCT uri FROM "{name}" WHERE NOT keep ORDER BY uri')
    except Exception:  # no duplicates table yet: the summary says how to make one
        return None
    return t.num_rows, t["uri"].to_pylist()[:examples], name
