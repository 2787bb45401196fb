"""Read-only SQL for the explorer's query box.

The box runs on its own DuckDB connection whose configuration is locked after external access is
switched off, so a query cannot read files, reach the network, attach databases or change settings
whatever it is spelled like; DuckDB's own parser classifies the statement (no regexes), and a timer
interrupts queries that run too long.
"""
from __future__ import annotations

import threading

from ..errors import InputError

ALLOWED_TYPES = {"SELECT"}


def lock_down(con):
    """Switch off file/network access and freeze the settings of ``con`` (irreversible for ``con``)."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(con, sql: str) -> str:
    """The one SELECT statement in ``sql``; anything else is an InputError naming what was refused."""
    if not sql or not sql.strip():
        raise InputError("sql: the query is empty")
    try:
        statements = con.extract_statements(sql)
    except Exception as exc:  # duckdb.ParserException and friends
        raise InputError(f"sql: {first_line(exc)}") from None
    if len(statements) != 1:
        raise InputError(f"sql: one statement at a time, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in ALLOWED_TYPES:
        raise InputError(f"sql: only SELECT queries run here (read-only), this is a {kind} statement")
    return sql


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_read_only(con, sql: str, params=None, *, timeout_s: float = 10.0, limit: int = 1000):
    """(Arrow table of at most ``limit`` rows, truncated?) for one checked SELECT, interrupted after
    ``timeout_s`` seconds. Errors come back as InputError with DuckDB's message."""
    check_read_only(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        rel = con.sql(sql, params=params or None) if params else con.sql(sql)
        table = rel.limit(limit + 1).arrow() if rel is not None else None
    except Exception as exc:
        if "interrupt" in str(exc).lower():
            raise InputError(f"sql: stopped after the time limit of {timeout_s:g} s") from None
        raise InputError(f"sql: {first_line(exc)}") from None
    finally:
        timer.cancel()
    if table is None:
        raise InputError("sql: the statement returned no rows")
    if hasattr(table, "read_all"):
        table = table.read_all()
    return table.slice(0, limit), table.num_rows > limit
