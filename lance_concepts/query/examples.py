"""The images behind a finding: SQL over the table picks them, Pillow makes small thumbnails.

A reader who sees "grass is spurious for circle" must be able to look at circles with grass next to
circles without it; a drift alert, at the reference window next to the window where it peaks. The
result objects call these functions (``r.examples(...)``); the HTML report and the explorer embed the
thumbnails. Every user value reaches SQL as a bound parameter."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa

from ..errors import InputError
from .connection import arrow_table, check_column, connection_state, open_connection

EXAMPLE_COLUMNS = ("group", "id", "uri", "weight")


@dataclass
class ExampleSource:
    """Where a result's images live, kept so that ``examples()`` can run after the report was computed."""

    db: Any
    table: str = "images"
    storage_options: Mapping[str, str] | None = None
    min_weight: float = 0.0
    label_column: str | None = None

    @classmethod
    def of(cls, db, table="images", storage_options=None, min_weight=0.0, label_column=None) -> "ExampleSource":
        return cls(db, table, storage_options, min_weight, label_column)

    def open(self):
        return open_connection(self.db, table=self.table, storage_options=self.storage_options)


def _weight_sql(min_weight_param: str = "$mw") -> tuple[str, str]:
    w = "coalesce(list_extract(concept_weights, list_position(concept_ids, $cid)), 0.0)"
    return w, f"{w} > {min_weight_param}"


def label_concept_examples(source: ExampleSource, label, concept: str, n: int = 6) -> pa.Table:
    """Up to ``n`` images with ``label`` that show ``concept`` (strongest weight first, group 'with
    concept') and up to ``n`` with the label that do not (group 'without concept'), columns group, id,
    uri, weight."""
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    con, owned = source.open()
    try:
        lab_col = check_column(con, source.label_column, what="label column")
        cid = connection_state(con).names.id(concept)
        w, has = _weight_sql()
        q = (f"(SELECT 'with concept' AS \"group\", CAST(id AS VARCHAR) AS id, uri, {w} AS weight FROM images "
             f"WHERE {lab_col} = $label AND {has} ORDER BY weight DESC, id LIMIT $n) UNION ALL "
             f"(SELECT 'without concept', CAST(id AS VARCHAR), uri, {w} AS weight FROM images "
             f"WHERE {lab_col} = $label AND concept_ids IS NOT NULL AND NOT ({has}) ORDER BY hash(id), id LIMIT $n)")
        return arrow_table(con, q, {"label": label, "cid": cid, "mw": source.min_weight, "n": n})
    finally:
        if owned:
            con.close()


def window_examples(source: ExampleSource, time_column: str, windows: Mapping[str, tuple], concept: str,
                    n: int = 6) -> pa.Table:
    """Up to ``n`` images showing ``concept`` from each named window (``{group: (start, end)}``, end
    exclusive), strongest weight first: e.g. the reference window next to the window where drift peaks."""
    if n < 1:
        raise InputError(f"n must be at least 1; got {n}")
    con, owned = source.open()
    try:
        tcol = check_column(con, time_column, what="time column")
        cid = connection_state(con).names.id(concept)
        w, has = _weight_sql()
        parts, params = [], {"cid": cid, "mw": source.min_weight, "n": n}
        for k, (group, (start, end)) in enumerate(windows.items()):
            parts.append(f"(SELECT $g{k} AS \"group\", CAST(id AS VARCHAR) AS id, uri, {w} AS weight FROM images "
                         f"WHERE {tcol} >= $s{k} AND {tcol} < $e{k} AND {has} ORDER BY weight DESC, id LIMIT $n)")
            params.update({f"g{k}": str(group), f"s{k}": start, f"e{k}": end})
        return arrow_table(con, " UNION ALL ".join(parts), params)
    finally:
        if owned:
            con.close()


def image_roots(con) -> list:
    """Where relative uris live, as ingest resolved them: the ingest sources' roots, the table's image_root."""
    meta = connection_state(con).metadata or {}
    roots = [s.get("root") for s in reversed(meta.get("sources") or []) if isinstance(s, dict) and s.get("root")]
    if meta.get("image_root"):
        roots.append(meta["image_root"])
    return list(dict.fromkeys(roots)) + [None]


def thumbnail_uri(roots, uri: str, size: int = 96) -> str | None:
    """A small JPEG data URI of one image (None when it cannot be read: the page shows its uri instead)."""
    from PIL import Image

    from ..lake.decode import ImageDecodeError, read_location

    for root in roots:
        try:
            raw = read_location(root, uri)
            im = Image.open(io.BytesIO(raw)).convert("RGB")
        except (ImageDecodeError, OSError, ValueError):
            continue
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return None


def thumbnails(source: ExampleSource, examples: pa.Table, size: int = 96) -> list:
    """Data URIs (or None) for the rows of an examples table, in order."""
    con, owned = source.open()
    try:
        roots = image_roots(con)
    finally:
        if owned:
            con.close()
    return [thumbnail_uri(roots, u, size) if u else None for u in examples.column("uri").to_pylist()]


def examples_html(source: ExampleSource, examples: pa.Table, size: int = 72) -> str:
    """One row of thumbnails per group, each with its id as tooltip."""
    import html

    uris = thumbnails(source, examples, size)
    groups: dict = {}
    for r, u in zip(examples.to_pylist(), uris):
        groups.setdefault(r["group"], []).append((r, u))
    out = []
    for g, items in groups.items():
        cells = "".join(
            f'<img src="{u}" title="{html.escape(str(r["id"]))}" alt="{html.escape(str(r["id"]))}" '
            f'style="width:{size}px;height:{size}px;object-fit:cover;margin:1px">' if u else
            f'<span title="{html.escape(str(r["uri"]))}">[{html.escape(str(r["id"]))}]</span>' for r, u in items)
        out.append(f'<div><small>{html.escape(str(g))} ({len(items)})</small><br>{cells}</div>')
    return "".join(out) or "<small>no example images</small>"
