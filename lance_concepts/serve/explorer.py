"""What the explorer's pages show, computed with the package's public functions (no HTTP here).

One :class:`Explorer` per served database keeps a :class:`~lance_concepts.retrieval.searcher.Searcher`
(the where-language and the search planner), a DuckDB connection for reports and a locked-down one
for the SQL box, so a page costs a query, not an open.
"""
from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..query.connection import connect
from ..query.drift import drift
from ..query.named import list_queries, load_query
from ..query.spurious import spurious
from ..retrieval.searcher import Searcher
from ..retrieval.where import quote_string
from .guard import lock_down, run_read_only
from .thumbnails import ThumbnailCache, cache_dir_for

GRID_COLUMNS = ("id", "uri", "label")
PAGE_SIZES = (24, 48, 96, 200)


def positive_int(value, name: str, default: int, maximum: int | None = None) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number, got {value!r}") from None
    if n < 0 or (maximum is not None and n > maximum):
        raise InputError(f"{name} must be between 0 and {maximum}, got {n}")
    return n


class Explorer:
    def __init__(self, db, table: str = "images", sql_timeout_s: float = 10.0):
        self.db = str(db)
        self.table = table
        self.searcher = Searcher(db, table)
        self.schema = self.searcher.t.schema
        self.names = list(self.searcher.t.concept_names or [])
        meta = self.searcher.t.meta or {}
        roots = [meta.get("image_root")] + [s.get("root") for s in meta.get("sources", [])]
        self.roots = sorted({r for r in roots if r})
        self.thumbs = ThumbnailCache(cache_dir_for(self.db, table), self.roots)
        self.sql_timeout_s = sql_timeout_s
        self._report_lock = threading.Lock()
        self._sql_lock = threading.Lock()
        self._con = None
        self._sql_con = None
        self._uri_cache: dict[str, str] = {}
        self._postings = None
        self._counts: dict[tuple, int] = {}  # the table is served as it was when opened

    # -- connections (opened on first use, one request at a time each) ---------------------------
    @property
    def con(self):
        if self._con is None:
            self._con = connect(self.db, table=self.table)
        return self._con

    @property
    def sql_con(self):
        if self._sql_con is None:
            self._sql_con = lock_down(connect(self.db, table=self.table))
        return self._sql_con

    def columns(self) -> list[str]:
        skip = {"embedding", "concept_ids", "concept_weights"}
        return [f.name for f in self.schema if f.name not in skip and not pa.types.is_list(f.type)
                and not pa.types.is_fixed_size_list(f.type)]

    def time_columns(self) -> list[str]:
        return [f.name for f in self.schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]

    def category_columns(self) -> list[str]:
        return [f.name for f in self.schema if pa.types.is_string(f.type) and f.name not in ("id", "uri", "caption", "status", "error")]

    def suggest(self, prefix: str, n: int = 20) -> list[str]:
        p = (prefix or "").strip().lower()
        starts = [c for c in self.names if c.lower().startswith(p)]
        inside = [c for c in self.names if p in c.lower() and c not in starts]
        return (starts + inside)[:n]

    # -- grid --------------------------------------------------------------------------------------
    def filter_for(self, where: str = "", sort: str = "") -> str | None:
        """The Lance filter of a grid: ``where`` (the where-language), AND 'carries ``sort``' when sorting."""
        cond = where.strip()
        if sort:
            sort_cond = f"concept({quote_string(sort)}) > 0"
            cond = f"({cond}) AND {sort_cond}" if cond else sort_cond
        return self.searcher.compile(cond or None)[0]

    def count(self, where: str = "", sort: str = "") -> int:
        """How many images a grid has; its own request (the page does not wait for it: at a million
        rows counting a common concept costs more than showing the first page)."""
        key = (where.strip(), sort)
        if key not in self._counts:
            flt = self.filter_for(where, sort)
            self._counts[key] = int(self.searcher.ds.count_rows(filter=flt) if flt else self.searcher.ds.count_rows())
        return self._counts[key]

    def grid(self, where: str = "", sort: str = "", page: int = 0, size: int = 48) -> dict:
        """One page of images passing ``where`` (the where-language), optionally strongest ``sort``
        concept first (then only images that carry it). ``more``: whether a next page exists."""
        if size not in PAGE_SIZES:
            raise InputError(f"size must be one of {', '.join(map(str, PAGE_SIZES))}, got {size}")
        flt = self.filter_for(where, sort)
        cols = [c for c in GRID_COLUMNS if c in self.schema.names]
        ds = self.searcher.ds
        if not sort:
            rows = ds.to_table(columns=cols, filter=flt, offset=page * size, limit=size + 1).to_pylist()
            return {"rows": rows[:size], "more": len(rows) > size}
        cid = self.searcher.resolver(sort)
        if not where.strip():
            return self.sorted_by_postings(cid, page, size, cols)
        tab = ds.to_table(columns=["id", "concept_ids", "concept_weights"], filter=flt)
        weights = concept_weight_column(tab, cid)
        order = pc.array_sort_indices(weights, order="descending")
        ids = tab.column("id").take(order.slice(page * size, size))
        rows = self.rows_by_id(ids.to_pylist(), cols)
        w = dict(zip(ids.to_pylist(), weights.take(order.slice(page * size, size)).to_pylist()))
        for r in rows:
            r["weight"] = w.get(r["id"])
        self._counts[(where.strip(), sort)] = tab.num_rows
        return {"rows": rows, "more": (page + 1) * size < tab.num_rows}

    def sorted_by_postings(self, cid: int, page: int, size: int, cols: list[str]) -> dict:
        """Without a condition, sorting reads the long postings table (its BITMAP index finds the
        concept's rows) instead of every image's concept lists."""
        from ..lake.store import connect as lake_connect

        if self._postings is None:
            self._postings = lake_connect(self.db).open_table(self.searcher.t.postings_name).to_lance()
        tab = self._postings.to_table(columns=["image_id", "weight"], filter=f"concept_id = {int(cid)}")
        order = pc.array_sort_indices(tab.column("weight"), order="descending").slice(page * size, size)
        ids, weights = tab.column("image_id").take(order).to_pylist(), tab.column("weight").take(order).to_pylist()
        rows = self.rows_by_id(ids, cols)
        w = dict(zip(ids, weights))
        for r in rows:
            r["weight"] = w.get(r["id"])
        return {"rows": rows, "more": (page + 1) * size < tab.num_rows}

    def rows_by_id(self, ids: list, cols: list[str]) -> list[dict]:
        if not ids:
            return []
        flt = "id IN (" + ", ".join(quote_string(str(i)) for i in ids) + ")"
        got = {r["id"]: r for r in self.searcher.ds.to_table(columns=cols, filter=flt).to_pylist()}
        return [got[i] for i in ids if i in got]

    def uri_of(self, image_id: str) -> str:
        if image_id not in self._uri_cache:
            rows = self.rows_by_id([image_id], ["id", "uri"])
            if not rows:
                raise KeyError(image_id)
            if len(self._uri_cache) > 100_000:
                self._uri_cache.clear()
            self._uri_cache[image_id] = rows[0]["uri"]
        return self._uri_cache[image_id]

    # -- one image ---------------------------------------------------------------------------------
    def image(self, image_id: str, neighbours: int = 12) -> dict:
        cols = [c for c in self.schema.names]
        rows = self.rows_by_id([image_id], cols)
        if not rows:
            raise KeyError(image_id)
        row = rows[0]
        ids, ws = row.pop("concept_ids", None) or [], row.pop("concept_weights", None) or []
        vec = row.pop("embedding", None)
        pairs = sorted(((self.names[i] if i < len(self.names) else str(i), w) for i, w in zip(ids, ws)),
                       key=lambda p: -p[1])
        near = []
        if vec is not None:
            res = self.searcher.search(vector=vec, k=neighbours + 1, concepts=0, columns=["label"] if "label" in self.schema.names else [])
            near = [r for r in res.to_pylist() if r["id"] != image_id][:neighbours]
        return {"row": row, "concepts": pairs, "neighbours": near, "falcon": self.falcon_groups(image_id)}

    def falcon_groups(self, image_id: str) -> list[dict]:
        """The image's FALCON features with their labels, when ``lc.falcon`` has been run."""
        tables = {r[0] for r in self.con.sql("SHOW TABLES").fetchall()}
        if not {"image_features", "features"} <= tables:
            return []
        with self._report_lock:
            try:
                return arrow_rows(self.con.sql("SELECT * FROM image_features JOIN features USING (feature_id) "
                                               "WHERE image_id = $id LIMIT 50", params={"id": image_id}))
            except Exception:  # an older FALCON layout: show nothing rather than fail the page
                return []

    # -- search ------------------------------------------------------------------------------------
    def search(self, q: str = "", like: str = "", where: str = "", k: int = 48) -> list[dict]:
        if not q.strip() and not like:
            return []
        cols = ["label"] if "label" in self.schema.names else []
        if like:
            rows = self.rows_by_id([like], ["id", "embedding"])
            if not rows:
                raise InputError(f"like: no image with id {like!r}")
            res = self.searcher.search(vector=rows[0]["embedding"], where=where or None, k=k, concepts=3, columns=cols)
        else:
            res = self.searcher.search(q.strip(), where=where or None, k=k, concepts=3, columns=cols)
        return res.to_pylist()

    # -- drift ---------------------------------------------------------------------------------------
    def drift(self, time_column: str, every: str, concepts: list[str], top: int = 8):
        with self._report_lock:
            return drift(self.con, time_column, every, concepts=concepts or None, top=top)

    def window_examples(self, time_column: str, every: str, window: str, concept: str, n: int = 12) -> list[dict]:
        """Images of ``window`` (a drift window label) that carry ``concept``, strongest first."""
        if time_column not in self.time_columns():
            raise InputError(f"time_column: not a time column: {time_column!r}")
        label_sql = WINDOW_LABEL_SQL.get(every)
        if label_sql is None:
            raise InputError(f"every must be one of {', '.join(WINDOW_LABEL_SQL)}, got {every!r}")
        self.searcher.resolver(concept)  # unknown concept: an error listing the closest names
        col = '"' + time_column.replace('"', '""') + '"'
        sql = (f"SELECT id, uri, concept_weight(images, $c) AS weight FROM images "
               f"WHERE {label_sql.format(col=col)} = $w AND has_concept(images, $c, 0) "
               f"ORDER BY weight DESC LIMIT {int(n)}")
        with self._report_lock:
            return arrow_rows(self.con.sql(sql, params={"c": concept, "w": window}))

    # -- spurious ------------------------------------------------------------------------------------
    def spurious(self, label_column: str):
        with self._report_lock:
            return spurious(self.con, label_column)

    def with_and_without(self, label_column: str, label: str, concept: str, n: int = 12) -> dict:
        base = f"{label_column} = {quote_string(label)}"
        c = f"concept({quote_string(concept)})"
        return {"with": self.grid(f"{base} AND {c} > 0", sort=concept, size=24)["rows"][:n],
                "without": self.grid(f"{base} AND {c} = 0", size=24)["rows"][:n]}

    # -- SQL -----------------------------------------------------------------------------------------
    def run_sql(self, sql: str, limit: int = 1000):
        with self._sql_lock:
            return run_read_only(self.sql_con, sql, timeout_s=self.sql_timeout_s, limit=limit)

    def named_queries(self):
        return [load_query(n) for n in list_queries()]

    def run_named(self, name: str, values: dict):
        if name not in list_queries():
            raise InputError(f"query: no named query {name!r} (known: {', '.join(list_queries())})")
        q = load_query(name)
        values = {k: v for k, v in values.items() if v not in (None, "")}
        with self._report_lock:
            try:
                return q.run(self.con, values)
            except InputError:
                raise
            except Exception as exc:  # DuckDB errors from a bad parameter value
                raise InputError(f"query {name!r}: {str(exc).splitlines()[0]}") from None


WINDOW_LABEL_SQL = {
    "day": "strftime({col}, '%Y-%m-%d')",
    "week": "strftime({col}, '%G-W%V')",
    "month": "strftime({col}, '%Y-%m')",
    "quarter": "(strftime({col}, '%Y') || '-Q' || CAST(quarter({col}) AS VARCHAR))",
    "year": "strftime({col}, '%Y')",
}


def arrow_rows(rel) -> list[dict]:
    """Rows of a DuckDB relation as dicts, draining the result (DuckDB 2's ``arrow()`` is a reader)."""
    out = rel.arrow()
    return (out.read_all() if hasattr(out, "read_all") else out).to_pylist()


def concept_weight_column(tab: pa.Table, cid: int) -> pa.Array:
    """Per row, the weight of concept ``cid`` (0 when absent), from the sparse list columns."""
    import numpy as np

    ids = tab.column("concept_ids").combine_chunks()
    ws = tab.column("concept_weights").combine_chunks()
    flat_ids = ids.values.to_numpy(zero_copy_only=False)
    flat_ws = ws.values.to_numpy(zero_copy_only=False)
    offsets = ids.offsets.to_numpy()
    hit = np.flatnonzero(flat_ids == cid)
    out = np.zeros(len(ids), dtype=np.float32)
    rows = np.searchsorted(offsets, hit, side="right") - 1
    out[rows] = flat_ws[hit]
    return pa.array(out)
