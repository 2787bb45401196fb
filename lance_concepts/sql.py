"""DuckDB over the concept tables: views with filter/projection pushdown into Lance, concept macros,
named parameterised queries and the sparse concept cross-tabulation the reports are built on.

``connect(db)`` returns a plain ``duckdb.DuckDBPyConnection`` in which

* ``images``, ``concepts`` and every other Lance table of the database are views over the Lance
  datasets (DuckDB's Arrow scan: only the referenced columns are read, and simple filters
  (``=``, ``<``, ``IN``, ``IS NULL``, ...) are pushed into the Lance scanner, which answers
  ``image_concepts.concept_id = ...`` from its BITMAP index);
* ``image_concepts(image_id, concept_id, concept, weight)`` is the long view (postings joined to
  concept names);
* macros and functions let SQL use concept *names*:

  ``concept_id('desert')``                 the id (unknown name: an error listing the closest names)
  ``concept_name(id)`` / ``concept_names(ids)``
  ``concept_weight(images, 'desert')``     the weight of a concept in an images row (0 when absent)
  ``has_concept(images, 'desert', 0.1)``   weight > 0.1
  ``top_concepts(images, 5)``              names of the row's 5 strongest concepts
  ``concept_images('desert', 0.1)``        table: (image_id, weight) of the images with weight > 0.1,
                                           read from the postings through the index (fast path)

Why not the ``lance`` DuckDB extension: it is not installable offline here (``INSTALL lance`` needs
the community repository) and the Arrow scan already pushes projections and the selective filters
(measured in BENCHMARKS.md, "SQL queries at 1,000,000 images"). Filters DuckDB does not push (list
functions such as ``concept_weight``) are evaluated by DuckDB over the projected columns.

``materialize=True`` copies the tables (without the ``embedding`` columns unless asked) into DuckDB
once, for repeated reports over the same data.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import unicodedata
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .errors import InputError

__all__ = [
    "connect",
    "run_query",
    "sql",
    "list_queries",
    "load_query",
    "NamedQuery",
    "UnknownConceptError",
    "ConceptNames",
    "concept_names",
    "resolve_concepts",
    "quote_ident",
    "check_column",
    "images_columns",
    "concept_crosstab",
    "Crosstab",
    "table_metadata",
    "SQL_DIR",
]

METADATA_KEY = "lance_concepts"
_PACKAGE_SQL = Path(__file__).resolve().parent / "data" / "sql"
_REPO_SQL = Path(__file__).resolve().parent.parent / "sql"
SQL_DIR = _REPO_SQL if _REPO_SQL.is_dir() else _PACKAGE_SQL


class UnknownConceptError(InputError):
    """A concept name that is not in the table's vocabulary (the message lists the closest names)."""


def _norm(s: str) -> str:
    """Lenient key for concept names: unicode NFC, case-folded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", str(s)).casefold().split())


class ConceptNames:
    """The vocabulary of a concepts table: id <-> name, with forgiving lookup and suggestions."""

    def __init__(self, ids: Sequence[int], names: Sequence[str]):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.names = [str(n) for n in names]
        self._exact = {n: int(i) for i, n in zip(self.ids, self.names)}
        loose: dict[str, list[int]] = {}
        for i, n in zip(self.ids, self.names):
            loose.setdefault(_norm(n), []).append(int(i))
        self._loose = loose
        self.size = int(self.ids.max()) + 1 if len(self.ids) else 0
        by_id = [None] * self.size
        for i, n in zip(self.ids, self.names):
            by_id[int(i)] = n
        self.by_id = by_id

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return name in self._exact or len(self._loose.get(_norm(name), ())) == 1

    def closest(self, name: str, n: int = 5) -> list[str]:
        key = _norm(name)
        pool = {_norm(c): c for c in self.names}
        hits = difflib.get_close_matches(key, list(pool), n=n, cutoff=0.6)
        if len(hits) < n:  # substring matches help for long or compound names ('desert road' -> 'desert')
            extra = [c for k, c in pool.items() if (key in k or (len(k) > 2 and k in key)) and k not in hits]
            hits += [_norm(c) for c in sorted(extra, key=len)[: n - len(hits)]]
        return [pool[h] for h in hits]

    def id(self, name: str) -> int:
        if not isinstance(name, str):
            raise UnknownConceptError(f"concept names are strings, got {name!r}")
        if name in self._exact:
            return self._exact[name]
        loose = self._loose.get(_norm(name))
        if loose and len(loose) == 1:
            return loose[0]
        near = self.closest(name)
        hint = f"; closest: {', '.join(repr(c) for c in near)}" if near else "; no similar names"
        raise UnknownConceptError(f"unknown concept {name!r} (vocabulary of {len(self.names)} concepts){hint}")

    def name(self, cid: int) -> str | None:
        return self.by_id[cid] if 0 <= cid < self.size else None


# per-connection state (the connection object cannot carry attributes)
_STATE: "weakref.WeakKeyDictionary[Any, _ConnState]" = weakref.WeakKeyDictionary()


@dataclass
class _ConnState:
    db: str
    table: str
    names: ConceptNames
    sources: dict = field(default_factory=dict)  # view name -> lance dataset
    materialized: bool = False
    has_postings: bool = False
    metadata: dict = field(default_factory=dict)
    last_error: Exception | None = None


def _state(con) -> _ConnState:
    try:
        return _STATE[con]
    except (KeyError, TypeError):
        raise InputError("this DuckDB connection was not opened with lance_concepts.sql.connect(db)") from None


def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted (never interpolate user text into SQL any other way)."""
    return '"' + str(name).replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------- tables
def _is_local(db: str) -> bool:
    return "://" not in db or db.startswith("file://")


def _lance_tables(db: str, storage_options=None) -> dict[str, Any]:
    """name -> lance dataset for every table of the LanceDB database ``db``."""
    import lance

    out = {}
    if _is_local(db):
        root = Path(db[len("file://"):] if db.startswith("file://") else db)
        if not root.is_dir():
            raise InputError(f"no LanceDB database at {db!r} (not a directory)")
        for p in sorted(root.iterdir()):
            if p.suffix == ".lance" and p.is_dir():
                out[p.stem] = lance.dataset(str(p))
        return out
    import lancedb  # remote URI: let LanceDB resolve the table locations

    conn = lancedb.connect(db, storage_options=storage_options) if storage_options else lancedb.connect(db)
    names = conn.list_tables() if hasattr(conn, "list_tables") else conn.table_names()
    names = list(getattr(names, "tables", names))
    for n in names:
        out[n] = conn.open_table(n).to_lance()
    return out


def table_metadata(schema: pa.Schema) -> dict:
    """The package's provenance metadata of a table schema (store.py owns the format)."""
    from .store import _decode_metadata

    return _decode_metadata(schema)


def _companions(table: str) -> tuple[str, str]:
    try:  # store.py owns the naming
        from .store import companion_tables

        return companion_tables(table)
    except Exception:  # pragma: no cover - store.py not importable
        return ("concepts", "image_concepts") if table == "images" else (f"{table}_concepts",
                                                                          f"{table}_image_concepts")


def connect(db, *, table: str = "images", materialize: bool = False, include_embeddings: bool = False,
            con=None, storage_options: Mapping[str, str] | None = None, threads: int | None = None):
    """A DuckDB connection over the LanceDB database ``db`` (path or URI) with views and concept macros.

    ``table`` picks the image table (its companions ``<table>_concepts`` / ``<table>_image_concepts``
    become ``concepts`` / ``image_concepts``). ``materialize`` copies the tables into DuckDB memory
    (``embedding`` columns only with ``include_embeddings``). ``con``: an existing DuckDB connection
    to add the views to.
    """
    import duckdb

    db = os.fspath(db)
    datasets = _lance_tables(db, storage_options)
    ctab, ptab = _companions(table)
    if table not in datasets:
        near = difflib.get_close_matches(table, list(datasets), n=3)
        have = ", ".join(sorted(datasets)) or "none"
        raise InputError(f"no table {table!r} in {db} (tables: {have})"
                         + (f"; did you mean {', '.join(near)}?" if near else ""))
    if ctab not in datasets:
        raise InputError(f"{db} has no {ctab!r} table: concepts have not been computed for {table!r} yet "
                         "(run `lance-concepts ingest` with a vocabulary)")
    con = duckdb.connect() if con is None else con
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    aliases = {table: "images", ctab: "concepts", ptab: "image_concepts_raw"}
    st = _ConnState(db=db, table=table, names=ConceptNames([], []), materialized=materialize,
                    has_postings=ptab in datasets, metadata=table_metadata(datasets[table].schema))
    for name, ds in datasets.items():
        src = f"_lc_src_{re.sub(r'[^0-9A-Za-z_]', '_', name)}"
        con.register(src, ds)
        view = aliases.get(name, name)
        st.sources[view] = ds
        cols = ds.schema.names
        if materialize:
            # the concepts' text embeddings are small and needed (label matching): always kept
            keep = [c for c in cols if include_embeddings or view == "concepts"
                    or not _is_embedding(ds.schema.field(c))]
            sel = ", ".join(quote_ident(c) for c in keep)
            con.execute(f"CREATE OR REPLACE TABLE {quote_ident(view)} AS SELECT {sel} FROM {src}")
            con.unregister(src)
        else:
            con.execute(f"CREATE OR REPLACE VIEW {quote_ident(view)} AS SELECT * FROM {src}")
        if view != name and name not in ("images", "concepts", "image_concepts", "image_concepts_raw"):
            con.execute(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS SELECT * FROM {quote_ident(view)}")
    cn = con.execute("SELECT concept_id, concept FROM concepts ORDER BY concept_id").fetchnumpy()
    st.names = ConceptNames(cn["concept_id"], [str(x) for x in cn["concept"]])
    _install_macros(con, st)
    _STATE[con] = st
    return con


def _is_embedding(f: pa.Field) -> bool:
    return pa.types.is_fixed_size_list(f.type)


def _install_macros(con, st: _ConnState) -> None:
    names = st.names

    def _concept_id(name):
        try:
            return names.id(name)
        except UnknownConceptError as exc:
            st.last_error = exc
            raise

    # a deterministic UDF: DuckDB folds concept_id('x') to a constant at plan time, so
    # `concept_id = concept_id('x')` is pushed into the Lance scan (and the index answers it)
    con.create_function("concept_id", _concept_id, ["VARCHAR"], "INTEGER", side_effects=False)
    con.execute("SET VARIABLE lc_concept_names = $n", {"n": names.by_id})
    con.execute("CREATE OR REPLACE MACRO concept_name(i) AS getvariable('lc_concept_names')[i + 1]")
    con.execute("CREATE OR REPLACE MACRO concept_names(ids) AS "
                "list_transform(ids, lambda x: getvariable('lc_concept_names')[x + 1])")
    con.execute("CREATE OR REPLACE MACRO concept_weight(r, name) AS "
                "coalesce(r.concept_weights[list_position(r.concept_ids, concept_id(name))], 0.0)")
    con.execute("CREATE OR REPLACE MACRO has_concept(r, name, min_weight := 0.0) AS "
                "coalesce(r.concept_weights[list_position(r.concept_ids, concept_id(name))], 0.0) > min_weight")
    con.execute("CREATE OR REPLACE MACRO top_concepts(r, k := 5) AS "
                "list_transform(r.concept_ids[1:k], lambda x: getvariable('lc_concept_names')[x + 1])")
    # statistics for the sql/ library (DuckDB has no erf): upper tail of the standard normal by
    # Abramowitz & Stegun 26.2.17 (absolute error < 7.5e-8; phi(x) * polynomial keeps the tail's
    # relative error small), Wilson score interval bounds
    con.execute("CREATE OR REPLACE MACRO _lc_q(x, t) AS exp(-x * x / 2) / sqrt(2 * pi()) * (t * (0.319381530 + "
                "t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429)))))")
    con.execute("CREATE OR REPLACE MACRO normal_sf(z) AS CASE WHEN z >= 0 THEN _lc_q(z, 1 / (1 + 0.2316419 * z)) "
                "ELSE 1 - _lc_q(-z, 1 / (1 - 0.2316419 * z)) END")
    con.execute("CREATE OR REPLACE MACRO wilson_low(k, n, z := 1.959963984540054) AS CASE WHEN n > 0 THEN "
                "greatest(0.0, ((k / n) + z * z / (2 * n) - z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n)))"
                " / (1 + z * z / n)) END")
    con.execute("CREATE OR REPLACE MACRO wilson_high(k, n, z := 1.959963984540054) AS CASE WHEN n > 0 THEN "
                "least(1.0, ((k / n) + z * z / (2 * n) + z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n)))"
                " / (1 + z * z / n)) END")
    if st.has_postings:
        con.execute("CREATE OR REPLACE VIEW image_concepts AS SELECT p.image_id, p.concept_id, "
                    "getvariable('lc_concept_names')[p.concept_id + 1] AS concept, p.weight "
                    "FROM image_concepts_raw p")
        con.execute("CREATE OR REPLACE MACRO concept_images(name, min_weight := 0.0) AS TABLE "
                    "SELECT image_id, weight FROM image_concepts_raw "
                    "WHERE concept_id = concept_id(name) AND weight > min_weight")
    else:  # no postings table: the long view unnests the parallel lists (slower, same result)
        con.execute("CREATE OR REPLACE VIEW image_concepts AS SELECT image_id, concept_id, "
                    "getvariable('lc_concept_names')[concept_id + 1] AS concept, weight FROM ("
                    "SELECT id AS image_id, unnest(concept_ids) AS concept_id, unnest(concept_weights) AS weight "
                    "FROM images WHERE concept_ids IS NOT NULL)")
        con.execute("CREATE OR REPLACE MACRO concept_images(name, min_weight := 0.0) AS TABLE "
                    "SELECT id AS image_id, concept_weights[list_position(concept_ids, concept_id(name))] AS weight "
                    "FROM images WHERE list_contains(concept_ids, concept_id(name)) "
                    "AND concept_weights[list_position(concept_ids, concept_id(name))] > min_weight")


def concept_names(con) -> ConceptNames:
    return _state(con).names


def resolve_concepts(con, names: Iterable[str]) -> list[int]:
    """Concept ids for names (UnknownConceptError with the closest names for any unknown one)."""
    cn = _state(con).names
    return [cn.id(n) for n in names]


def images_columns(con) -> dict[str, str]:
    """Column name -> DuckDB type of the images view."""
    return {r[0]: r[1] for r in con.execute("DESCRIBE images").fetchall()}


def check_column(con, column: str, *, what: str = "column", kinds: Sequence[str] | None = None) -> str:
    """Validate a column of ``images`` chosen by the user; returns it quoted for SQL."""
    cols = images_columns(con)
    if column not in cols:
        near = difflib.get_close_matches(column, list(cols), n=3, cutoff=0.5)
        plain = [c for c, t in cols.items() if not t.endswith("[]") and "[" not in t and c != "embedding"]
        raise InputError(f"images has no {what} {column!r}"
                         + (f"; did you mean {', '.join(repr(n) for n in near)}?" if near else "")
                         + f" (columns: {', '.join(plain)})")
    if kinds is not None and not any(k in cols[column].upper() for k in kinds):
        raise InputError(f"{what} {column!r} has type {cols[column]}, expected one of: {', '.join(kinds)}")
    return quote_ident(column)


# ----------------------------------------------------------------------------------------- queries
def _translate(con, exc: Exception) -> Exception:
    """DuckDB errors caused by an unknown concept name become the UnknownConceptError itself."""
    st = _STATE.get(con) if con is not None else None
    if st is not None and st.last_error is not None and "unknown concept" in str(exc):
        err, st.last_error = st.last_error, None
        return err
    msg = str(exc).strip()
    return InputError(f"query failed: {msg}")


def run_query(con_or_db, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None, *,
              materialize: bool = False) -> pa.Table:
    """Run SQL (with bound parameters) and return a pyarrow Table. ``con_or_db``: a connection from
    :func:`connect` or a database path (a connection is opened for this query)."""
    import duckdb

    owned = not isinstance(con_or_db, duckdb.DuckDBPyConnection)
    con = connect(con_or_db, materialize=materialize) if owned else con_or_db
    try:
        return _arrow_table(con, query, params)
    except duckdb.Error as exc:
        raise _translate(con, exc) from None
    finally:
        if owned:
            con.close()


def _used_params(query: str, params):
    """Named parameters the query references (DuckDB refuses unused ones)."""
    if not params:
        return None
    if not isinstance(params, Mapping):
        return list(params)
    used = set(re.findall(r"\$([A-Za-z_]\w*)", query))
    return {k: v for k, v in params.items() if k in used} or None


def _sql_rel(con, query: str, params):
    """con.sql, after closing a result the caller left unread on the connection (DuckDB >= 2.0 refuses
    new work while an execute() result is pending; only queries can be pending, so this is safe)."""
    if hasattr(con, "abort"):
        con.abort()  # a no-op when nothing is pending
    return con.sql(query, params=params) if params else con.sql(query)


def _arrow_table(con, query: str, params=None) -> pa.Table:
    """Arrow result without the extra copy a DB-API result makes (DuckDB >= 1.4: relation.to_arrow_table)."""
    params = _used_params(query, params)
    rel = _sql_rel(con, query, params)
    if rel is None:  # a statement without a result (CREATE ...)
        return pa.table({})
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def _arrow_reader(con, query: str, params=None, batch_rows: int = 1 << 17):
    params = _used_params(query, params)
    rel = _sql_rel(con, query, params)
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch_rows)
    return rel.fetch_arrow_reader(batch_rows)


@dataclass
class QueryParam:
    name: str
    type: str
    default: Any = None
    required: bool = True
    doc: str = ""

    def convert(self, value):
        if value is None:
            return None
        t = self.type.upper()
        if t.endswith("[]"):
            if isinstance(value, str):
                value = value.strip()
                if value.startswith("["):
                    value = json.loads(value)
                else:
                    value = [v.strip() for v in value.split(",") if v.strip()]
            inner = QueryParam(self.name, t[:-2])
            return [inner.convert(v) for v in value]
        try:
            if t in ("DOUBLE", "FLOAT", "REAL", "DECIMAL"):
                return float(value)
            if t in ("INTEGER", "BIGINT", "INT", "SMALLINT"):
                return int(value)
            if t == "BOOLEAN":
                if isinstance(value, str):
                    if value.lower() in ("1", "true", "yes", "on"):
                        return True
                    if value.lower() in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(value)
                return bool(value)
        except (TypeError, ValueError):
            raise InputError(f"parameter {self.name!r} must be {t}, got {value!r}") from None
        return str(value)


@dataclass
class NamedQuery:
    """A parameterised query from ``sql/NAME.sql``: ``$name`` value parameters (always bound) and
    ``{{name}}`` identifier parameters (column names, validated against ``images`` and quoted)."""

    name: str
    path: Path | None
    text: str
    doc: str
    params: dict[str, QueryParam]
    idents: dict[str, QueryParam]

    def render(self, con, values: Mapping[str, Any] | None = None) -> tuple[str, dict]:
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.params) - set(self.idents))
        if unknown:
            known = ", ".join(sorted(set(self.params) | set(self.idents))) or "none"
            raise InputError(f"query {self.name!r} has no parameter(s) {', '.join(unknown)} (parameters: {known})")
        text = self.text
        for name, p in self.idents.items():
            col = values.get(name, p.default)
            if col is None:
                raise InputError(f"query {self.name!r} needs --param {name}=COLUMN")
            text = text.replace("{{" + name + "}}", check_column(con, str(col), what=f"{name} column"))
        bound = {}
        for name, p in self.params.items():
            if f"${name}" not in text:
                continue
            if name in values:
                bound[name] = p.convert(values[name])
            elif not p.required:
                bound[name] = p.convert(p.default) if p.default is not None else None
            else:
                raise InputError(f"query {self.name!r} needs --param {name}=VALUE ({p.type}): {p.doc}")
        return text, bound

    def run(self, con, values: Mapping[str, Any] | None = None) -> pa.Table:
        text, bound = self.render(con, values)
        return run_query(con, text, bound)


_PARAM_RE = re.compile(r"^--\s*@(param|ident)\s+(\w+)\s+(?:([A-Za-z][\w\[\]]*)\s+)?(?:=\s*('(?:[^']|'')*'|\[[^\]]*\]|\S+)\s*)?(.*)$")


def _parse_default(raw: str | None, typ: str):
    if raw is None:
        return None
    if raw.upper() == "NULL":
        return None
    if raw.startswith("'") and raw.endswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw.startswith("["):
        return json.loads(raw.replace("'", '"'))
    return raw


def _parse_query(text: str, name: str, path: Path | None) -> NamedQuery:
    params, idents, doc = {}, {}, []
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("--"):
            if s:
                break
            continue
        m = _PARAM_RE.match(s)
        if m:
            kind, pname, ptype, pdef, pdoc = m.groups()
            if kind == "ident":  # -- @ident name = default  doc
                ptype, pdef = "IDENT", pdef if pdef is not None else None
            p = QueryParam(pname, (ptype or "VARCHAR"), _parse_default(pdef, ptype or ""), pdef is None, pdoc.strip())
            (idents if kind == "ident" else params)[pname] = p
        else:
            doc.append(s[2:].strip())
    return NamedQuery(name, path, text, "\n".join(doc).strip(), params, idents)


def list_queries() -> list[str]:
    return sorted(p.stem for p in SQL_DIR.glob("*.sql")) if SQL_DIR.is_dir() else []


def load_query(name_or_path) -> NamedQuery:
    """A named query: ``concept_drift`` (from the ``sql/`` library) or a path to a ``.sql`` file."""
    p = Path(os.fspath(name_or_path))
    if not p.is_file():
        stem = p.name[:-4] if p.name.endswith(".sql") else p.name
        cand = SQL_DIR / f"{stem}.sql"
        if not cand.is_file():
            near = difflib.get_close_matches(stem, list_queries(), n=3)
            raise InputError(f"no query file {str(name_or_path)!r}; library queries: {', '.join(list_queries())}"
                             + (f" (did you mean {', '.join(near)}?)" if near else ""))
        p = cand
    return _parse_query(p.read_text(encoding="utf-8"), p.stem, p)


def sql(db, query: str | None = None, *, file=None, params: Mapping[str, Any] | None = None,
        materialize: bool = False, table: str = "images",
        storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """Run SQL text or a named query file against the database ``db``; returns a pyarrow Table.

    ``params`` bind ``$name`` parameters (strings from the command line are converted to the types
    a query file declares)."""
    if (query is None) == (file is None):
        raise InputError("give either a SQL query or --file (a .sql file or a library query name)")
    con = connect(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        if file is not None:
            return load_query(file).run(con, params)
        return run_query(con, query, dict(params) if params else None)
    finally:
        con.close()


# ------------------------------------------------------------------------------ sparse cross-table
WINDOWS = ("day", "week", "month", "quarter", "year")


@dataclass
class Crosstab:
    """Per group (time window, label, (label, split), ...) and concept: image counts and weight sums.

    ``n[g]`` images in group g; ``present[g, c]`` images of g whose weight for concept c exceeds
    ``min_weight``; ``weight_sum[g, c]`` / ``weight_sq[g, c]`` sums of weights / squared weights
    (absent concepts count as weight 0; ``weight_sq`` is None unless asked for). ``groups`` holds the
    group values, sorted (tuples when grouping by several columns)."""

    groups: list
    n: np.ndarray
    present: np.ndarray
    weight_sum: np.ndarray
    weight_sq: np.ndarray | None
    min_weight: float
    dropped_null_groups: int = 0
    engine: str = ""


class _Accumulator:
    def __init__(self, n_concepts: int, ngroup_cols: int, min_weight: float, second_moment: bool):
        self.C = max(int(n_concepts), 1)
        self.k = ngroup_cols
        self.thr = np.float32(min_weight)
        self.min_weight = float(min_weight)
        self.second = second_moment
        self.values: list = []
        self.index: dict = {}
        self.cap = 0
        self.n = np.zeros(0, np.int64)
        self.present = np.zeros((0, self.C), np.int64)
        self.wsum = np.zeros((0, self.C), np.float64)
        self.wsq = np.zeros((0, self.C), np.float64) if second_moment else None
        self.dropped = 0
        # with the numba kernel, the rows of a batch are split over threads with private sums
        self.threads = _threads() if _numba_kernel() is not None else 1
        self.extra: list[list[np.ndarray]] = [[] for _ in range(self.threads - 1)]

    def _grow(self, G: int):
        if G <= self.cap:
            return
        new = max(G, self.cap * 2, 8)
        pad = new - self.cap
        self.n = np.concatenate([self.n, np.zeros(pad, np.int64)])
        self.present = np.vstack([self.present, np.zeros((pad, self.C), np.int64)])
        self.wsum = np.vstack([self.wsum, np.zeros((pad, self.C))])
        if self.second:
            self.wsq = np.vstack([self.wsq, np.zeros((pad, self.C))])
        for ex in self.extra:
            if ex:
                ex[:] = [np.vstack([a, np.zeros((pad, self.C), a.dtype)]) for a in ex]
        self.cap = new

    def _arrays(self, t: int) -> list[np.ndarray]:
        if t == 0:
            return [self.present, self.wsum, self.wsq if self.second else np.zeros((1, 1))]
        ex = self.extra[t - 1]
        if not ex:
            ex[:] = [np.zeros_like(self.present), np.zeros_like(self.wsum),
                     np.zeros_like(self.wsq) if self.second else np.zeros((1, 1))]
        return ex

    def _fold(self) -> None:
        for ex in self.extra:
            if ex:
                self.present += ex[0]
                self.wsum += ex[1]
                if self.second:
                    self.wsq += ex[2]
                ex.clear()

    def _codes(self, cols: list[pa.Array]) -> np.ndarray:
        """Global group code per row (-1 where any group column is null)."""
        n = len(cols[0])
        if len(cols) == 1:  # one column: map the batch dictionary straight to global codes
            col = cols[0].combine_chunks() if isinstance(cols[0], pa.ChunkedArray) else cols[0]
            enc = col.dictionary_encode()
            mapping = np.empty(len(enc.dictionary) + 1, np.int64)
            for j, val in enumerate(enc.dictionary.to_pylist()):
                gi = self.index.get(val)
                if gi is None:
                    gi = self.index[val] = len(self.values)
                    self.values.append(val)
                mapping[j] = gi
            mapping[-1] = -1
            idx = np.asarray(enc.indices.fill_null(len(enc.dictionary)), dtype=np.int64)
            self.dropped += int(enc.indices.null_count)
            self._grow(len(self.values))
            return mapping[idx]
        combined = np.zeros(n, np.int64)
        valid = np.ones(n, bool)
        uniques = []
        for col in cols:
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            enc = col.dictionary_encode()
            idx = enc.indices
            valid &= np.asarray(idx.is_valid())
            codes = np.asarray(idx.fill_null(0), dtype=np.int64)
            dic = enc.dictionary.to_pylist()
            uniques.append(dic)
            combined = combined * max(len(dic), 1) + codes
        self.dropped += int((~valid).sum())
        local, inv = np.unique(combined[valid], return_inverse=True)
        mapping = np.empty(len(local), np.int64)
        for j, key in enumerate(local.tolist()):
            parts = []
            for dic in reversed(uniques):
                key, r = divmod(key, max(len(dic), 1))
                parts.append(dic[r])
            val = parts[0] if self.k == 1 else tuple(reversed(parts))
            gi = self.index.get(val)
            if gi is None:
                gi = self.index[val] = len(self.values)
                self.values.append(val)
            mapping[j] = gi
        out = np.full(n, -1, np.int64)
        out[valid] = mapping[inv]
        self._grow(len(self.values))
        return out

    def add(self, group_cols: list[pa.Array], ids, ws) -> None:
        if len(group_cols[0]) == 0:
            return
        if isinstance(ids, pa.ChunkedArray):
            ids, ws = ids.combine_chunks(), ws.combine_chunks()
        if ids.null_count:  # error rows: no concepts, not counted anywhere
            keep = pa.array(np.asarray(ids.is_valid()))
            ids, ws = ids.filter(keep), ws.filter(keep)
            group_cols = [g.filter(keep) for g in group_cols]
            if len(ids) == 0:
                return
        codes = self._codes(group_cols)
        off = np.asarray(ids.offsets)
        woff = np.asarray(ws.offsets)
        if not np.array_equal(np.diff(off), np.diff(woff)):
            raise InputError("concept_ids and concept_weights have different lengths in some rows")
        cids = np.asarray(ids.values)[off[0]:off[-1]]
        w = np.asarray(ws.values)[woff[0]:woff[-1]]
        C = self.C
        if cids.size and (int(cids.min()) < 0 or int(cids.max()) >= C):
            raise InputError(f"concept ids outside the concepts table (0..{C - 1}) in images.concept_ids")
        ok_rows = codes >= 0
        self.n += np.bincount(codes[ok_rows], minlength=self.cap)
        if not cids.size:
            return
        kernel = _numba_kernel()
        if kernel is not None:  # one fused pass (optional accelerator), rows split over threads
            rel = off - off[0]
            T = self.threads if len(codes) >= 4096 else 1
            cuts = np.linspace(0, len(codes), T + 1).astype(np.int64)

            def run(t):
                a, b = cuts[t], cuts[t + 1]
                pr, ws_, sq = self._arrays(t)
                kernel(codes[a:b], rel[a:b + 1], cids, w, C, self.thr, pr.reshape(-1), ws_.reshape(-1),
                       sq.reshape(-1), self.second)

            if T == 1:
                run(0)
            else:
                for t in range(1, T):
                    self._arrays(t)  # allocate in this thread
                futs = [_pool().submit(run, t) for t in range(1, T)]
                run(0)
                for f in futs:
                    f.result()
            return
        rep = np.repeat(codes, np.diff(off))
        if not ok_rows.all():
            m = rep >= 0
            rep, cids, w = rep[m], cids[m], w[m]
        key = rep * C + cids
        size = self.cap * C
        self.wsum += np.bincount(key, weights=w, minlength=size).reshape(self.cap, C)
        if self.second:
            self.wsq += np.bincount(key, weights=np.square(w, dtype=np.float64), minlength=size).reshape(self.cap, C)
        if self.thr > 0:
            key = key[w > self.thr]
        self.present += np.bincount(key, minlength=size).reshape(self.cap, C)

    def result(self, engine: str) -> Crosstab:
        self._fold()
        G = len(self.values)
        order = np.array(sorted(range(G), key=lambda i: _sort_key(self.values[i])), dtype=np.int64)
        return Crosstab(groups=[self.values[i] for i in order], n=self.n[:G][order],
                        present=self.present[:G][order], weight_sum=self.wsum[:G][order],
                        weight_sq=None if self.wsq is None else self.wsq[:G][order], min_weight=self.min_weight,
                        dropped_null_groups=self.dropped, engine=engine)


_POOL: list = []


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("LANCE_CONCEPTS_THREADS", "0"))) if os.environ.get(
            "LANCE_CONCEPTS_THREADS") else max(1, min(os.cpu_count() or 1, 4))
    except ValueError:
        return 1


def _pool():
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=max(1, _threads() - 1), thread_name_prefix="lc-crosstab"))
    return _POOL[0]


def optional_kernel(build):
    """Memoised ``build(numba)`` -> a jitted function, or None when numba is missing, broken or turned
    off (LANCE_CONCEPTS_NUMBA=0): numba is optional and every kernel has a numpy path with the same
    numbers."""
    cache: list = []

    def get():
        if not cache:
            kernel = None
            if os.environ.get("LANCE_CONCEPTS_NUMBA", "1") not in ("0", "false", "no"):
                try:
                    import numba

                    kernel = build(numba)
                except Exception:  # numba missing or broken: the numpy path
                    kernel = None
            cache.append(kernel)
        return cache[0]

    get.__doc__ = build.__doc__
    return get


def _build_crosstab_kernel(numba):
    """The fused crosstab kernel when numba is installed (it is optional: numpy's bincount gives the
    same numbers, about 2-3x slower). LANCE_CONCEPTS_NUMBA=0 turns it off."""

    @numba.njit(cache=True, nogil=True)
    def _k(codes, off, cids, w, C, thr, present, wsum, wsq, second):  # pragma: no cover - jitted
        for i in range(codes.shape[0]):
            g = codes[i]
            if g < 0:
                continue
            base = g * C
            for j in range(off[i], off[i + 1]):
                k = base + cids[j]
                x = w[j]
                if x > thr:
                    present[k] += 1
                xd = np.float64(x)  # squares in float64, as the numpy path (float32 loses ~1e-8)
                wsum[k] += xd
                if second:
                    wsq[k] += xd * xd

    return _k


_numba_kernel = optional_kernel(_build_crosstab_kernel)


def _sort_key(v):
    if isinstance(v, tuple):
        return tuple(_sort_key(x) for x in v)
    return (v is None, str(type(v)), v)


def _window_sql(col_sql: str, every: str | None) -> str:
    if every is None:
        return col_sql
    if every not in WINDOWS:
        raise InputError(f"--every must be one of {', '.join(WINDOWS)}; got {every!r}")
    return f"date_trunc('{every}', {col_sql})"


def _truncate(arr: pa.Array, every: str) -> pa.Array:
    """pyarrow equivalent of DuckDB date_trunc(every, col) for timestamp/date columns."""
    import pyarrow.compute as pc

    if pa.types.is_date(arr.type):
        arr = arr.cast(pa.timestamp("us"))
    kw = {"week_starts_monday": True} if every == "week" else {}
    return pc.floor_temporal(arr, multiple=1, unit=every, **kw)


def concept_crosstab(con, group: str | Sequence[str] | None = None, *, every: str | None = None,
                     group_sql: str | None = None, where: str | None = None,
                     params: Mapping[str, Any] | None = None, min_weight: float = 0.0,
                     second_moment: bool = False, engine: str = "auto", batch_rows: int = 1 << 17) -> Crosstab:
    """Aggregate the concept lists of ``images`` per group in one pass.

    ``group``: one column name or several (validated against ``images``); with ``every`` the first
    one is truncated to day/week/month/quarter/year windows (DuckDB ``date_trunc`` semantics, weeks
    start on Monday). ``group_sql``: instead, any SQL expression over ``images`` (caller-built;
    never from untrusted text). ``where``: an extra SQL condition with ``$`` parameters in ``params``.

    The sparse group-by runs in numpy (``bincount`` over group * n_concepts + concept id): one pass
    over the parallel lists, no unnest and no hash table. ``engine="lance"`` reads the columns
    straight from the Lance dataset (the default when there is no ``where`` / ``group_sql`` and the
    table is not materialized); ``engine="duckdb"`` lets DuckDB evaluate the expressions and filter;
    ``engine="rollup"`` reads the pre-aggregated ``<table>_rollup`` (:mod:`lance_concepts.rollup`),
    which ``"auto"`` uses first whenever it is up to date and can answer (no ``where``, threshold 0).
    DuckDB's own ``unnest ... GROUP BY`` gives the same numbers (the ``sql/`` queries; the tests
    compare them) and is several times slower at a million images (BENCHMARKS.md).
    """
    import duckdb

    st = _state(con)
    cols = [group] if isinstance(group, str) else list(group or [])
    if (not cols) == (group_sql is None):
        raise InputError("concept_crosstab needs group columns or group_sql")
    for c in cols:
        check_column(con, c, what="group column")
    ds = st.sources.get("images")
    if engine in ("auto", "rollup") and where is None and group_sql is None and ds is not None:
        from .rollup import load_crosstab, rollup_table_name

        ct = load_crosstab(ds, st.sources.get(rollup_table_name(st.table)), cols, every, n_concepts=st.names.size,
                           min_weight=min_weight, second_moment=second_moment)
        if ct is not None:
            return ct
    if engine == "rollup":
        raise InputError("the rollup cannot answer this query (missing or out of date, a where condition, "
                         "min_weight > 0, or a grouping it does not hold): run `lance-concepts rollup`")
    acc = _Accumulator(st.names.size, max(len(cols), 1), min_weight, second_moment)
    use_lance = (engine == "lance" or (engine == "auto" and not st.materialized and where is None
                                        and group_sql is None and ds is not None))
    if use_lance and every is not None:
        t = ds.schema.field(cols[0]).type
        use_lance = pa.types.is_timestamp(t) or pa.types.is_date(t)
    if use_lance:
        if every is not None and every not in WINDOWS:
            raise InputError(f"--every must be one of {', '.join(WINDOWS)}; got {every!r}")
        need = list(dict.fromkeys(cols + ["concept_ids", "concept_weights"]))
        for b in ds.to_batches(columns=need, batch_size=batch_rows):
            gcols = [b.column(c) for c in cols]
            if every is not None:
                gcols[0] = _truncate(gcols[0], every)
            acc.add(gcols, b.column("concept_ids"), b.column("concept_weights"))
        return acc.result("lance")
    if group_sql is None:
        exprs = [_window_sql(quote_ident(cols[0]), every)] + [quote_ident(c) for c in cols[1:]]
    else:
        exprs = [group_sql]
    sel = ", ".join(f"{e} AS _g{i}" for i, e in enumerate(exprs))
    q = (f"SELECT {sel}, concept_ids, concept_weights FROM images WHERE concept_ids IS NOT NULL"
         + (f" AND ({where})" if where else ""))
    try:
        reader = _arrow_reader(con, q, params, batch_rows)
        for b in reader:
            acc.add([b.column(i) for i in range(len(exprs))], b.column(len(exprs)), b.column(len(exprs) + 1))
    except duckdb.Error as exc:
        raise _translate(con, exc) from None
    return acc.result("duckdb")
