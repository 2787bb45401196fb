"""The named, parameterised SQL files in ``sql/``: parsed headers, bound parameters, run on a connection.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

from ..errors import InputError
from .connection import check_column, connect, run_query

_PACKAGE_SQL = Path(__file__).resolve().parents[1] / "data" / "sql"
_REPO_SQL = Path(__file__).resolve().parents[2] / "sql"
SQL_DIR = _REPO_SQL if _REPO_SQL.is_dir() else _PACKAGE_SQL


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
                raise InputError(f"query {self.name!r} needs the parameter {name!r} (a column name)")
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
                raise InputError(f"query {self.name!r} needs the parameter {name!r} ({p.type}): {p.doc}")
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
        raise InputError("give either a SQL query or file= (a .sql file or a library query name)")
    con = connect(db, materialize=materialize, table=table, storage_options=storage_options)
    try:
        if file is not None:
            return load_query(file).run(con, params)
        return run_query(con, query, dict(params) if params else None)
    finally:
        con.close()
