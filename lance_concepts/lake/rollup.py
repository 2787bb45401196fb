"""Concept aggregates kept next to the images table, so that drift and spurious reports need not
decode every concept weight of every image per query.

Drift and spurious reports are functions of one cross-table: per group (a day, a label, a
(label, split) pair) and concept, the number of images with the concept and the sum of its weights.
At a million images, building it from the images table means decoding ~20M (concept id, weight)
pairs (about a second here) before any statistics; reading it pre-aggregated means reading a few
hundred thousand rows. :func:`rollup` builds it once per change of the table (``ingest`` and
``decompose`` call it at the end) and :func:`load_crosstab` answers the reports from it.

The ``<table>_rollup`` table (``images_rollup`` for the default table) is an ordinary LanceDB
table, one row per (dimension, group, concept) with at least one image carrying the concept:

``dimension`` string    ``"label"``, ``"label,split"``, ``"timestamp@day"``, ...
``key``       string    the group's value(s), readable (``"circle"``, ``"circle|train"``, ``"2024-01-05"``)
``group``     int32     the group's position in the dimension
``concept_id`` int32    null on the group's total row, whose ``n`` is the group's image count
``n``         int64     images of the group whose weight for the concept is > 0
``weight_sum`` / ``weight_sq`` float64  sums of the weights / squared weights

Dimensions: every timestamp/date column by day and by month (coarser windows are sums of these; a
report reads the smallest one that serves its window); when a column spans more than ``max_groups``
days: by week, and by the finest of month / quarter / year that fits (weeks straddle months), every categorical column (string, boolean, integer; not the generated ones) with at most
``max_groups`` distinct values, and every pair of those whose product of counts is at most
``max_groups`` (spurious reports with a split column).

Staleness: the rollup records a fingerprint of the images table's data fragments (files, row
counts, deletions). Any write that changes rows (ingest, decompose, delete, compaction) changes the
fingerprint, and the reports then scan the images table instead, with the same results, until the
next :func:`rollup`. Index builds and metadata updates do not invalidate it. Only the presence
threshold 0 is stored (a concept is present when its weight is > 0, the reports' default): reports
with ``min_weight > 0`` or a ``where`` condition scan the images table.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..threads import hot_path
from .store import ImageStore, check_db_writable, data_fingerprint, derived_table_name, table_names

__all__ = ["rollup", "RollupSummary", "rollup_table_name", "load_crosstab", "is_current", "data_fingerprint",
           "MAX_GROUPS", "ROLLUP_FORMAT"]

MAX_GROUPS = 1000
ROLLUP_FORMAT = 1
_GRAINS = ("day", "week", "month", "quarter", "year")
_NOT_CATEGORICAL = {"id", "uri", "embedding", "concept_ids", "concept_weights", "l0", "splice_cosine", "status",
                    "error"}


def rollup_table_name(table: str = "images") -> str:
    return derived_table_name(table, "rollup")


@dataclass
class RollupSummary:
    db: str
    table: str
    rollup_table: str
    dimensions: dict = field(default_factory=dict)  # name -> number of groups
    rows: int = 0
    images: int = 0
    seconds: float = 0.0
    skipped: dict = field(default_factory=dict)  # column -> why it was left out

    def text(self) -> str:
        dims = ", ".join(f"{d} ({g} groups)" for d, g in self.dimensions.items()) or "none"
        out = [f"{self.rollup_table}: {self.rows:,} rows over {self.images:,} images in {self.seconds:.1f} s",
               f"dimensions: {dims}"]
        if self.skipped:
            out.append("left out: " + "; ".join(f"{c} ({why})" for c, why in self.skipped.items()))
        return "\n".join(out)


# ----------------------------------------------------------------------------------------- fingerprint
# ------------------------------------------------------------------------------------------ building
def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t)


def _is_categorical(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t)
            or pa.types.is_integer(t))


def _encode_key(v, temporal: bool):
    if v is None:
        return None
    if temporal:
        return int(pa.scalar(v, pa.timestamp("us")).cast(pa.int64()).as_py())
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _decode_keys(values: list, type_str: str) -> list:
    t = _parse_type(type_str)
    if _is_temporal(t):
        return pa.array(values, pa.int64()).cast(pa.timestamp("us")).to_pylist()
    return pa.array(values).cast(t).to_pylist() if values else []


def _parse_type(s: str) -> pa.DataType:
    simple = {"string": pa.string(), "large_string": pa.large_string(), "bool": pa.bool_(),
              "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
              "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64()}
    if s in simple:
        return simple[s]
    if s.startswith("timestamp") or s.startswith("date"):
        return pa.timestamp("us")
    raise ValueError(f"unsupported rollup key type {s!r}")


def _key_text(v) -> str:
    if hasattr(v, "isoformat"):
        return v.date().isoformat() if hasattr(v, "date") and v.time() == v.time().min else v.isoformat()
    return str(v)


def _serves(stored: str, asked: str) -> bool:
    """Whether windows of ``asked`` are unions of windows of ``stored`` (weeks straddle months)."""
    if stored == asked or stored == "day":
        return True
    return stored != "week" and asked != "week" and _GRAINS.index(asked) > _GRAINS.index(stored)


def _grains(ds, col: str, max_groups: int) -> list[str]:
    """Day when ``col`` spans at most ``max_groups`` days; else week (when it fits) and the finest of
    month / quarter / year that fits, so that every window the column can be grouped by is served."""
    import pyarrow.compute as pc

    from .aggregates import truncate_to_window

    arr = ds.to_table(columns=[col]).column(col).combine_chunks()
    if arr.null_count == len(arr):
        return []

    def fits(grain):
        return pc.count_distinct(truncate_to_window(arr, grain)).as_py() <= max_groups

    if fits("day"):  # months too: a monthly report then reads ~30x fewer rows
        return ["day"] + (["month"] if fits("month") else [])
    out = ["week"] if fits("week") else []
    for grain in ("month", "quarter", "year"):
        if fits(grain):
            return out + [grain]
    return out


def _plan(ds, columns: Sequence[str] | None, max_groups: int):
    """(dimensions, skipped): each dimension is (name, [columns], every or None)."""
    import pyarrow.compute as pc

    schema = ds.schema
    if columns is None:
        cands = [f.name for f in schema if f.name not in _NOT_CATEGORICAL]
    else:
        cands = list(dict.fromkeys(columns))
        for c in cands:
            if c not in schema.names:
                raise InputError(f"no column {c!r} in the images table (columns: {', '.join(schema.names)})")
    dims, skipped, cats = [], {}, []
    for c in cands:
        t = schema.field(c).type
        if _is_temporal(t):
            grains = _grains(ds, c, max_groups)
            if not grains:
                skipped[c] = f"more than {max_groups} distinct years" if ds.count_rows() else "empty"
            dims += [(f"{c}@{g}", [c], g) for g in grains]
        elif _is_categorical(t):
            k = pc.count_distinct(ds.to_table(columns=[c]).column(c)).as_py()
            if k > max_groups:
                skipped[c] = f"{k} distinct values > max_groups={max_groups}"
            elif k == 0:
                skipped[c] = "all null"
            else:
                cats.append((c, k))
        elif columns is not None:
            raise InputError(f"column {c!r} has type {t}: only timestamp/date, string, boolean and integer "
                             "columns can be rolled up")
    for c, _k in cats:
        dims.append((c, [c], None))
    for i, (a, ka) in enumerate(cats):
        for b, kb in cats[i + 1:]:
            if ka * kb <= max_groups:
                dims.append((f"{a},{b}", [a, b], None))
    return dims, skipped


@hot_path()
def rollup(db, table: str = "images", columns: Sequence[str] | None = None, *, max_groups: int = MAX_GROUPS,
           storage_options: Mapping[str, str] | None = None, batch_rows: int = 1 << 17,
           quiet: bool = True) -> RollupSummary:
    """(Re)build the ``<table>_rollup`` aggregates of ``table`` in one pass over its concept columns.

    ``columns``: the columns to aggregate by (default: every timestamp/date column and every
    categorical column with at most ``max_groups`` distinct values, plus their pairs).
    ``quiet=False`` shows a progress bar (rows read). Returns a :class:`RollupSummary`.
    """
    from ..records import jsonable
    from .aggregates import Accumulator, truncate_to_window
    from .store import METADATA_KEY, ImageStore, with_retries

    t0 = time.perf_counter()
    if int(max_groups) < 1:
        raise InputError("max_groups must be a positive integer")
    store = ImageStore(db, table, storage_options)
    if not store.exists():
        raise InputError(f"no table {table!r} in {store.db_uri}")
    check_db_writable(store.db_uri, "rebuild the rollup")
    ds = store.table.to_lance()
    fingerprint = data_fingerprint(ds)  # of exactly the version scanned below
    n_concepts = _concept_count(store)
    dims, skipped = _plan(ds, columns, int(max_groups))
    name = rollup_table_name(table)
    summary = RollupSummary(db=store.db_uri, table=table, rollup_table=name, skipped=skipped)
    accs = [Accumulator(n_concepts, len(cols), 0.0, True) for _, cols, _ in dims]
    need = list(dict.fromkeys([c for _, cols, _ in dims for c in cols] + ["concept_ids", "concept_weights"]))
    total = ds.count_rows()
    bar = None
    if dims and not quiet:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="row", unit_scale=True, desc="rollup", dynamic_ncols=True, file=sys.stderr)
    if dims:
        for b in ds.to_batches(columns=need, batch_size=batch_rows):
            ids, ws = b.column("concept_ids"), b.column("concept_weights")
            for (_, cols, every), acc in zip(dims, accs):
                gcols = [b.column(c) for c in cols]
                if every is not None:
                    gcols[0] = truncate_to_window(gcols[0], every)
                acc.add(gcols, ids, ws)
            if bar is not None:
                bar.update(b.num_rows)
    if bar is not None:
        bar.close()
    schema = pa.schema([pa.field("dimension", pa.string()), pa.field("key", pa.string()),
                        pa.field("group", pa.int32()), pa.field("concept_id", pa.int32()),
                        pa.field("n", pa.int64()), pa.field("weight_sum", pa.float64()),
                        pa.field("weight_sq", pa.float64())])
    parts, meta_dims, start = [], {}, 0
    for (dname, cols, every), acc in zip(dims, accs):
        ct = acc.result("rollup")
        tbl = _crosstab_rows(dname, ct, len(cols))
        types = [str(ds.schema.field(c).type) for c in cols]
        meta_dims[dname] = {"columns": cols, "every": every, "types": types, "offset": start,
                            "rows": tbl.num_rows, "n": [int(x) for x in ct.n],
                            "keys": [[_encode_key(v, _is_temporal(ds.schema.field(c).type))
                                      for v, c in zip(g if len(cols) > 1 else (g,), cols)] for g in ct.groups],
                            "dropped_null_groups": int(ct.dropped_null_groups)}
        summary.dimensions[dname] = len(ct.groups)
        parts.append(tbl)
        start += tbl.num_rows
        summary.images = max(summary.images, int(ct.n.sum()))
    meta = {"format": ROLLUP_FORMAT, "table": table, "fingerprint": fingerprint, "n_concepts": n_concepts,
            "rows": start,
            "min_weight": 0.0, "max_groups": int(max_groups), "dimensions": meta_dims,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    schema = schema.with_metadata({METADATA_KEY: json.dumps(jsonable(meta), sort_keys=True)})
    data = pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()
    # one commit: the rows and the metadata that locates them land together
    with store.write_lock():
        # "create" for a new table: "overwrite" of a missing dataset logs a Rust WARN on every first ingest
        mode = "overwrite" if name in table_names(store.conn) else "create"
        with_retries(lambda: store.conn.create_table(name, data, mode=mode), f"write {name}")
    summary.rows = data.num_rows
    summary.seconds = time.perf_counter() - t0
    return summary


def _concept_count(store) -> int:
    from .store import table_names

    if store.concepts_name not in table_names(store.conn):
        raise InputError(f"{store.db_uri} has no {store.concepts_name!r} table: nothing to roll up")
    return int(store.conn.open_table(store.concepts_name).count_rows())


def _crosstab_rows(dname: str, ct, k: int) -> pa.Table:
    G, C = ct.present.shape if ct.present.size else (len(ct.groups), 0)
    g_idx, c_idx = np.nonzero(ct.present) if C else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    keys = [_key_text(g) if k == 1 else "|".join(_key_text(x) for x in g) for g in ct.groups]
    # the group totals first (concept_id null), then the concept rows in (group, concept) order
    tot = pa.table({"dimension": pa.repeat(pa.scalar(dname, pa.string()), G), "key": pa.array(keys, pa.string()),
                    "group": pa.array(np.arange(G, dtype=np.int32)), "concept_id": pa.nulls(G, pa.int32()),
                    "n": pa.array(np.asarray(ct.n, np.int64)), "weight_sum": pa.nulls(G, pa.float64()),
                    "weight_sq": pa.nulls(G, pa.float64())})
    # repeated strings expanded by Arrow, not by Python lists (millions of rows at a million images)
    key_col = pa.DictionaryArray.from_arrays(pa.array(g_idx.astype(np.int32)), pa.array(keys, pa.string()))
    rows = pa.table({"dimension": pa.repeat(pa.scalar(dname, pa.string()), len(g_idx)),
                     "key": key_col.cast(pa.string()),
                     "group": pa.array(g_idx.astype(np.int32)), "concept_id": pa.array(c_idx.astype(np.int32)),
                     "n": pa.array(ct.present[g_idx, c_idx].astype(np.int64)),
                     "weight_sum": pa.array(ct.weight_sum[g_idx, c_idx]),
                     "weight_sq": pa.array(ct.weight_sq[g_idx, c_idx])})
    return pa.concat_tables([tot, rows])


# ------------------------------------------------------------------------------------------- reading
def rollup_metadata(rollup_ds) -> dict:
    from .store import decode_metadata

    return decode_metadata(rollup_ds.schema)


def is_current(images_ds, rollup_ds, meta: dict | None = None) -> bool:
    """Whether the rollup describes the images table as it is now (and is itself as written)."""
    meta = rollup_metadata(rollup_ds) if meta is None else meta
    return (meta.get("format") == ROLLUP_FORMAT
            and meta.get("rows") == rollup_ds.count_rows()  # rows are located by offset
            and meta.get("fingerprint") == data_fingerprint(images_ds))


def load_crosstab(images_ds, rollup_ds, cols: Sequence[str], every: str | None, *, n_concepts: int,
                  min_weight: float = 0.0, second_moment: bool = False) -> Any | None:
    """The :class:`~lance_concepts.lake.aggregates.Crosstab` of ``images_ds`` grouped by ``cols`` (the first one
    truncated to ``every``), read from the rollup; None when the rollup cannot answer (stale, another
    threshold, a dimension it does not hold, a finer window than it stores)."""
    from .aggregates import Crosstab, sort_key, truncate_to_window

    if min_weight != 0 or rollup_ds is None:
        return None
    meta = rollup_metadata(rollup_ds)
    if meta.get("n_concepts") != n_concepts or not is_current(images_ds, rollup_ds, meta):
        return None
    dims = meta.get("dimensions") or {}
    cols = list(cols)
    swap = False
    d = None
    if every is not None:  # of the stored grains that serve the window, the one with the fewest rows
        ok = [v for v in dims.values() if v["columns"] == cols[:1] and v["every"] is not None and len(cols) == 1
              and _serves(v["every"], every)]
        d = min(ok, key=lambda v: v["rows"]) if ok else None
    else:
        for v in dims.values():
            if v["every"] is None and v["columns"] == cols:
                d = v
                break
            if v["every"] is None and len(cols) == 2 and v["columns"] == cols[::-1]:
                d, swap = v, True
                break
    if d is None:
        return None
    # the stored groups, typed as the direct scan would give them
    per_col = list(zip(*d["keys"])) if d["keys"] else [[] for _ in d["columns"]]
    decoded = [_decode_keys(list(vals), t) for vals, t in zip(per_col, d["types"])]
    stored = list(zip(*decoded)) if decoded else []
    n_stored = np.asarray(d["n"], np.int64)
    if every is not None:
        first = pa.array([g[0] for g in stored], pa.timestamp("us"))
        win = truncate_to_window(first, every).to_pylist() if len(first) else []
        values = sorted(set(win), key=sort_key)
    else:
        win = [g if len(g) > 1 else g[0] for g in stored]
        if swap:
            win = [(g[1], g[0]) for g in win]
        values = sorted(set(win), key=sort_key)
    pos = {v: i for i, v in enumerate(values)}
    gmap = np.array([pos[w] for w in win], dtype=np.int64)
    G, C = len(values), int(n_concepts)
    n = np.bincount(gmap, weights=n_stored, minlength=G).astype(np.int64) if G else np.zeros(0, np.int64)
    present = np.zeros((G, C), np.int64)
    wsum = np.zeros((G, C))
    wsq = np.zeros((G, C)) if second_moment else None
    if d["rows"] > len(stored):
        cols_needed = ["group", "concept_id", "n", "weight_sum"] + (["weight_sq"] if second_moment else [])
        tbl = rollup_ds.to_table(columns=cols_needed, offset=d["offset"] + len(stored),
                                 limit=d["rows"] - len(stored))
        grp = gmap[np.asarray(tbl.column("group"), np.int64)]
        key = grp * C + np.asarray(tbl.column("concept_id"), np.int64)
        if len(values) == len(stored):  # one stored group per output group: (group, concept) keys are unique
            present.reshape(-1)[key] = np.asarray(tbl.column("n"), np.int64)
            wsum.reshape(-1)[key] = np.asarray(tbl.column("weight_sum"))
            if second_moment:
                wsq.reshape(-1)[key] = np.asarray(tbl.column("weight_sq"))
        else:  # days summed into months, ...
            present = np.bincount(key, weights=np.asarray(tbl.column("n"), np.float64),
                                  minlength=G * C).astype(np.int64).reshape(G, C)
            wsum = np.bincount(key, weights=np.asarray(tbl.column("weight_sum")), minlength=G * C).reshape(G, C)
            if second_moment:
                wsq = np.bincount(key, weights=np.asarray(tbl.column("weight_sq")), minlength=G * C).reshape(G, C)
    return Crosstab(groups=values, n=n, present=present, weight_sum=wsum, weight_sq=wsq, min_weight=0.0,
                    dropped_null_groups=int(d.get("dropped_null_groups", 0)), engine="rollup")


#: Rebuilding the report aggregates is one pass over the table (~7 s per million rows on 2 cores):
#: ingest does it when the table is at most this large, or when the run wrote at least
#: ROLLUP_MIN_SHARE of it; otherwise it says so and ``lance-concepts rollup`` does it on demand.
ROLLUP_AUTO_ROWS = 2_000_000


ROLLUP_MIN_SHARE = 0.05


def refresh_rollup(store: ImageStore, written: int | None = None, mode="auto", quiet: bool = True) -> str | None:
    """Rebuild the report aggregates (rollup.py) for the table as it now is. An optimisation like the
    indexes: a failure is reported, and the reports scan the images table meanwhile. ``written``: rows
    this run wrote (``mode="auto"`` skips a large table that barely changed)."""
    from .rollup import is_current, rollup, rollup_table_name
    from .store import table_names

    if mode is False or mode == "off":
        return None
    try:
        rows = store.count()
        names = table_names(store.conn)
        if not rows or store.concepts_name not in names:
            return None
        rname = rollup_table_name(store.name)
        if rname in names and is_current(store.refresh().table.to_lance(), store.conn.open_table(rname).to_lance()):
            return None
        if (mode == "auto" and written is not None and rows > ROLLUP_AUTO_ROWS
                and written < ROLLUP_MIN_SHARE * rows):
            return (f"report aggregates ({rollup_table_name(store.name)}) not rebuilt: this run changed "
                    f"{written:,} of {rows:,} rows; drift/spurious scan the table until `lance-concepts rollup`")
        rollup(store.conn, store.name, storage_options=store.storage_options, quiet=quiet)
    except Exception as exc:
        return f"report aggregates not rebuilt ({str(exc)[:200]}); `lance-concepts rollup` retries"
    return None
