"""The vector index and the scalar indexes the concept filters use, with parameters chosen from the table size.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from ..errors import InputError
from .registration import EMBEDDING_FUNCTION_NAME, embedding_function_metadata, lancedb_registration_ready
from .table import INDEX_METADATA_KEY, ConceptTable
from .where import quote_identifier

# =====================================================================================================
# Vector index parameters
# =====================================================================================================
DEFAULT_INDEX_TYPE = "IVF_PQ"
SMALL_TABLE_ROWS = 5_000  # below this an ANN index buys nothing: exact search (IVF_FLAT, one partition)
INDEX_TYPES = ("auto", "IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT")


def index_params(num_rows: int, dim: int, index_type: str = "auto") -> dict:
    """Index type and build/query parameters for a table of ``num_rows`` vectors of ``dim`` dimensions.

    ``auto``: exact search (``IVF_FLAT`` with one partition, i.e. a flat scan with the cosine metric
    recorded in the index) below :data:`SMALL_TABLE_ROWS` rows, :data:`DEFAULT_INDEX_TYPE` above.
    The measurements behind the choices are in BENCHMARKS.md, "Retrieval index".
    """
    kind = str(index_type or "auto").upper()
    if kind not in {t.upper() for t in INDEX_TYPES}:
        raise InputError(f"unknown index type {index_type!r}: use one of {', '.join(INDEX_TYPES)}")
    num_rows, dim = int(num_rows), int(dim)
    if kind == "AUTO":
        kind = "IVF_FLAT" if num_rows < SMALL_TABLE_ROWS else DEFAULT_INDEX_TYPE
    if kind == "IVF_FLAT":
        return {"index_type": "IVF_FLAT", "num_partitions": 1, "nprobes": 1}
    if num_rows < 256:
        raise InputError(f"{kind} needs at least 256 rows with embeddings; this table has {num_rows} "
                         "(use index type auto or IVF_FLAT)")
    if kind == "IVF_PQ":
        partitions = int(max(1, min(4096, round(math.sqrt(num_rows)))))
        sub = next((s for s in (dim // 16, dim // 8, dim // 4, dim // 2, dim) if s >= 1 and dim % s == 0), 1)
        return {"index_type": "IVF_PQ", "num_partitions": partitions, "num_sub_vectors": sub,
                "nprobes": max(1, round(partitions * 0.05)), "refine_factor": 10}
    partitions = int(max(1, round(num_rows / 100_000)))
    return {"index_type": "IVF_HNSW_SQ", "num_partitions": partitions, "m": 20, "ef_construction": 150,
            "nprobes": max(1, partitions), "ef": 200}


def build_vector_index(tbl, column: str, params: dict) -> None:
    """Build (replace) the ANN index on ``column`` of LanceDB table ``tbl`` from :func:`index_params`."""
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    kind = params.get("index_type")
    if kind is None:
        return
    if kind == "IVF_FLAT":
        config = IvfFlat(distance_type="cosine", num_partitions=params["num_partitions"])
    elif kind == "IVF_PQ":
        config = IvfPq(distance_type="cosine", num_partitions=params["num_partitions"],
                       num_sub_vectors=params["num_sub_vectors"])
    elif kind == "IVF_HNSW_SQ":
        config = HnswSq(distance_type="cosine", num_partitions=params["num_partitions"], m=params["m"],
                        ef_construction=params["ef_construction"])
    else:
        raise InputError(f"unknown index type {kind!r}")
    tbl.create_index(column, config=config, replace=True)


SCALAR_INDEX_KINDS = {"concept_ids": "LABEL_LIST", "concept_id": "BTREE", "image_id": "BTREE", "id": "BTREE"}


def build_scalar_indexes(tbl, columns: Iterable[str], kinds: Mapping[str, str] | None = None) -> dict:
    """Scalar indexes for filters: LABEL_LIST on concept lists, BTREE on ids, BITMAP on low-cardinality text.

    Returns ``{column: index kind}``.
    """
    import pyarrow as pa
    from lancedb.index import Bitmap, BTree, LabelList

    kinds = dict(SCALAR_INDEX_KINDS, **(kinds or {}))
    made = {}
    schema = tbl.schema
    for col in columns:
        if col not in schema.names:
            continue
        t = schema.field(col).type
        kind = kinds.get(col)
        if kind is None:
            if pa.types.is_list(t) or pa.types.is_large_list(t):
                kind = "LABEL_LIST"
            elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
                kind = "BITMAP"  # labels, splits, status: few distinct values
            else:
                kind = "BTREE"
        config = {"LABEL_LIST": LabelList, "BTREE": BTree, "BITMAP": Bitmap}[kind]()
        tbl.create_index(col, config=config, replace=True)
        made[col] = kind
    return made


# =====================================================================================================
# Index
# =====================================================================================================
def _metadata_index_plan(t: ConceptTable, skip: Iterable[str]) -> dict:
    """Scalar indexes for the metadata columns filters use: BITMAP for low-cardinality text/bools,
    BTREE for numbers and timestamps."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plan = {}
    skip = set(skip)
    for f in t.schema:
        if f.name in skip:
            continue
        ty = f.type
        if pa.types.is_boolean(ty):
            plan[f.name] = "BITMAP"
        elif pa.types.is_string(ty) or pa.types.is_large_string(ty):
            col = t.tbl.to_lance().to_table(columns=[f.name]).column(f.name)
            if len(pc.unique(col)) <= 1000:
                plan[f.name] = "BITMAP"
        elif pa.types.is_integer(ty) or pa.types.is_floating(ty) or pa.types.is_timestamp(ty) or pa.types.is_date(ty):
            plan[f.name] = "BTREE"
    return plan


def index(db, table: str = "images", *, index_type: str = "auto", column: str = "embedding",
          scalar: bool = True, lancedb_search: bool | str = "auto", storage_options=None) -> dict:
    """Build the ANN index on ``column`` and the scalar indexes the filters use.

    ``index_type``: ``auto`` (exact ``IVF_FLAT`` below 5,000 rows, else IVF_PQ), ``IVF_PQ``,
    ``IVF_HNSW_SQ`` or ``IVF_FLAT``; parameters come from :func:`index_params`. Scalar indexes:
    LABEL_LIST on ``concept_ids``, BTREE on ``id``, the postings table's concept index (store.py), and
    BITMAP/BTREE on the metadata columns.

    ``lancedb_search``: record the table's CLIP model in LanceDB's embedding-function metadata, so that
    plain lancedb users can ``table.search("text")`` (see :func:`register_embedding_function`).
    ``"auto"`` records it when :func:`lancedb_registration_ready` says the project's writers cope with
    it, ``True`` always, ``False`` never (and removes it). Returns a report dict.
    """
    import json
    import time
    import warnings

    from ..lake.store import IMAGE_COLUMNS, ImageStore, check_db_writable, with_retries

    t = ConceptTable(db, table, storage_options)
    check_db_writable(db, "build indexes")
    dim = t.vector_dim(column)
    n = int(t.tbl.count_rows(f"{quote_identifier(column)} IS NOT NULL"))
    if n == 0:
        raise InputError(f"table {table!r} has no rows with a {column!r} vector to index")
    params = index_params(n, dim, index_type)
    report: dict = {"table": table, "column": column, "rows": n}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_retries(lambda: build_vector_index(t.tbl, column, params), f"index {column}")
    report["vector_index"] = {**params, "build_s": round(time.perf_counter() - t0, 2)}
    if scalar:
        t0 = time.perf_counter()
        built = []
        if "concept_ids" in t.schema.names and "id" in t.schema.names:
            built = ImageStore(t.conn, table).ensure_indexes(force=True)
        plan = _metadata_index_plan(t, skip=set(IMAGE_COLUMNS) - {"l0", "splice_cosine", "status"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for col, kind in plan.items():
                with_retries(lambda col=col, kind=kind: build_scalar_indexes(t.tbl, [col], {col: kind}),
                             f"index {col}")
                built.append(f"{table}.{col}")
        report["scalar_indexes"] = built
        report["scalar_build_s"] = round(time.perf_counter() - t0, 2)
    recorded = t.schema_json(INDEX_METADATA_KEY) or {}
    recorded[column] = {**params, "rows": n}
    payload = {INDEX_METADATA_KEY: json.dumps(recorded, sort_keys=True)}
    if column == "embedding":
        if lancedb_search not in (True, False, "auto"):
            raise InputError(f"lancedb_search must be True, False or 'auto', got {lancedb_search!r}")
        ready, why = lancedb_registration_ready()
        record = bool(t.meta.get("model_name")) and (lancedb_search is True or (lancedb_search == "auto" and ready))
        if record:
            payload["embedding_functions"] = json.dumps(embedding_function_metadata(t.meta, vector_column=column))
            report["embedding_function"] = EMBEDDING_FUNCTION_NAME
        else:
            if (t.schema.metadata or {}).get(b"embedding_functions") is not None:
                payload["embedding_functions"] = None  # removes the key
            report["embedding_function"] = None
            report["embedding_function_note"] = (
                "not recorded: " + ("switched off" if lancedb_search is False else
                                    "the table records no model" if not t.meta.get("model_name") else why))
    ds = t.tbl.to_lance()
    with_retries(lambda: ds.update_schema_metadata(payload), f"metadata of {table}")
    return report
