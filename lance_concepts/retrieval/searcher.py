"""Concept-filtered retrieval, concept arithmetic on queries, concept editing and the vector index.

Retrieval
    ``search(db, "a dog on the beach", where="concept('sand') > 0.1 AND label = 'dog'", k=20)``
    encodes the query with the table's CLIP model, compiles the ``where`` condition (our own small
    filter language, parsed here: column names and concept names are checked against the table, every
    literal is validated against its column's type and re-rendered, nothing the user typed is spliced
    into the filter string) and runs a LanceDB vector search with the condition as a *prefilter*.

    A concept condition such as ``concept('sand') > 0.1`` becomes
    ``array_has_any(concept_ids, [id]) AND <weight of id> > 0.1``: the first half is answered by the
    LABEL_LIST index on ``concept_ids`` (built by :func:`index`), the second is evaluated exactly on
    those candidates only. The search lets the IVF stage probe further partitions until ``k`` rows
    that pass the filter are found, so a filter that matches few rows returns all of them and one that
    matches none returns an empty table.

Concept arithmetic
    ``without=["snow"]`` / ``with_=["sand"]``: the query embedding is decomposed with SpLiCE over the
    table's vocabulary, the concept's weight is zeroed (or raised), and the recomposed embedding is
    the query.

Editing
    :func:`edit` zeroes concepts in every row's stored decomposition, recomposes, writes the result as
    a new vector column and reports zero-shot accuracy per label column before and after (SpLiCE's
    model-editing study).

Index
    :func:`index` builds the ANN index on the embedding column (parameters chosen from the table size,
    see :func:`index_params`) and the scalar indexes the concept filters use.

LanceDB integration
    The table's CLIP model is registered in LanceDB's embedding-function registry under the name
    ``lance-concepts-clip`` (see :func:`register_embedding_function`), and :func:`index` records it in
    the table's schema metadata with explicit model arguments, so that ``table.search("text")`` works
    for plain ``lancedb`` users once ``lance_concepts`` has been imported.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..errors import InputError
from .index import index_params
from .table import INDEX_METADATA_KEY, ConceptTable, lance_dataset
from .where import compile_where, relax_where


def _vector_query(tbl, vector, *, k: int, where: str | None, params: Mapping, prefilter: bool = True,
                  vector_column: str = "embedding", select: Sequence[str] | None = None):
    """One cosine-distance vector query with the index's query parameters; returns an Arrow table
    with a ``_distance`` column.

    With a filter (a prefilter by default) the IVF stage may probe further partitions, beyond
    ``nprobes``, until ``k`` rows that pass it are found: a selective filter loses nothing to the
    partitions it did not probe.
    """
    import numpy as np

    ds = lance_dataset(tbl)
    nearest = {"column": vector_column, "q": np.asarray(vector, dtype=np.float32), "k": int(k), "metric": "cosine"}
    if params.get("index_type") is None:
        nearest["use_index"] = False
    else:
        if params.get("nprobes"):
            nearest["minimum_nprobes"] = int(params["nprobes"])
            if not where:
                nearest["maximum_nprobes"] = int(params["nprobes"])
        if params.get("refine_factor"):
            nearest["refine_factor"] = int(params["refine_factor"])
        if params.get("ef"):
            nearest["ef"] = int(params["ef"])
    columns = None
    if select is not None:
        columns = list(dict.fromkeys([c for c in select if c != "_distance"] + ["_distance"]))
    return ds.to_table(columns=columns, nearest=nearest, filter=where or None, prefilter=bool(prefilter and where),
                       disable_scoring_autoprojection=columns is not None)


_LANCE_INDEX_TYPES = {"IVFPQ": "IVF_PQ", "IVFHNSWSQ": "IVF_HNSW_SQ", "IVFFLAT": "IVF_FLAT", "IVFSQ": "IVF_SQ",
                      "IVFHNSWPQ": "IVF_HNSW_PQ", "IVFHNSWFLAT": "IVF_HNSW_FLAT", "IVFRQ": "IVF_RQ"}


def query_params(t: ConceptTable, column: str = "embedding", *, nprobes: int | None = None,
                 refine_factor: int | None = None, ef: int | None = None, exact: bool = False) -> dict:
    """Query-time parameters for ``column``: those recorded by :func:`index`, else derived from the index."""
    if exact:
        return {"index_type": None}
    ix = t.vector_index(column)
    if ix is None:
        return {"index_type": None}
    kind = _LANCE_INDEX_TYPES.get(str(ix.index_type).upper().replace("_", ""), str(ix.index_type))
    recorded = (t.schema_json(INDEX_METADATA_KEY) or {}).get(column) or {}
    if recorded.get("index_type") == kind:
        params = dict(recorded)
    elif kind in ("IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT"):
        n = int(getattr(ix, "num_indexed_rows", 0) or t.tbl.count_rows())
        params = index_params(max(n, 256), t.vector_dim(column), kind)
    else:
        params = {"index_type": kind}
    for key, value in (("nprobes", nprobes), ("refine_factor", refine_factor), ("ef", ef)):
        if value is not None:
            if int(value) < 1:
                raise InputError(f"{key} must be a positive integer, got {value!r}")
            params[key] = int(value)
    return params


# =====================================================================================================
# Queries
# =====================================================================================================
def _read_image(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"cannot read the query image {str(path)!r}: {exc}") from None


def _concept_arithmetic(t: ConceptTable, vec, *, centre: str, without: Sequence = (), with_: Sequence = (),
                        with_weight: float | None = None) -> tuple:
    """Decompose ``vec``, zero ``without``, raise ``with_``, recompose in the centred concept space.

    Returns (unit query vector, info dict with the query's concepts before and after)."""
    import numpy as np
    import scipy.sparse as sp

    dec = t.decomposer(centre)
    rm = t.concept_ids(without)
    add = t.concept_ids(with_)
    names = t.concept_names
    W = sp.csr_matrix(dec.decompose(np.asarray(vec, np.float32)[None, :]), dtype=np.float32)
    before = {names[j]: float(w) for j, w in sorted(zip(W.indices, W.data), key=lambda x: -x[1])}
    W = dec.intervene(W, rm).tolil()
    top = float(W.tocsr().max()) if W.nnz else 0.0
    if with_weight is not None and not (math.isfinite(float(with_weight)) and float(with_weight) > 0):
        raise InputError(f"with_weight must be a positive number, got {with_weight!r}")
    w_add = float(with_weight) if with_weight is not None else (top if top > 0 else 1.0)
    for j in add:
        W[0, j] = max(float(W[0, j]), w_add)
    W = W.tocsr()
    after = {names[j]: float(w) for j, w in sorted(zip(W.indices, W.data), key=lambda x: -x[1])}
    info = {
        "query_concepts": before,
        "edited_concepts": after,
        "removed": {names[j]: before.get(names[j], 0.0) for j in rm},
        "added": {names[j]: after.get(names[j], 0.0) for j in add},
        "centre": centre,
    }
    direction = np.asarray(W @ dec.dictionary_.astype(np.float64)).ravel()
    norm = float(np.linalg.norm(direction))
    if norm == 0.0:
        raise InputError("nothing is left of the query after removing "
                         f"{', '.join(names[j] for j in rm)}: its decomposition had no other concept")
    # The query is the recomposition in SpLiCE's centred concept space, normalize(w @ D). SpLiCE adds
    # the image mean back (normalize(. + image_mean)) to land in CLIP's space for zero-shot
    # classification; for ranking by cosine that only adds image_mean . x to every row's score, which
    # favours the most typical images and undoes the removal (measured on the demo set: "without
    # red" still returned 59 red images of 60; with the centred query 25 of 60).
    info["space"] = "centred concept space: normalize(w @ D)"
    return (direction / norm).astype(np.float32), info


def query_vector(db, query: str | None = None, *, image=None, vector=None, without: Sequence = (),
                 with_: Sequence = (), with_weight: float | None = None, table: str = "images",
                 encoder=None, storage_options=None, _t: ConceptTable | None = None) -> tuple:
    """The query embedding for text / an image file / a raw vector, after concept arithmetic.

    Returns ``(vector, info)``; ``info`` lists the query's concepts and what was removed or added.
    """
    import numpy as np

    given = [x is not None for x in (query, image, vector)]
    if sum(given) != 1:
        raise InputError("give exactly one query: text, image= or vector=")
    t = _t or ConceptTable(db, table, storage_options)
    info: dict = {}
    if vector is not None:
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        kind = "image"
    elif image is not None:
        picture = _read_image(image)  # a bad path fails before the model loads
        vec = t.encoder(encoder).encode_images([picture])[0]
        kind = "image"
    else:
        if not isinstance(query, str) or not query.strip():
            raise InputError("the text query is empty")
        fp = t.meta.get("model_fingerprint")
        if encoder is None and fp:  # a query embedded before needs no model (no torch import)
            from ..models.text_cache import cached_text_embeddings

            vec = cached_text_embeddings(fp, [query], lambda: t.encoder(None))[0]
        else:
            vec = t.encoder(encoder).encode_text([query])[0]
        kind = "text"
    if not np.isfinite(vec).all() or not np.any(vec):
        raise InputError("the query vector is zero or not finite")
    if without or with_:
        vec, info = _concept_arithmetic(t, vec, centre="text" if kind == "text" else "image",
                                        without=list(without), with_=list(with_), with_weight=with_weight)
    return vec.astype(np.float32), info


def _visible_columns(schema, vector_column: str) -> list[str]:
    import pyarrow as pa

    out = []
    for f in schema:
        t = f.type
        if f.name in ("concept_ids", "concept_weights") or pa.types.is_fixed_size_list(t) or pa.types.is_list(t) \
                or pa.types.is_large_list(t) or pa.types.is_struct(t) or pa.types.is_binary(t) \
                or pa.types.is_large_binary(t):
            continue
        out.append(f.name)
    return out


def _concept_struct_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("concept", pa.string()), ("weight", pa.float32())]))


def concept_lists(ids_col, weights_col, names: Sequence[str] | None, top: int | None = 10):
    """Parallel id/weight list columns -> list<struct<concept, weight>> (weight-descending, ``top`` each)."""
    import pyarrow as pa

    out = []
    for ids, ws in zip(ids_col.to_pylist(), weights_col.to_pylist()):
        if ids is None:
            out.append(None)
            continue
        pairs = sorted(zip(ids, ws), key=lambda p: -p[1])[: (top if top else None)]
        out.append([{"concept": names[i] if names and i < len(names) else str(i), "weight": w} for i, w in pairs])
    return pa.array(out, _concept_struct_type())


# --- the query plan ----------------------------------------------------------------------------------
EXACT_MAX_ROWS = 1024  # filters that leave at most this many candidate rows are answered by exact search
MAX_OVERFETCH = 1000  # largest candidate list a post-filtered ANN query may ask for


class Searcher:
    """Retrieval over one images table, kept open between queries (the Python API for many queries).

    A Searcher works on the table as it was when opened (schema, indexes, vocabulary); open a new one
    after writing to the table.

    ``Searcher(db).search("a dog on the beach", where="concept('sand') > 0.1", k=20)``; the module
    function :func:`search` opens one per call. Query plan for a filter (see BENCHMARKS.md,
    "Retrieval index"):

    1. Count the rows the filter's *index-answerable relaxation* allows (``concept('sand') > 0.1``
       relaxes to "carries sand"; sub-millisecond from the LABEL_LIST / BITMAP indexes). None: the
       result is empty.
    2. At most :data:`EXACT_MAX_ROWS` candidates: evaluate the exact filter on them and rank the
       survivors by exact cosine similarity (no ANN approximation, nothing lost).
    3. A filter the indexes answer exactly (no weight thresholds): ANN with the filter as a LanceDB
       prefilter, probing further partitions until ``k`` rows are found.
    4. Weight thresholds over many candidates: ANN with the filter applied to an over-fetched
       candidate list (sized from the candidate share); if fewer than ``k`` rows pass, the exact filter
       is evaluated (exact search when few rows pass, else ANN with a full prefilter). Every path
       returns ``k`` rows whenever ``k`` rows pass the filter.
    """

    def __init__(self, db, table: str = "images", *, storage_options=None, encoder=None):
        self.t = ConceptTable(db, table, storage_options)
        self.db = db
        self.table = table
        self._encoder = encoder
        self._resolver = None
        self._rows = None
        self._params: dict = {}
        self.ds = lance_dataset(self.t.tbl)

    @property
    def resolver(self):
        if self._resolver is None and self.t.concept_names is not None:
            self._resolver = self.t.resolver()
        return self._resolver

    def compile(self, where: str | None) -> tuple[str | None, str | None]:
        """(exact filter, index-only relaxation) for a ``where`` condition."""
        flt = compile_where(where, self.t.schema, self.resolver)
        if flt is None:
            return None, None
        return flt, relax_where(where, self.t.schema, self.resolver)

    def _exact(self, vec, k, flt, select, vector_column, rows=None):
        """Exact cosine ranking of the rows that pass ``flt`` (few, by construction), or of ``rows``."""
        import numpy as np
        import pyarrow as pa

        if rows is None:
            cols = list(dict.fromkeys(select + [vector_column]))
            rows = self.ds.to_table(columns=cols, filter=flt)
        vecs = rows.column(vector_column)
        valid = np.asarray(vecs.is_valid().to_numpy(zero_copy_only=False)) if rows.num_rows else np.zeros(0, bool)
        rows = rows.filter(pa.array(valid)) if not valid.all() else rows
        if rows.num_rows == 0:
            return rows.append_column("_distance", pa.array([], pa.float32())).drop_columns([vector_column])
        X = rows.column(vector_column).combine_chunks().values.to_numpy(zero_copy_only=False).reshape(rows.num_rows, -1)
        X = X.astype(np.float64)
        q = np.asarray(vec, np.float64)
        cos = (X @ q) / np.maximum(np.linalg.norm(X, axis=1) * np.linalg.norm(q), 1e-30)
        order = np.argsort(-cos, kind="stable")[:k]
        out = rows.take(pa.array(order)).drop_columns([vector_column])
        return out.append_column("_distance", pa.array((1.0 - cos[order]).astype(np.float32)))

    def _ann(self, vec, k, flt, params, select, vector_column, prefilter=True):
        return _vector_query(self.ds, vec, k=k, where=flt, params=params, prefilter=prefilter,
                             vector_column=vector_column, select=select)

    def _n_rows(self) -> int:
        if self._rows is None:
            self._rows = int(self.ds.count_rows())
        return self._rows

    def plan_and_run(self, vec, k, flt, relaxed, params, select, vector_column) -> tuple:
        """Run one query; returns (arrow table with _distance, description of the plan taken)."""
        if flt is None:
            return self._ann(vec, k, None, params, select, vector_column), "ann" if params.get("index_type") else "flat"
        if params.get("index_type") is None:  # exact=True, or no vector index: a flat scan is exact anyway
            return self._ann(vec, k, flt, params, select, vector_column), "flat with prefilter"
        bound = int(self.ds.count_rows(filter=relaxed)) if relaxed else self._n_rows()
        if bound == 0:
            return self._exact(vec, k, relaxed, select, vector_column), "empty (no row can match)"
        if bound <= EXACT_MAX_ROWS:
            return self._exact(vec, k, flt, select, vector_column), f"exact over <= {bound} candidates"
        if relaxed == flt:
            return self._ann(vec, k, flt, params, select, vector_column), f"ann with index prefilter ({bound} rows)"
        want = int(math.ceil(4 * k * self._n_rows() / bound)) + k
        if want <= MAX_OVERFETCH:
            # the over-fetched list needs little exact re-ranking: about 3x the k * refine_factor
            # candidates of a plain query instead of want * refine_factor (measured: same recall, 2x faster)
            p = dict(params)
            if p.get("refine_factor"):
                p["refine_factor"] = max(2, int(math.ceil(3 * p["refine_factor"] * k / want)))
            res = self._ann(vec, want, flt, p, select, vector_column, prefilter=False)
            if res.num_rows >= k:
                return res.slice(0, k), f"ann top {want}, then filter ({bound} candidates)"
        # evaluate the exact filter, stopping after EXACT_MAX_ROWS + 1 matches; few: rank them exactly
        few = self.ds.to_table(columns=list(dict.fromkeys(select + [vector_column])), filter=flt,
                               limit=EXACT_MAX_ROWS + 1)
        if few.num_rows <= EXACT_MAX_ROWS:
            return self._exact(vec, k, flt, select, vector_column, rows=few), f"exact over {few.num_rows} matching rows"
        return self._ann(vec, k, flt, params, select, vector_column), f"ann with full prefilter ({bound} candidates)"

    def search(self, query: str | None = None, *, image=None, vector=None, where: str | None = None, k: int = 10,
               without: Sequence = (), with_: Sequence = (), with_weight: float | None = None,
               vector_column: str = "embedding", columns: Sequence[str] | None = None, concepts: int = 10,
               nprobes: int | None = None, refine_factor: int | None = None, ef: int | None = None,
               exact: bool = False):
        """See :func:`search`."""
        import json

        import pyarrow as pa

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        t = self.t
        dim = t.vector_dim(vector_column)
        flt, relaxed = self.compile(where)
        vec, info = query_vector(self.db, query, image=image, vector=vector, without=without, with_=with_,
                                 with_weight=with_weight, table=self.table, encoder=self._encoder, _t=t)
        if vec.shape[0] != dim:
            raise InputError(f"the query vector has {vec.shape[0]} dimensions, column {vector_column!r} {dim}")
        visible = _visible_columns(t.schema, vector_column)
        if columns is not None:
            unknown = [c for c in columns if c not in t.schema.names]
            if unknown:
                raise InputError(f"unknown column(s) {unknown}; columns: {', '.join(t.schema.names)}")
            visible = [c for c in ("id", "uri") if c in t.schema.names and c not in columns] + list(columns)
        want_concepts = bool(concepts) and "concept_ids" in t.schema.names and "concept_weights" in t.schema.names
        select = list(dict.fromkeys(visible + (["concept_ids", "concept_weights"] if want_concepts else [])))
        key = (vector_column, nprobes, refine_factor, ef, exact)
        if key not in self._params:
            self._params[key] = query_params(t, vector_column, nprobes=nprobes, refine_factor=refine_factor, ef=ef,
                                             exact=exact)
        params = dict(self._params[key])
        res, plan = self.plan_and_run(vec, k, flt, relaxed, params, select, vector_column)
        dist = res.column("_distance")
        if dist.null_count:  # rows without a vector are never results
            res = res.filter(pa.compute.is_valid(dist))
            dist = res.column("_distance")
        score = pa.compute.subtract(pa.scalar(1.0, pa.float32()), dist.cast(pa.float32()))
        cols, names = [], []
        for c in ("id", "uri"):
            if c in res.column_names:
                cols.append(res.column(c)); names.append(c)
        cols.append(score); names.append("score")
        if want_concepts:
            cols.append(concept_lists(res.column("concept_ids"), res.column("concept_weights"), t.concept_names,
                                      top=int(concepts)))
            names.append("concepts")
        for c in visible:
            if c not in names and c in res.column_names:
                cols.append(res.column(c)); names.append(c)
        out = pa.Table.from_arrays(cols, names=names)
        meta = {"filter": flt, "plan": plan, "k": k, "vector_column": vector_column, "params": params, **info}
        return out.replace_schema_metadata({b"query": json.dumps(meta, default=str).encode()})


def search(db, query: str | None = None, *, image=None, vector=None, where: str | None = None, k: int = 10,
           without: Sequence = (), with_: Sequence = (), with_weight: float | None = None,
           table: str = "images", vector_column: str = "embedding", columns: Sequence[str] | None = None,
           concepts: int = 10, nprobes: int | None = None, refine_factor: int | None = None,
           ef: int | None = None, exact: bool = False, encoder=None, storage_options=None):
    """Find the ``k`` rows most similar to a text query, an image file or a vector, under a condition.

    Parameters
    ----------
    query / image / vector : exactly one: text (encoded with the table's CLIP text tower), an image
        path (image tower), or a raw embedding.
    where : a condition in the filter language of :func:`parse_where`, e.g.
        ``"concept('sand') > 0.1 AND label = 'dog'"``. ``k`` rows come back whenever ``k`` rows pass
        it, all of them when fewer do, none (an empty table) when none does.
    without / with_ : concept names to remove from / add to the query (SpLiCE concept arithmetic);
        ``with_weight`` is the weight an added concept gets (default: the query's largest weight).
    vector_column : search another vector column (e.g. one written by :func:`edit`).
    columns : metadata columns to return (default: all scalar columns).
    concepts : how many of each row's concepts to return (weight-descending; 0 for none).
    nprobes / refine_factor / ef : override the index's query parameters; ``exact=True`` skips the index.

    Returns a ``pyarrow.Table`` (``.to_pandas()`` for pandas): ``id``, ``uri``, ``score`` (cosine
    similarity), ``concepts`` (list of {concept, weight}), then the metadata columns, best first.
    ``result.schema.metadata[b"query"]`` holds the compiled filter, the plan taken and the concept
    arithmetic as JSON. For many queries keep a :class:`Searcher` open instead.
    """
    return Searcher(db, table, storage_options=storage_options, encoder=encoder).search(
        query, image=image, vector=vector, where=where, k=k, without=without, with_=with_, with_weight=with_weight,
        vector_column=vector_column, columns=columns, concepts=concepts, nprobes=nprobes,
        refine_factor=refine_factor, ef=ef, exact=exact)


