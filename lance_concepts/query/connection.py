"""DuckDB over the concept tables: views with filter/projection pushdown into Lance and concept macros
(named queries live in :mod:`.named`, the cross-tabulation the reports use in :mod:`.crosstab`).

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
import os
import re
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from ..concepts.names import ConceptNames, UnknownConceptError
from ..errors import InputError
from ..lake.store import companion_tables, postings_current


# ========================================================================================= helpers
def open_connection(db, materialize: bool = False, table: str = "images", storage_options=None):
    """(connection, owned) for a path or URI (``storage_options`` for object stores) or an existing connection."""
    import duckdb

    if isinstance(db, duckdb.DuckDBPyConnection):
        return db, False
    return connect(db, materialize=materialize, table=table, storage_options=storage_options), True


def as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


# per-connection state (the connection object cannot carry attributes)
_STATE: "weakref.WeakKeyDictionary[Any, ConnectionState]" = weakref.WeakKeyDictionary()


@dataclass
class ConnectionState:
    db: str
    table: str
    names: ConceptNames
    sources: dict = field(default_factory=dict)  # view name -> lance dataset
    materialized: bool = False
    has_postings: bool = False
    metadata: dict = field(default_factory=dict)
    last_error: Exception | None = None
    stale_postings: bool = False
    has_concepts: bool = True


class StalePostingsWarning(UserWarning):
    """The postings table no longer matches the images table; queries read the images table instead."""


def connection_state(con) -> ConnectionState:
    try:
        return _STATE[con]
    except (KeyError, TypeError):
        raise InputError("this DuckDB connection was not opened with lance_concepts.connect(db)") from None


def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted (never interpolate user text into SQL any other way)."""
    return '"' + str(name).replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------- tables
def _is_local(db: str) -> bool:
    return "://" not in db or db.startswith("file://")


def lance_tables(db: str, storage_options=None) -> dict[str, Any]:
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
    from ..lake.store import decode_metadata

    return decode_metadata(schema)


def connect(db, *, table: str = "images", materialize: bool = False, include_embeddings: bool = False,
            con=None, storage_options: Mapping[str, str] | None = None, threads: int | None = None):
    """A new in-process DuckDB connection prepared over the LanceDB database ``db`` (see :func:`prepare`).

    ``con``: an existing DuckDB connection to prepare instead (same as ``prepare(con, db, ...)``).
    """
    import duckdb

    return prepare(duckdb.connect() if con is None else con, db, table=table, materialize=materialize,
                   include_embeddings=include_embeddings, storage_options=storage_options, threads=threads)


def prepare(con, db, *, table: str = "images", materialize: bool = False, include_embeddings: bool = False,
            storage_options: Mapping[str, str] | None = None, threads: int | None = None):
    """Add the lance-concepts views and macros to YOUR DuckDB connection ``con``; returns it.

    Views: ``images`` (table ``table``), ``concepts``, the long ``image_concepts`` and every other
    table of ``db`` by name; macros: ``concept_weight``, ``has_concept``, ``top_concepts``,
    ``concept_images``, ``concept_id`` / ``concept_name``. ``materialize`` copies the tables into
    DuckDB memory (``embedding`` columns only with ``include_embeddings``).
    """
    db = os.fspath(db)
    datasets = lance_tables(db, storage_options)
    ctab, ptab = companion_tables(table)
    if table not in datasets:
        near = difflib.get_close_matches(table, list(datasets), n=3)
        have = ", ".join(sorted(datasets)) or "none"
        raise InputError(f"no table {table!r} in {db} (tables: {have})"
                         + (f"; did you mean {', '.join(near)}?" if near else ""))
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    stale = ptab in datasets and not postings_current(datasets[table], datasets[ptab])
    if stale:  # postings that no longer describe the table must never answer: read the table itself
        warnings.warn(StalePostingsWarning(
            f"the concept postings ({ptab}) no longer describe {table!r} (rows changed since they were "
            "written); answering from the images table (slower) until `lance-concepts repair`"), stacklevel=2)
        datasets = {k: v for k, v in datasets.items() if k != ptab}
    aliases = {table: "images", ctab: "concepts", ptab: "image_concepts_raw"}
    st = ConnectionState(db=db, table=table, names=ConceptNames([], []), materialized=materialize,
                    has_postings=ptab in datasets, metadata=table_metadata(datasets[table].schema),
                    stale_postings=stale)
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
    st.has_concepts = ctab in datasets
    if not st.has_concepts:  # every row failed (or no vocabulary yet): SQL over images still answers
        con.execute("CREATE OR REPLACE TABLE concepts (concept_id INTEGER, concept VARCHAR)")
    cn = con.execute("SELECT concept_id, concept FROM concepts ORDER BY concept_id").fetchnumpy()
    st.names = ConceptNames(cn["concept_id"], [str(x) for x in cn["concept"]])
    install_macros(con, st)
    _STATE[con] = st
    return con


def _is_embedding(f: pa.Field) -> bool:
    return pa.types.is_fixed_size_list(f.type)


def install_macros(con, st: ConnectionState) -> None:
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


def require_concepts(con) -> None:
    """Refuse a concept question on a table that has no concepts yet (say why, not 'unknown concept')."""
    st = connection_state(con)
    if not st.has_concepts:
        raise InputError(f"{st.db} has no concepts for {st.table!r} yet: no image was decomposed "
                         "(every row failed, or it was ingested without a vocabulary); "
                         "`lance-concepts sql \"SELECT status, error FROM images\"` shows why")


def concept_names(con) -> ConceptNames:
    return connection_state(con).names


def resolve_concepts(con, names: Iterable[str]) -> list[int]:
    """Concept ids for names (UnknownConceptError with the closest names for any unknown one)."""
    cn = connection_state(con).names
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
def translate_error(con, exc: Exception) -> Exception:
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
        return arrow_table(con, query, params)
    except duckdb.Error as exc:
        raise translate_error(con, exc) from None
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


def sql_relation(con, query: str, params):
    """con.sql, after closing a result the caller left unread on the connection (DuckDB >= 2.0 refuses
    new work while an execute() result is pending; only queries can be pending, so this is safe)."""
    if hasattr(con, "abort"):
        con.abort()  # a no-op when nothing is pending
    return con.sql(query, params=params) if params else con.sql(query)


def arrow_table(con, query: str, params=None) -> pa.Table:
    """Arrow result without the extra copy a DB-API result makes (DuckDB >= 1.4: relation.to_arrow_table)."""
    params = _used_params(query, params)
    rel = sql_relation(con, query, params)
    if rel is None:  # a statement without a result (CREATE ...)
        return pa.table({})
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def arrow_reader(con, query: str, params=None, batch_rows: int = 1 << 17):
    params = _used_params(query, params)
    rel = sql_relation(con, query, params)
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch_rows)
    return rel.fetch_arrow_reader(batch_rows)

