"""Concept counts and weight sums per group (label, split, time window) for the reports.

Answered from the rollup when it describes the table (fast path), else computed from the postings:
the reports never see which.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pyarrow as pa

from ..errors import InputError
from ..lake.aggregates import WINDOWS, Accumulator, Crosstab, truncate_to_window
from .connection import arrow_reader, check_column, connection_state, quote_ident, translate_error


def _window_sql(col_sql: str, every: str | None) -> str:
    if every is None:
        return col_sql
    if every not in WINDOWS:
        raise InputError(f"every must be one of {', '.join(WINDOWS)}; got {every!r}")
    return f"date_trunc('{every}', {col_sql})"


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
    ``engine="rollup"`` reads the pre-aggregated ``<table>_rollup`` (:mod:`lance_concepts.lake.rollup`),
    which ``"auto"`` uses first whenever it is up to date and can answer (no ``where``, threshold 0).
    DuckDB's own ``unnest ... GROUP BY`` gives the same numbers (the ``sql/`` queries; the tests
    compare them) and is several times slower at a million images (BENCHMARKS.md).
    """
    import duckdb

    st = connection_state(con)
    cols = [group] if isinstance(group, str) else list(group or [])
    if (not cols) == (group_sql is None):
        raise InputError("concept_crosstab needs group columns or group_sql")
    for c in cols:
        check_column(con, c, what="group column")
    ds = st.sources.get("images")
    if engine in ("auto", "rollup") and where is None and group_sql is None and ds is not None:
        from ..lake.rollup import load_crosstab, rollup_table_name

        ct = load_crosstab(ds, st.sources.get(rollup_table_name(st.table)), cols, every, n_concepts=st.names.size,
                           min_weight=min_weight, second_moment=second_moment)
        if ct is not None:
            return ct
    if engine == "rollup":
        raise InputError("the rollup cannot answer this query (missing or out of date, a where condition, "
                         "min_weight > 0, or a grouping it does not hold): run `lance-concepts rollup`")
    acc = Accumulator(st.names.size, max(len(cols), 1), min_weight, second_moment)
    use_lance = (engine == "lance" or (engine == "auto" and not st.materialized and where is None
                                        and group_sql is None and ds is not None))
    if use_lance and every is not None:
        t = ds.schema.field(cols[0]).type
        use_lance = pa.types.is_timestamp(t) or pa.types.is_date(t)
    if use_lance:
        if every is not None and every not in WINDOWS:
            raise InputError(f"every must be one of {', '.join(WINDOWS)}; got {every!r}")
        need = list(dict.fromkeys(cols + ["concept_ids", "concept_weights"]))
        for b in ds.to_batches(columns=need, batch_size=batch_rows):
            gcols = [b.column(c) for c in cols]
            if every is not None:
                gcols[0] = truncate_to_window(gcols[0], every)
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
        reader = arrow_reader(con, q, params, batch_rows)
        for b in reader:
            acc.add([b.column(i) for i in range(len(exprs))], b.column(len(exprs)), b.column(len(exprs) + 1))
    except duckdb.Error as exc:
        raise translate_error(con, exc) from None
    return acc.result("duckdb")
