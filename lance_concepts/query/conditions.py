"""``where`` for the reports: the search where-language (``concept('sand') > 0.1 AND label = 'dog'``)
compiled to DuckDB with every value bound, so that drift, spurious and search read one language and
no user text is ever part of a query.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..retrieval.where import compile_where_sql
from .connection import connection_state


def where_condition(con, where: str | None, params: Mapping[str, Any] | None = None
                    ) -> tuple[str | None, dict[str, Any] | None]:
    """(DuckDB condition on ``images``, its parameters) for a where-language condition; ``$name``
    references in it take their values from ``params`` (checked against the column types too)."""
    if where is None or not str(where).strip():
        return None, dict(params) if params else None
    st = connection_state(con)
    ds = st.sources.get("images")
    schema = ds.schema if ds is not None else con.execute("SELECT * FROM images LIMIT 0").fetch_arrow_table().schema
    sql, bound = compile_where_sql(where, schema, st.names.id, params=params)
    return sql, {**(params or {}), **bound}
