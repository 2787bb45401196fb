"""The LanceDB tables: schema, metadata, batched exactly-once writes, the concepts and postings tables.

One module owns the table layout; everything else reads it. A database is any URI LanceDB accepts
(a local directory by default, ``s3://...`` / ``gs://...`` with ``storage_options``). Tables:

``images`` (name configurable)
    ``id`` string (stable: from the manifest, else a content hash), ``uri`` string, the source's
    metadata columns with their types (timestamps as ``timestamp[us]``), ``embedding``
    fixed_size_list<float32>[d] (RAW CLIP embedding), ``concept_ids`` list<int32> and
    ``concept_weights`` list<float32> (parallel lists, weight-descending, non-zeros only), ``l0``
    int32, ``splice_cosine`` float32, ``status`` ('ok' | 'error'), ``error`` (message or null).
    Error rows have null embedding and concept columns. A LABEL_LIST index on ``concept_ids``
    serves LanceDB ``where()`` prefilters (see :func:`concept_filter`).
``concepts``
    ``concept_id`` int32, ``concept`` string, ``source`` string, ``embedding`` fixed_size_list<float32>[d]
    (the RAW text embedding of the concept).
``image_concepts`` (postings)
    ``image_id`` string, ``concept_id`` int32, ``weight`` float32; BITMAP index on ``concept_id``.

For another image table name ``T`` the companions are ``T_concepts`` and ``T_image_concepts``
(:func:`companion_tables`). The layout was chosen by measurement: BENCHMARKS.md, "Concept table
layout". Provenance lives in the Lance schema metadata of each table under the key
``lance_concepts`` (JSON), read with :func:`read_metadata`.

Writes are merges on ``id`` (``merge_insert("id").when_not_matched_insert_all()``), so a batch that
is committed twice (a re-run after a crash) lands once. Postings are written before their image
rows and upserted on ``(image_id, concept_id)``: a crash between the two commits leaves postings of
images that a re-run writes again, never images without postings.

Concurrent writers: Lance retries conflicting commits, but two concurrent *inserts* of the same key
do not conflict in Lance (both append), so merges alone would let two processes that ingest the
same image at the same moment both insert it. On a local database each batch commit therefore
holds an exclusive file lock (``<db>/_lance_concepts/<table>.lock``) and re-reads the latest
version before merging; on object stores, where there is no lock, :meth:`ImageStore.dedupe` (run
at the end of every ingest) removes such duplicates. Remaining commit conflicts are retried with
backoff and reported (:class:`CommitConflictError`) if they persist.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
import warnings
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError, LanceConceptsError
from ..records import jsonable

__all__ = [
    "METADATA_KEY",
    "IMAGE_COLUMNS",
    "connect",
    "companion_tables",
    "images_schema",
    "concepts_schema",
    "postings_schema",
    "normalise_metadata_field",
    "read_metadata",
    "concept_filter",
    "ImageStore",
    "CommitConflictError",
    "check_compatible",
    "conform",
]

METADATA_KEY = "lance_concepts"
DEFAULT_TABLE = "images"
# columns the store generates; a source's metadata column may not use these names
IMAGE_COLUMNS = ("id", "uri", "embedding", "concept_ids", "concept_weights", "l0", "splice_cosine", "status",
                 "error")
_GENERATED_AFTER_METADATA = IMAGE_COLUMNS[2:]


class CommitConflictError(LanceConceptsError):
    """Concurrent writers kept conflicting after all retries."""


# ------------------------------------------------------------------------------------------ naming
#: The tables derived from an images table. The default table's are unprefixed ("concepts"), those of
#: any other table carry its name ("pets_concepts"); the rollup was always named after its table.
DERIVED_KINDS = ("concepts", "image_concepts", "features", "feature_concepts", "image_features", "rollup",
                 "duplicate_groups")


def derived_table_name(table: str, kind: str) -> str:
    """The one naming rule for the tables that belong to images table ``table``."""
    if kind not in DERIVED_KINDS:
        raise ValueError(f"unknown derived table kind {kind!r}; one of {DERIVED_KINDS}")
    if table == DEFAULT_TABLE and kind != "rollup":
        return kind
    return f"{table}_{kind}"


def companion_tables(table: str = DEFAULT_TABLE) -> tuple[str, str]:
    """(concepts table, postings table) belonging to image table ``table``."""
    return derived_table_name(table, "concepts"), derived_table_name(table, "image_concepts")


def connect(db, storage_options: Mapping[str, str] | None = None):
    """A LanceDB connection for ``db`` (a path or any URI LanceDB accepts), storage options passed through."""
    import lancedb

    if hasattr(db, "open_table"):  # already a connection
        return db
    uri = os.fspath(db) if isinstance(db, os.PathLike) else str(db)
    kwargs = {"storage_options": dict(storage_options)} if storage_options else {}
    return lancedb.connect(uri, **kwargs)


def table_names(conn) -> list[str]:
    try:
        res = conn.list_tables()
        names = getattr(res, "tables", res)
        return list(names)
    except AttributeError:  # older lancedb
        return list(conn.table_names())


# ------------------------------------------------------------------------------------------ schema
def normalise_metadata_field(field: pa.Field) -> pa.Field:
    """The type a source metadata column gets in the table: timestamps/dates as timestamp[us] (UTC,
    tz-naive), dictionaries decoded, large types narrowed, all-null columns as string."""
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        t = pa.timestamp("us")
    elif pa.types.is_large_string(t) or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)):
        t = pa.string()
    elif pa.types.is_large_binary(t):
        t = pa.binary()
    elif pa.types.is_null(t):
        t = pa.string()
    elif pa.types.is_large_list(t):
        t = pa.list_(t.value_type)
    return pa.field(field.name, t, nullable=True)


def images_schema(embed_dim: int, metadata_fields: Sequence[pa.Field] = (),
                  metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """Schema of the images table: id, uri, the metadata columns, then the generated columns."""
    if int(embed_dim) < 1:
        raise InputError(f"embed_dim must be positive, got {embed_dim!r}")
    clash = sorted({f.name for f in metadata_fields} & set(IMAGE_COLUMNS))
    if clash:
        raise InputError(f"metadata column(s) {clash} collide with columns the table generates; rename them")
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("uri", pa.string())]
    fields += [normalise_metadata_field(f) for f in metadata_fields]
    fields += [
        pa.field("embedding", pa.list_(pa.float32(), int(embed_dim))),
        pa.field("concept_ids", pa.list_(pa.int32())),
        pa.field("concept_weights", pa.list_(pa.float32())),
        pa.field("l0", pa.int32()),
        pa.field("splice_cosine", pa.float32()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
    ]
    from .quality import QUALITY_FIELDS  # image quality columns (lake/quality.py); metadata names win

    taken = {f.name for f in fields}
    fields += [f for f in QUALITY_FIELDS if f.name not in taken]
    return pa.schema(fields, metadata=_encode_metadata(metadata) if metadata is not None else None)


def concepts_schema(embed_dim: int, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    return pa.schema(
        [
            pa.field("concept_id", pa.int32(), nullable=False),
            pa.field("concept", pa.string()),
            pa.field("source", pa.string()),
            pa.field("embedding", pa.list_(pa.float32(), int(embed_dim))),
        ],
        metadata=_encode_metadata(metadata) if metadata is not None else None,
    )


def postings_schema(metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("concept_id", pa.int32(), nullable=False),
            pa.field("weight", pa.float32()),
        ],
        metadata=_encode_metadata(metadata) if metadata is not None else None,
    )


def _encode_metadata(meta: Mapping[str, Any]) -> dict[bytes, bytes]:
    return {METADATA_KEY.encode(): json.dumps(jsonable(meta), sort_keys=True).encode()}


def decode_metadata(schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def concept_filter(concept_ids: int | Iterable[int], column: str = "concept_ids", *, min_weight: float | None = None,
                   weights_column: str = "concept_weights") -> str:
    """A LanceDB ``where()`` expression "the image has (any of) these concepts" that uses the LABEL_LIST index.

    The literals must be Int32 (``arrow_cast(..., 'Int32')``): with plain integer literals DataFusion
    casts the column to List(Int64) and the index is silently not used (measured: 9x slower at 200k
    rows, BENCHMARKS.md). ``min_weight`` (one concept only) adds a refine on the parallel weight.
    """
    ids = [int(concept_ids)] if np.isscalar(concept_ids) else [int(c) for c in concept_ids]
    if not ids:
        raise InputError("concept_filter needs at least one concept id")
    lits = ", ".join(f"arrow_cast({c}, 'Int32')" for c in ids)
    expr = f"array_has({column}, {lits})" if len(ids) == 1 else f"array_has_any({column}, [{lits}])"
    if min_weight is not None:
        if len(ids) != 1:
            raise InputError("min_weight works with one concept id")
        pos = f"CAST(array_position({column}, arrow_cast({ids[0]}, 'Int32')) AS BIGINT)"
        expr = f"{expr} AND {weights_column}[{pos}] > {float(min_weight)!r}"
    return expr


# ------------------------------------------------------------------------------------------ metadata
def read_metadata(db, table: str = DEFAULT_TABLE, storage_options: Mapping[str, str] | None = None) -> dict:
    """The provenance JSON of ``table`` (model, fingerprint, vocabulary, l1, image mean, versions, ...)."""
    conn = connect(db, storage_options)
    try:
        tbl = conn.open_table(table)
    except Exception as exc:  # lancedb raises ValueError / FileNotFoundError / RuntimeError by version
        raise InputError(f"no table {table!r} in {db}: {exc}") from None
    return decode_metadata(tbl.schema)


_IDENTITY_KEYS = ("model_fingerprint",)
_CONCEPT_KEYS = ("vocabulary_digest", "l1_penalty", "prompt_template")


def check_compatible(existing: Mapping[str, Any], new: Mapping[str, Any], *, table: str = DEFAULT_TABLE,
                     allow_new_concept_version: bool = False) -> str:
    """Compare the provenance of a table with that of an append.

    Returns ``"same"`` (append), or ``"new-concepts"`` (only vocabulary / l1 / template differ and a
    new concept-column version was requested). Raises :class:`InputError` otherwise: embeddings of
    another model never go into the same column.
    """
    if not existing:
        return "same"
    for key in _IDENTITY_KEYS:
        if existing.get(key) and new.get(key) and existing.get(key) != new.get(key):
            raise InputError(
                f"table {table!r} holds embeddings of model {existing.get('model_name')!r} "
                f"(pretrained={existing.get('pretrained')!r}, fingerprint {existing.get(key)}); this run uses "
                f"{new.get('model_name')!r} (pretrained={new.get('pretrained')!r}, fingerprint {new.get(key)}). "
                "Embeddings of different models cannot share a column: ingest into another table (table=...) "
                "or database."
            )
    if existing.get("embed_dim") and new.get("embed_dim") and int(existing["embed_dim"]) != int(new["embed_dim"]):
        raise InputError(f"table {table!r} has {existing['embed_dim']}-d embeddings, this model gives {new['embed_dim']}")
    diffs = []
    for key in _CONCEPT_KEYS:
        a, b = existing.get(key), new.get(key)
        if key == "l1_penalty" and a is not None and b is not None:
            if abs(float(a) - float(b)) > 1e-12:
                diffs.append(f"l1_penalty {a} -> {b}")
        elif key == "vocabulary_digest" and (a or b) and a != b:
            diffs.append(f"vocabulary {existing.get('vocabulary')!r} ({a}) -> {new.get('vocabulary')!r} ({b})")
        elif key == "prompt_template" and a != b and key in existing:
            diffs.append(f"prompt_template {a!r} -> {b!r}")
    if not diffs:
        return "same"
    if allow_new_concept_version:
        return "new-concepts"
    raise InputError(
        f"table {table!r} was decomposed with other concept settings ({'; '.join(diffs)}). Appending would mix "
        "concept weights of different settings. Use the table's settings, or ask for a new concept-column "
        "version (CLI --new-concept-version, Python new_concept_version=True), which recomputes the concept "
        "columns of the existing rows from their stored embeddings first."
    )


def conform(batch: pa.Table, schema: pa.Schema, *, table: str = DEFAULT_TABLE) -> pa.Table:
    """``batch`` with exactly the columns of ``schema`` (missing ones as nulls, types cast; a clear
    error if a cast is impossible), without schema metadata. Used by every writer of image rows."""
    cols = []
    for field in schema:
        if field.name in batch.schema.names:
            col = batch.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise InputError(
                        f"column {field.name!r} has type {col.type} in this source but {field.type} in table "
                        f"{table!r}: {exc}"
                    ) from None
            cols.append(col)
        else:
            cols.append(pa.nulls(batch.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=pa.schema(list(schema), metadata=None))


# ------------------------------------------------------------------------------------------ retries
_RETRYABLE = ("conflict", "retryable", "concurrent", "too many", "commit", "preempted", "version")


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (InputError, KeyboardInterrupt)):
        return False
    msg = str(exc).lower()
    return any(s in msg for s in _RETRYABLE) and "schema" not in msg


def with_retries(fn: Callable[[], Any], what: str, *, attempts: int = 8, base_delay: float = 0.05):
    """Run ``fn``; on a Lance commit conflict retry with jittered exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not _is_retryable(exc) or attempt == attempts:
                if _is_retryable(exc):
                    raise CommitConflictError(
                        f"{what}: commit kept conflicting with concurrent writers after {attempts} attempts "
                        f"({exc}); nothing of this batch was written, re-run to continue"
                    ) from exc
                raise
            time.sleep(base_delay * (2 ** (attempt - 1)) * (0.5 + random.random()))


# ------------------------------------------------------------------------------------------ store
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, dedupe only
    fcntl = None


def _local_lock_path(db_uri: str, table: str) -> str | None:
    """The lock file of a local database, or None for object stores / remote URIs."""
    if not db_uri or ("://" in db_uri and not db_uri.startswith("file://")):
        return None
    path = db_uri[len("file://"):] if db_uri.startswith("file://") else db_uri
    return os.path.join(os.path.abspath(os.path.expanduser(path)), "_lance_concepts", f"{table}.lock")


#: Image-row writes go through the Lance dataset API, which ignores LanceDB's embedding functions,
#: so a table that records lance-concepts-clip for plain-LanceDB text search stays writable.
WRITES_BYPASS_LANCEDB_EMBEDDINGS = True


def _stat(res, key: str) -> int:
    """merge_insert statistics: a dict from pylance, an object from LanceDB."""
    value = res.get(key) if isinstance(res, dict) else getattr(res, key, 0)
    return int(value or 0)


def _latest(tbl) -> None:
    try:
        tbl.checkout_latest()
    except Exception:  # a table handle already at the latest version, or an API without it
        pass


def _delete_duplicates(ds, t: pa.Table, keys: list[str], prefer: tuple[str, str] | None = None) -> int:
    import pyarrow.compute as pc

    if t.num_rows == 0:
        return 0
    counts = t.group_by(keys).aggregate([(keys[0], "count")])
    dup = counts.filter(pc.greater(counts[f"{keys[0]}_count"], 1))
    if dup.num_rows == 0:
        return 0
    dupkeys = set(zip(*[dup.column(k).to_pylist() for k in keys]))
    rows = [r for r in t.to_pylist() if tuple(r[k] for k in keys) in dupkeys]
    best: dict = {}
    for r in rows:
        key = tuple(r[k] for k in keys)
        rank = (0 if prefer and r.get(prefer[0]) == prefer[1] else 1, r["_rowid"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, r["_rowid"])
    keep = {v[1] for v in best.values()}
    drop = [r["_rowid"] for r in rows if r["_rowid"] not in keep]
    for i in range(0, len(drop), 1000):
        ds.delete("_rowid IN (" + ",".join(str(int(x)) for x in drop[i:i + 1000]) + ")")
    return len(drop)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ImageStore:
    """The images table of one database plus its concepts and postings tables."""

    def __init__(self, db, table: str = DEFAULT_TABLE, storage_options: Mapping[str, str] | None = None):
        if not table or any(ch in str(table) for ch in "/\\ "):
            raise InputError(f"invalid table name {table!r}")
        if hasattr(db, "open_table"):  # a LanceDB connection
            self.db_uri = str(getattr(db, "uri", "") or "")
        else:
            self.db_uri = db if isinstance(db, str) else os.fspath(db) if isinstance(db, os.PathLike) else str(db)
        self.storage_options = dict(storage_options or {})
        self.conn = connect(db, storage_options)
        self.name = table
        self.concepts_name, self.postings_name = companion_tables(table)
        self._tbl = None
        self._postings = None
        self.lock_path = _local_lock_path(self.db_uri, table)

    @contextlib.contextmanager
    def write_lock(self):
        """Exclusive across processes and threads for local databases (no-op on object stores)."""
        if self.lock_path is None or fcntl is None:
            yield
            return
        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        with open(self.lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- open / create --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.name in table_names(self.conn)

    @property
    def table(self):
        if self._tbl is None:
            try:
                self._tbl = self.conn.open_table(self.name)
            except Exception as exc:
                raise InputError(f"no table {self.name!r} in {self.db_uri}: {exc}") from None
        return self._tbl

    def refresh(self):
        self._tbl = None
        self._postings = None
        return self

    def create_or_open(self, schema: pa.Schema):
        """Open the table, or create it with ``schema`` (another process creating it first is fine)."""
        if not self.exists():
            try:
                self._tbl = self.conn.create_table(self.name, schema=schema)
            except Exception as exc:
                if "exist" not in str(exc).lower():
                    raise
                self._tbl = None  # lost the race: someone else created it
        return self.table

    def _open_or_create(self, name: str, schema: pa.Schema):
        if name not in table_names(self.conn):
            try:
                return self.conn.create_table(name, schema=schema)
            except Exception as exc:
                if "exist" not in str(exc).lower():
                    raise
        return self.conn.open_table(name)

    @property
    def postings(self):
        if self._postings is None:
            self._postings = self._open_or_create(self.postings_name, postings_schema())
        return self._postings

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    def count(self, where: str | None = None) -> int:
        return int(self.table.count_rows(where) if where else self.table.count_rows())

    # -- metadata -------------------------------------------------------------------------------
    def metadata(self) -> dict:
        self.refresh()
        return decode_metadata(self.table.schema)

    def write_metadata(self, meta: Mapping[str, Any], *, tables: Sequence[str] | None = None) -> None:
        """Replace the provenance JSON on the images table (and, by default, on the companion tables)."""
        payload = {METADATA_KEY: json.dumps(jsonable({**meta, "updated_at": utc_now()}), sort_keys=True)}
        names = list(tables) if tables is not None else [self.name, self.concepts_name, self.postings_name]
        present = set(table_names(self.conn))
        with self.write_lock():
            for name in names:
                if name not in present:
                    continue
                ds = self.conn.open_table(name).to_lance()
                with_retries(lambda ds=ds: ds.update_schema_metadata(payload), f"metadata of {name}")
        self.refresh()

    # -- schema evolution -----------------------------------------------------------------------
    def align(self, batch: pa.Table) -> pa.Table:
        """Cast ``batch`` to the table schema: missing columns become nulls, new metadata columns are
        added to the table (all-null for existing rows), types are cast (clear error if impossible)."""
        schema = self.table.schema
        have = set(schema.names)
        new_fields = [normalise_metadata_field(batch.schema.field(n)) for n in batch.schema.names if n not in have]
        if new_fields:
            with_retries(lambda: self.table.add_columns(new_fields), f"add columns to {self.name}")
            self.refresh()
            schema = self.table.schema
        return conform(batch, schema, table=self.name)

    # -- reads ----------------------------------------------------------------------------------
    def existing(self, columns: Sequence[str] = ("id", "uri", "status")) -> pa.Table:
        """The given columns of every row (used to skip what is already there)."""
        if not self.exists():
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        cols = [c for c in columns if c in self.table.schema.names]
        return self.table.to_lance().to_table(columns=cols)

    def ids_present(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        found = set()
        ds = self.table.to_lance()
        for i in range(0, len(ids), 2000):
            chunk = ids[i:i + 2000]
            lits = ",".join("'" + s.replace("'", "''") + "'" for s in chunk)
            found.update(ds.to_table(columns=["id"], filter=f"id IN ({lits})").column("id").to_pylist())
        return found

    # -- postings freshness ---------------------------------------------------------------------
    def postings_are_current(self) -> bool:
        if self.postings_name not in table_names(self.conn):  # created with the first batch
            return not self.exists() or self.count() == 0
        _latest(self.table)
        _latest(self.postings)
        return postings_current(self.table.to_lance(), self.postings.to_lance())

    def mark_postings(self, was_current: bool = True) -> None:
        """Mark the postings current after a write that kept them in step (only if they were before)."""
        if was_current and self.postings_name in table_names(self.conn):
            _latest(self.table)
            _latest(self.postings)
            with_retries(lambda: mark_postings_current(self.table.to_lance(), self.postings.to_lance()),
                         f"mark {self.postings_name}")

    # -- writes ---------------------------------------------------------------------------------
    def write_batch(self, rows: pa.Table, postings: pa.Table | None = None, *, retry_errors: bool = False) -> dict:
        """Commit one batch exactly once: postings first (upsert), then the image rows (merge on id).

        Existing rows are left alone, except error rows when ``retry_errors`` (then replaced).
        Returns ``{"inserted": n, "updated": n}``.
        """
        if rows.num_rows == 0:
            return {"inserted": 0, "updated": 0}
        ids = rows.column("id")
        if len(pa.compute.unique(ids)) != rows.num_rows:
            raise InputError("a write batch has duplicate ids")
        with self.write_lock():
            was_current = self.postings_are_current()
            if postings is not None and postings.num_rows:
                p = postings.select(["image_id", "concept_id", "weight"]).cast(postings_schema())
                ptbl = self.postings

                def merge_postings():
                    _latest(ptbl)
                    return (ptbl.merge_insert(["image_id", "concept_id"]).when_matched_update_all()
                            .when_not_matched_insert_all().execute(p))

                with_retries(merge_postings, f"write postings to {self.postings_name}")
            _latest(self.table)
            data = self.align(rows)
            tbl = self.table

            def merge_rows():
                # Through the Lance dataset, not LanceDB's table API: error rows carry a null
                # embedding on purpose (LanceDB calls null vectors "bad"), and LanceDB would run a
                # recorded embedding function (lance-concepts-clip) on every write.
                _latest(tbl)
                b = tbl.to_lance().merge_insert("id")
                if retry_errors:
                    b = b.when_matched_update_all(condition="target.status = 'error'")
                return b.when_not_matched_insert_all().execute(data)

            res = with_retries(merge_rows, f"write rows to {self.name}")
            _latest(tbl)
            self.mark_postings(was_current)
        return {"inserted": int(_stat(res, "num_inserted_rows")), "updated": int(_stat(res, "num_updated_rows"))}

    def dedupe(self, postings: bool = False) -> int:
        """Delete duplicate ids (keeping an 'ok' row, else the first); with ``postings`` also duplicate
        (image_id, concept_id) postings. Returns the number of rows removed."""
        removed = 0
        with self.write_lock():
            was_current = postings and self.postings_are_current()
            _latest(self.table)
            ds = self.table.to_lance()
            t = ds.to_table(columns=["id", "status"], with_row_id=True)
            removed += _delete_duplicates(ds, t, ["id"], prefer=("status", "ok"))
            if postings and self.postings_name in table_names(self.conn):
                _latest(self.postings)
                pds = self.postings.to_lance()
                pt = pds.to_table(columns=["image_id", "concept_id"], with_row_id=True)
                removed += _delete_duplicates(pds, pt, ["image_id", "concept_id"])
            self.mark_postings(was_current)
        self.refresh()
        return removed

    def delete(self, where: str) -> None:
        with_retries(lambda: self.table.delete(where), f"delete from {self.name}")

    def delete_postings(self, where: str) -> None:
        if self.postings_name in table_names(self.conn):
            with_retries(lambda: self.postings.delete(where), f"delete from {self.postings_name}")

    def write_concepts(self, concepts: Sequence[str], embeddings: np.ndarray, source: str,
                       meta: Mapping[str, Any] | None = None) -> None:
        """(Re)write the concepts table: one row per vocabulary entry, id = position."""
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if emb.ndim != 2 or emb.shape[0] != len(concepts):
            raise InputError(f"{len(concepts)} concepts but embeddings of shape {emb.shape}")
        schema = concepts_schema(emb.shape[1], meta)
        tbl = pa.Table.from_arrays(
            [
                pa.array(np.arange(len(concepts), dtype=np.int32)),
                pa.array(list(concepts), pa.string()),
                pa.array([source] * len(concepts), pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
            ],
            schema=schema,
        )
        mode = "overwrite" if self.concepts_name in table_names(self.conn) else "create"
        with_retries(lambda: self.conn.create_table(self.concepts_name, tbl, mode=mode), f"write {self.concepts_name}")

    def replace_postings(self, batches: Iterable[pa.Table]) -> int:
        """Overwrite the postings table with ``batches`` (one new Lance version). Returns the row count."""
        schema = postings_schema()

        def gen():
            for b in batches:
                if b.num_rows:
                    yield from b.cast(schema).to_batches()

        reader = pa.RecordBatchReader.from_batches(schema, gen())
        tbl = self.conn.create_table(self.postings_name, reader, mode="overwrite")  # a stream: no retry
        self._postings = tbl
        self.mark_postings()  # rebuilt from the images table as it is now (decompose, repair)
        return int(tbl.count_rows())

    def update_concept_columns(self, batches: Iterable[pa.Table]) -> int:
        """Replace concept_ids / concept_weights / l0 / splice_cosine of existing rows (matched on id)
        in ONE commit, streaming ``batches`` (tables with id + those columns)."""
        schema = pa.schema([self.table.schema.field(n) for n in
                            ("id", "concept_ids", "concept_weights", "l0", "splice_cosine")])

        def gen():
            for b in batches:
                if b.num_rows:
                    yield from b.select(schema.names).cast(schema).to_batches()

        reader = pa.RecordBatchReader.from_batches(schema, gen())
        with self.write_lock():
            tbl = self.table
            _latest(tbl)
            res = tbl.to_lance().merge_insert("id").when_matched_update_all().execute(reader)
            _latest(tbl)
        self.refresh()
        return int(_stat(res, "num_updated_rows"))

    # -- indexes --------------------------------------------------------------------------------
    def ensure_indexes(self, *, force: bool = False) -> list[str]:
        """LABEL_LIST on images.concept_ids, BTREE on images.id, BITMAP on postings.concept_id.

        Indexes are (re)built when missing or when more than 10% of the rows are unindexed; rows added
        since the last build are still found (Lance scans the unindexed part)."""
        from lancedb.index import Bitmap, BTree, LabelList

        built = []
        plan = [(self.table, "concept_ids", LabelList()), (self.table, "id", BTree())]
        if self.postings_name in table_names(self.conn):
            plan.append((self.postings, "concept_id", Bitmap()))
        for tbl, col, cfg in plan:
            n = tbl.count_rows()
            if n == 0:
                continue
            have = {tuple(ix.columns): ix for ix in tbl.list_indices()}
            ix = have.get((col,))
            stale = False
            if ix is not None:
                try:
                    st = tbl.index_stats(ix.name)
                    stale = (getattr(st, "num_unindexed_rows", 0) or 0) > 0.1 * n
                except Exception:
                    stale = False
            if ix is None or stale or force:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with_retries(lambda tbl=tbl, col=col, cfg=cfg: tbl.create_index(col, config=cfg, replace=True),
                                 f"index {col}")
                built.append(f"{tbl.name}.{col}")
        self.refresh()
        return built


# ------------------------------------------------------------------------------- postings freshness
#: Schema-metadata key of the postings table: the fingerprints of the images table and of the
#: postings themselves when they were last known to describe each other.
POSTINGS_OF_KEY = b"lance_concepts_postings_of"


def data_fingerprint(ds) -> str:
    """A digest of the Lance dataset's data fragments: it changes with every write that adds, changes
    or deletes rows, and not with index builds or schema-metadata updates."""
    import hashlib

    h = hashlib.sha256()
    for f in ds.get_fragments():
        m = f.metadata
        h.update(json.dumps({"id": m.id, "rows": m.physical_rows,
                             "files": sorted(d.path for d in m.files),
                             "deletion": str(m.deletion_file)}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def postings_current(images_ds, postings_ds) -> bool:
    """Whether the postings still describe the images table: a delete or update done in plain LanceDB
    (or an interrupted write) changes the images fingerprint, and the postings would then answer
    for rows that are gone, so readers fall back to the images table until ``repair``."""
    raw = (postings_ds.schema.metadata or {}).get(POSTINGS_OF_KEY)
    if raw is None:  # never marked: only two empty tables are trivially consistent
        return postings_ds.count_rows() == 0 and images_ds.count_rows() == 0
    mark = json.loads(raw)
    return mark.get("images") == data_fingerprint(images_ds) and mark.get("postings") == data_fingerprint(postings_ds)


def mark_postings_current(images_ds, postings_ds) -> None:
    """Record that the postings describe the images table as it is now (callers know they do)."""
    mark = {"images": data_fingerprint(images_ds), "postings": data_fingerprint(postings_ds)}
    postings_ds.update_schema_metadata({POSTINGS_OF_KEY.decode(): json.dumps(mark)})


def compact_fragments(store: ImageStore, min_fragments: int = 16) -> None:
    was_current = store.postings_are_current()
    for tbl in (store.table, store.postings):
        try:
            nfrag = len(tbl.to_lance().get_fragments())
        except Exception:
            continue
        if nfrag >= min_fragments:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tbl.compact_files()
    store.refresh()
    store.mark_postings(was_current)


def check_db_writable(db, what: str = "write") -> None:
    """Refuse a read-only local database before any work: one clear line instead of a Lance IO
    traceback after minutes of computing (object stores are checked by the write itself)."""
    if not isinstance(db, (str, os.PathLike)):
        return  # an open connection: its writes report for themselves
    db = os.fspath(db)
    if "://" in db and not db.startswith("file://"):
        return
    root = db[len("file://"):] if db.startswith("file://") else db
    if not os.path.isdir(root):
        return  # not there yet: the command itself says so
    bad = [p for p in [root] + [os.path.join(root, n) for n in os.listdir(root) if n.endswith(".lance")]
           if not os.access(p, os.W_OK)]
    if bad:
        raise InputError(f"cannot {what}: {bad[0]} is read-only (permission denied)")
