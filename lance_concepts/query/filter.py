"""Images whose concept weights pass thresholds: the headline query, answered from the postings index.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError
from .connection import as_list, require_concepts, check_column, connection_state, open_connection, quote_ident, run_query

# ========================================================================================== filter
#: Above this many matches, ``filter`` fetches the image rows with one filtered scan of ``images.id``
#: instead of BTREE index lookups (measured at 1M rows: ~25-40 us per looked-up id, the scan ~200 ms
#: on the loaded 2-core machine, about equal at 5,000 ids).
LOOKUP_MAX = 5000


def filter(db, concepts: str | Sequence[str], min_weight: float | Sequence[float] = 0.1, *, match: str = "all",
           limit: int | None = None, columns: Sequence[str] | None = ("uri",), table: str = "images",
           storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """Images whose concept weights pass thresholds, strongest first.

    ``concepts``: one name or several; ``min_weight``: one threshold for all or one per concept
    (weight must be strictly greater); ``match``: 'all' (AND: every concept passes) or 'any' (OR).
    Columns: ``id``, the requested image ``columns`` (default ``uri``), ``weight`` (the concept's
    weight; with several concepts the smallest passing weight for 'all', the largest for 'any') and,
    with several concepts, ``weights`` (concept -> weight). Ordered by ``weight`` descending.
    """
    names = as_list(concepts)
    if not names:
        raise InputError("filter needs at least one concept")
    thr = [float(t) for t in (as_list(min_weight) if not isinstance(min_weight, (int, float)) else [min_weight])]
    if len(thr) == 1:
        thr = thr * len(names)
    if len(thr) != len(names):
        raise InputError(f"give one min_weight for all concepts or one per concept ({len(names)} concepts, {len(thr)} min_weight)")
    if match not in ("all", "any"):
        raise InputError(f"match must be 'all' or 'any'; got {match!r}")
    if limit is not None and int(limit) < 1:
        raise InputError("limit must be positive")
    con, owned = open_connection(db, table=table, storage_options=storage_options)
    try:
        return _filter(con, names, thr, match, limit, list(columns or []))
    finally:
        if owned:
            con.close()


concept_filter = filter


def _filter(con, names, thr, match, limit, columns) -> pa.Table:
    require_concepts(con)
    st = connection_state(con)
    ids = [st.names.id(n) for n in names]
    seen = {}
    for i, c in zip(ids, thr):  # the same concept twice: keep the stricter threshold
        seen[i] = max(c, seen.get(i, -np.inf))
    uids = list(seen)
    uthr = [seen[i] for i in uids]
    for c in columns:
        check_column(con, c)
    k = len(uids)
    params = {f"c{j}": int(c) for j, c in enumerate(uids)}
    params["thr"] = [float(t) for t in uthr]
    params["cids"] = [int(c) for c in uids]
    inlist = ", ".join(f"$c{j}" for j in range(k))
    src = ("SELECT image_id, concept_id, weight FROM image_concepts_raw" if st.has_postings else
           "SELECT id AS image_id, unnest(concept_ids) AS concept_id, unnest(concept_weights) AS weight FROM images")
    agg = "min(weight)" if match == "all" else "max(weight)"
    having = f"HAVING count(DISTINCT concept_id) = {k}" if match == "all" else ""
    order_limit = " ORDER BY weight DESC, image_id" + (" LIMIT $lim" if limit else "")
    if limit:
        params["lim"] = int(limit)
    if k == 1:
        q = (f"SELECT image_id, weight FROM ({src}) WHERE concept_id = $c0 AND weight > $thr[1]" + order_limit)
    else:
        q = (f"SELECT image_id, {agg} AS weight, map(list(concept_id), list(weight)) AS wmap FROM ({src}) "
             f"WHERE concept_id IN ({inlist}) AND weight > list_extract($thr, list_position($cids, concept_id)) "
             f"GROUP BY image_id {having}" + order_limit)
    hits = run_query(con, q, params)
    if k > 1:
        cmap = {c: st.names.name(c) for c in uids}
        wm = hits.column("wmap").to_pylist()
        named = [{cmap[a]: b for a, b in (m.items() if isinstance(m, dict) else m)} for m in wm]
        hits = hits.drop_columns(["wmap"]).append_column(
            "weights", pa.array(named, pa.map_(pa.string(), pa.float32())))
    cols = [c for c in columns if c != "id"]
    if not cols:
        return hits.rename_columns(["id"] + hits.column_names[1:])
    ds = st.sources.get("images")
    if hits.num_rows == 0:  # no answer is an answer: an empty table with the columns' own types
        types = {f.name: f.type for f in run_query(con, "SELECT * FROM images LIMIT 0").schema}
        joined = hits
        for c in cols:
            joined = joined.append_column(pa.field(c, types[c]), pa.array([], types[c]))
    elif ds is not None and not st.materialized:
        import pyarrow.compute as pc

        # few ids: the BTREE index on images.id; many: one scan of the id column with the set as a
        # filter (Lance reads the other columns only for the matching rows)
        rows = ds.to_table(columns=["id"] + cols, filter=pc.field("id").isin(hits.column("image_id")),
                           use_scalar_index=hits.num_rows <= LOOKUP_MAX)
        pos = pc.index_in(hits.column("image_id"), value_set=rows.column("id"))
        joined = hits
        for c in cols:
            joined = joined.append_column(c, rows.column(c).take(pos))
    else:
        con.register("_lc_hits", hits)
        try:
            sel = ", ".join(f"i.{quote_ident(c)}" for c in cols)
            joined = run_query(con, f"SELECT h.*, {sel} FROM _lc_hits h LEFT JOIN images i ON i.id = h.image_id")
        finally:
            con.unregister("_lc_hits")
    order = ["image_id"] + cols + [c for c in hits.column_names if c != "image_id"]
    joined = joined.select(order).rename_columns(["id"] + order[1:])
    idx = pa.compute.sort_indices(joined, sort_keys=[("weight", "descending"), ("id", "ascending")])
    return joined.take(idx)
