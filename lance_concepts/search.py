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

import dataclasses
import difflib
import math
import re
from datetime import datetime
from typing import Callable, Iterable, Mapping, Sequence

from .errors import InputError

__all__ = [
    "search",
    "Searcher",
    "index",
    "edit",
    "index_params",
    "compile_where",
    "WhereError",
    "EMBEDDING_FUNCTION_NAME",
    "register_embedding_function",
]

EMBEDDING_FUNCTION_NAME = "lance-concepts-clip"


class WhereError(InputError):
    """A ``--where`` condition that cannot be parsed or refers to unknown columns or concepts."""


# =====================================================================================================
# The --where language
# =====================================================================================================
#
#   condition  := or
#   or         := and ("OR" and)*
#   and        := not ("AND" not)*
#   not        := "NOT" not | "(" condition ")" | predicate
#   predicate  := operand cmp operand
#               | operand ["NOT"] "IN" "(" literal ("," literal)* ")"
#               | operand ["NOT"] "BETWEEN" literal "AND" literal
#               | operand ["NOT"] "LIKE" string
#               | operand "IS" ["NOT"] "NULL"
#               | concept                       (same as concept(...) > 0)
#               | column                        (a boolean column)
#   operand    := column | concept | literal
#   concept    := "concept" "(" string ")"
#   column     := name | `any name`
#   literal    := number | 'string' | "string" | TRUE | FALSE
#   cmp        := = | == | != | <> | < | <= | > | >=
#
# Keywords are case-insensitive. Strings use SQL quoting ('' inside '...').

_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "BETWEEN", "LIKE", "TRUE", "FALSE"}
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)
  | (?P<sq>'(?:[^']|'')*')
  | (?P<dq>"(?:[^"]|"")*")
  | (?P<bq>`[^`]+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|<>|=|<|>)
  | (?P<punct>[(),\-+])
    """,
    re.VERBOSE,
)
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CMP = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclasses.dataclass(frozen=True)
class _Tok:
    kind: str  # number | string | ident | kw | op | punct | end
    value: object
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise WhereError(f"cannot read the condition at position {pos}: {text[pos:pos + 20]!r}")
        kind, raw = m.lastgroup, m.group()
        if kind == "number":
            out.append(_Tok("number", raw, pos))
        elif kind == "sq":
            out.append(_Tok("string", raw[1:-1].replace("''", "'"), pos))
        elif kind == "dq":
            out.append(_Tok("string", raw[1:-1].replace('""', '"'), pos))
        elif kind == "bq":
            out.append(_Tok("ident", raw[1:-1], pos))
        elif kind == "name":
            up = raw.upper()
            out.append(_Tok("kw", up, pos) if up in _KEYWORDS else _Tok("ident", raw, pos))
        elif kind in ("op", "punct"):
            out.append(_Tok(kind, raw, pos))
        pos = m.end()
    out.append(_Tok("end", None, len(text)))
    return out


# --- AST ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Column:
    name: str


@dataclasses.dataclass(frozen=True)
class Concept:
    name: str


@dataclasses.dataclass(frozen=True)
class Literal:
    value: object  # int | float | str | bool


@dataclasses.dataclass(frozen=True)
class Compare:
    left: object
    op: str
    right: object


@dataclasses.dataclass(frozen=True)
class InList:
    operand: object
    values: tuple
    negated: bool


@dataclasses.dataclass(frozen=True)
class Between:
    operand: object
    low: Literal
    high: Literal
    negated: bool


@dataclasses.dataclass(frozen=True)
class Like:
    operand: object
    pattern: str
    negated: bool


@dataclasses.dataclass(frozen=True)
class IsNull:
    operand: object
    negated: bool


@dataclasses.dataclass(frozen=True)
class Truthy:
    operand: object  # Column (boolean) or Concept (weight > 0)


@dataclasses.dataclass(frozen=True)
class BoolOp:
    op: str  # AND | OR
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Not:
    part: object


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok:
        return self.toks[min(self.i + offset, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def error(self, msg: str, tok: _Tok | None = None) -> WhereError:
        tok = tok or self.peek()
        where = "at the end" if tok.kind == "end" else f"at position {tok.pos} ({self.text[tok.pos:tok.pos + 20]!r})"
        return WhereError(f"{msg} {where} in the condition {self.text!r}")

    def is_kw(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == "kw" and t.value in words

    def expect_kw(self, word: str) -> None:
        if not self.is_kw(word):
            raise self.error(f"expected {word}")
        self.next()

    def expect_punct(self, p: str) -> None:
        t = self.peek()
        if t.kind != "punct" or t.value != p:
            raise self.error(f"expected {p!r}")
        self.next()

    def parse(self):
        if self.peek().kind == "end":
            raise WhereError("the condition is empty")
        node = self.parse_or()
        if self.peek().kind != "end":
            raise self.error("unexpected text")
        return node

    def parse_or(self):
        parts = [self.parse_and()]
        while self.is_kw("OR"):
            self.next()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def parse_and(self):
        parts = [self.parse_not()]
        while self.is_kw("AND"):
            self.next()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def parse_not(self):
        if self.is_kw("NOT"):
            self.next()
            return Not(self.parse_not())
        t = self.peek()
        if t.kind == "punct" and t.value == "(":
            self.next()
            node = self.parse_or()
            self.expect_punct(")")
            return node
        return self.parse_predicate()

    def parse_literal(self) -> Literal:
        t = self.peek()
        sign = 1
        if t.kind == "punct" and t.value in "+-":
            self.next()
            sign = -1 if t.value == "-" else 1
            t = self.peek()
            if t.kind != "number":
                raise self.error("expected a number after the sign")
        if t.kind == "number":
            self.next()
            raw = str(t.value)
            value = int(raw) if re.fullmatch(r"[0-9]+", raw) else float(raw)
            if isinstance(value, float) and not math.isfinite(value):
                raise self.error("numbers must be finite", t)
            return Literal(sign * value)
        if t.kind == "string":
            self.next()
            return Literal(t.value)
        if t.kind == "kw" and t.value in ("TRUE", "FALSE"):
            self.next()
            return Literal(t.value == "TRUE")
        raise self.error("expected a value (number, 'string', TRUE or FALSE)")

    def parse_operand(self):
        t = self.peek()
        if t.kind == "ident":
            nxt = self.peek(1)
            if t.value.lower() == "concept" and nxt.kind == "punct" and nxt.value == "(":
                self.next()
                self.next()
                arg = self.peek()
                if arg.kind != "string":
                    raise self.error("concept(...) takes the concept's name as a quoted string, as in concept('sand')")
                self.next()
                self.expect_punct(")")
                return Concept(str(arg.value))
            if nxt.kind == "punct" and nxt.value == "(":
                raise self.error(f"unknown function {t.value!r} (only concept('name') is available)")
            self.next()
            return Column(str(t.value))
        return self.parse_literal()

    def parse_predicate(self):
        left = self.parse_operand()
        t = self.peek()
        if t.kind == "op":
            self.next()
            right = self.parse_operand()
            op = _CMP[str(t.value)]
            if isinstance(left, Literal) and isinstance(right, Literal):
                raise self.error("a comparison needs a column or concept(...) on one side", t)
            if isinstance(left, Literal):
                left, right, op = right, left, _FLIP[op]
            return Compare(left, op, right)
        if isinstance(left, Literal):
            raise self.error("a condition must start with a column or concept(...)", t)
        negated = False
        if self.is_kw("NOT") and self.peek(1).kind == "kw" and self.peek(1).value in ("IN", "BETWEEN", "LIKE"):
            self.next()
            negated = True
        if self.is_kw("IN"):
            self.next()
            self.expect_punct("(")
            values = [self.parse_literal()]
            while self.peek().kind == "punct" and self.peek().value == ",":
                self.next()
                values.append(self.parse_literal())
            self.expect_punct(")")
            return InList(left, tuple(values), negated)
        if self.is_kw("BETWEEN"):
            self.next()
            low = self.parse_literal()
            self.expect_kw("AND")
            high = self.parse_literal()
            return Between(left, low, high, negated)
        if self.is_kw("LIKE"):
            self.next()
            pat = self.peek()
            if pat.kind != "string":
                raise self.error("LIKE takes a quoted pattern")
            self.next()
            return Like(left, str(pat.value), negated)
        if negated:
            raise self.error("expected IN, BETWEEN or LIKE after NOT")
        if self.is_kw("IS"):
            self.next()
            neg = False
            if self.is_kw("NOT"):
                self.next()
                neg = True
            self.expect_kw("NULL")
            return IsNull(left, neg)
        return Truthy(left)


def parse_where(text: str):
    """Parse a ``--where`` condition into a small AST (raises :class:`WhereError`)."""
    if not isinstance(text, str):
        raise WhereError("the condition must be a string")
    return _Parser(text).parse()


# --- compilation to a LanceDB (DataFusion) filter ------------------------------------------------------
def _closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:
        low = name.lower()
        close = [c for c in candidates if low in c.lower() or c.lower() in low][:n]
    return ", ".join(repr(c) for c in close) if close else "none"


def quote_identifier(name: str) -> str:
    """A column name as a filter identifier (backtick-quoted: also protects keywords like ``timestamp``)."""
    if "`" in name:
        raise WhereError(f"column names containing a backtick cannot be used in a filter: {name!r}")
    return f"`{name}`"


def quote_string(value: str) -> str:
    """A SQL string literal: single quotes doubled; no other character is special inside '...'."""
    if "\x00" in value:
        raise WhereError("strings in a condition cannot contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def _render_number(value) -> str:
    if isinstance(value, bool):
        raise WhereError("expected a number, got a boolean")
    if isinstance(value, int):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        raise WhereError("numbers must be finite")
    return repr(value)


_INT_RANGES = {8: (-(2**7), 2**7 - 1), 16: (-(2**15), 2**15 - 1), 32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


class _Compiler:
    """Renders the AST for one table schema; ``concept_id`` resolves concept names (or raises)."""

    def __init__(self, schema, concept_id: Callable[[str], int] | None,
                 concept_ids_column: str = "concept_ids", concept_weights_column: str = "concept_weights"):
        self.schema = schema
        self.concept_id = concept_id
        self.ids_col = concept_ids_column
        self.w_col = concept_weights_column

    # columns ------------------------------------------------------------------
    def column_type(self, name: str):
        import pyarrow as pa

        names = self.schema.names
        if name not in names:
            insensitive = [n for n in names if n.lower() == name.lower()]
            if len(insensitive) == 1:
                name = insensitive[0]
            else:
                raise WhereError(f"unknown column {name!r}; closest: {_closest(name, names)}. "
                                 f"Columns: {', '.join(names)}")
        t = self.schema.field(name).type
        if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
                or pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_binary(t)):
            hint = " (use concept('name') for concept weights)" if name in (self.ids_col, self.w_col) else ""
            raise WhereError(f"column {name!r} of type {t} cannot be used in a condition{hint}")
        return name, t

    def literal(self, lit: Literal, t, column: str) -> str:
        """Render ``lit`` as a value of Arrow type ``t`` (validated, never spliced)."""
        import pyarrow as pa

        v = lit.value
        if pa.types.is_boolean(t):
            if not isinstance(v, bool):
                raise WhereError(f"column {column!r} is boolean: compare it with TRUE or FALSE, not {v!r}")
            return "TRUE" if v else "FALSE"
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise WhereError(f"column {column!r} is numeric ({t}): compare it with a number, not {v!r}")
            if pa.types.is_integer(t) and isinstance(v, int):
                lo, hi = _INT_RANGES[t.bit_width]
                if pa.types.is_unsigned_integer(t):
                    lo, hi = 0, 2 ** t.bit_width - 1
                if not lo <= v <= hi:
                    raise WhereError(f"{v} is out of range for column {column!r} ({t})")
            return _render_number(v)
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            if not isinstance(v, str):
                raise WhereError(f"column {column!r} holds text: quote the value, as in {column} = '{v}'")
            return quote_string(v)
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            if not isinstance(v, str):
                raise WhereError(f"column {column!r} holds {'dates' if pa.types.is_date(t) else 'timestamps'}: "
                                 f"give an ISO date such as '2024-03-01'")
            try:
                parsed = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            except ValueError:
                raise WhereError(f"{v!r} is not an ISO date or date-time (column {column!r})") from None
            if pa.types.is_date(t):
                return f"CAST({quote_string(parsed.date().isoformat())} AS DATE)"
            if parsed.tzinfo is not None:
                from datetime import timezone

                parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
            return f"CAST({quote_string(parsed.isoformat())} AS TIMESTAMP)"
        raise WhereError(f"column {column!r} of type {t} cannot be compared with a value")

    # concepts -----------------------------------------------------------------
    def concept_ref(self, c: Concept) -> int:
        if self.concept_id is None:
            raise WhereError("this table has no concept vocabulary, so concept(...) cannot be used")
        return int(self.concept_id(c.name))

    def has(self, cid: int) -> str:
        # the CAST keeps the literal Int32 like the column, which lets LanceDB use the LABEL_LIST index
        return f"array_has_any({quote_identifier(self.ids_col)}, [CAST({cid} AS INT)])"

    def weight(self, cid: int) -> str:
        return (f"array_element({quote_identifier(self.w_col)}, CAST(array_position("
                f"{quote_identifier(self.ids_col)}, CAST({cid} AS INT)) AS BIGINT))")

    def concept_compare(self, cid: int, op: str, value) -> str:
        """``weight(concept) op value`` where an absent concept has weight 0 (exact, in float32)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WhereError(f"concept weights are numbers: compare concept(...) with a number, not {value!r}")
        import numpy as np

        if not math.isfinite(float(value)):
            raise WhereError("concept weights are finite numbers")
        v32 = float(np.float32(value))
        holds_at_zero = {"=": 0 == v32, "!=": 0 != v32, "<": 0 < v32, "<=": 0 <= v32,
                         ">": 0 > v32, ">=": 0 >= v32}[op]
        # weights are stored as float32: compare in float32, so that a stored 0.3 is "= 0.3" and not "> 0.3"
        v = f"CAST({_render_number(value)} AS FLOAT)"
        if not holds_at_zero:
            # only rows that carry the concept can match: the index selects them, the weight is checked exactly
            if op == ">" and v32 == 0:
                return self.has(cid)
            return f"({self.has(cid)} AND {self.weight(cid)} {op} {v})"
        # an absent concept has weight 0 and matches too; rows without a decomposition (errors) have an
        # unknown (NULL) weight, so that they match neither the condition nor its negation (Lance has
        # no CASE: cardinality(list) * 0 is 0 for a list, NULL for a missing one)
        ids = quote_identifier(self.ids_col)
        zero = f"CAST(cardinality({ids}) * 0 AS FLOAT)"
        return f"(COALESCE({self.weight(cid)}, {zero}) {op} {v})"

    # nodes --------------------------------------------------------------------
    def operand_sql(self, node) -> tuple[str, object]:
        if isinstance(node, Column):
            name, t = self.column_type(node.name)
            return quote_identifier(name), t
        raise WhereError("expected a column")

    def compile(self, node) -> str:
        if isinstance(node, BoolOp):
            return "(" + f" {node.op} ".join(self.compile(p) for p in node.parts) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.compile(node.part)})"
        if isinstance(node, Truthy):
            if isinstance(node.operand, Concept):
                return self.has(self.concept_ref(node.operand))
            name, t = self.column_type(node.operand.name)
            import pyarrow as pa

            if not pa.types.is_boolean(t):
                raise WhereError(f"column {name!r} is not boolean: compare it with a value, as in {name} = ...")
            return f"({quote_identifier(name)} = TRUE)"
        if isinstance(node, Compare):
            if isinstance(node.left, Concept):
                if not isinstance(node.right, Literal):
                    raise WhereError("concept(...) can only be compared with a number")
                return self.concept_compare(self.concept_ref(node.left), node.op, node.right.value)
            if isinstance(node.right, Concept):
                raise WhereError("concept(...) can only be compared with a number")
            lhs, t = self.operand_sql(node.left)
            if isinstance(node.right, Column):
                rhs, _ = self.operand_sql(node.right)
            else:
                rhs = self.literal(node.right, t, node.left.name)
            return f"({lhs} {node.op} {rhs})"
        if isinstance(node, InList):
            if isinstance(node.operand, Concept):
                raise WhereError("concept(...) cannot be used with IN; compare its weight with a number")
            lhs, t = self.operand_sql(node.operand)
            values = ", ".join(self.literal(v, t, node.operand.name) for v in node.values)
            return f"({lhs} {'NOT IN' if node.negated else 'IN'} ({values}))"
        if isinstance(node, Between):
            if isinstance(node.operand, Concept):
                cid = self.concept_ref(node.operand)
                inner = (f"({self.concept_compare(cid, '>=', node.low.value)} AND "
                         f"{self.concept_compare(cid, '<=', node.high.value)})")
                return f"(NOT {inner})" if node.negated else inner
            lhs, t = self.operand_sql(node.operand)
            lo = self.literal(node.low, t, node.operand.name)
            hi = self.literal(node.high, t, node.operand.name)
            return f"({lhs} {'NOT BETWEEN' if node.negated else 'BETWEEN'} {lo} AND {hi})"
        if isinstance(node, Like):
            if isinstance(node.operand, Concept):
                raise WhereError("concept(...) cannot be used with LIKE")
            lhs, t = self.operand_sql(node.operand)
            import pyarrow as pa

            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise WhereError(f"LIKE needs a text column; {node.operand.name!r} is {t}")
            return f"({lhs} {'NOT LIKE' if node.negated else 'LIKE'} {quote_string(node.pattern)})"
        if isinstance(node, IsNull):
            if isinstance(node.operand, Concept):
                raise WhereError("concept(...) is never NULL (an absent concept has weight 0)")
            lhs, _ = self.operand_sql(node.operand)
            return f"({lhs} IS {'NOT ' if node.negated else ''}NULL)"
        raise WhereError(f"cannot use {node!r} as a condition")


def compile_where(where: str | None, schema, concept_id: Callable[[str], int] | None = None, *,
                  concept_ids_column: str = "concept_ids", concept_weights_column: str = "concept_weights") -> str | None:
    """Compile a ``--where`` condition to a LanceDB filter string for a table with Arrow ``schema``.

    ``concept_id(name) -> int`` resolves concept names (raise :class:`WhereError` for unknown ones).
    Returns ``None`` for an empty/blank condition.
    """
    if where is None or not str(where).strip():
        return None
    node = parse_where(str(where))
    return _Compiler(schema, concept_id, concept_ids_column, concept_weights_column).compile(node)


def concept_resolver(names: Sequence[str], ids: Sequence[int] | None = None) -> Callable[[str], int]:
    """A ``concept_id(name)`` function over a vocabulary; unknown names raise with the closest matches."""
    ids = list(range(len(names))) if ids is None else [int(i) for i in ids]
    exact = {str(n): i for n, i in zip(names, ids)}
    folded: dict[str, list[int]] = {}
    for n, i in zip(names, ids):
        folded.setdefault(" ".join(str(n).lower().split()), []).append(i)

    def resolve(name: str) -> int:
        if name in exact:
            return exact[name]
        hits = folded.get(" ".join(name.lower().split()), [])
        if len(hits) == 1:
            return hits[0]
        raise WhereError(f"unknown concept {name!r}; closest in the vocabulary: {_closest(name, exact)}")

    return resolve


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
    from lancedb.index import BTree, Bitmap, LabelList

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


def _dataset(tbl):
    """The Lance dataset behind a LanceDB table (queried directly: ~2 ms less per query than LanceDB's
    asynchronous query path, measured)."""
    return tbl.to_lance() if hasattr(tbl, "to_lance") else tbl


def _vector_query(tbl, vector, *, k: int, where: str | None, params: Mapping, prefilter: bool = True,
                  vector_column: str = "embedding", select: Sequence[str] | None = None):
    """One cosine-distance vector query with the index's query parameters; returns an Arrow table
    with a ``_distance`` column.

    With a filter (a prefilter by default) the IVF stage may probe further partitions, beyond
    ``nprobes``, until ``k`` rows that pass it are found: a selective filter loses nothing to the
    partitions it did not probe.
    """
    import numpy as np

    ds = _dataset(tbl)
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


# =====================================================================================================
# Tables: metadata, vocabulary, encoder, decomposer
# =====================================================================================================
INDEX_METADATA_KEY = "lance_concepts.index"


class _Table:
    """An images table with what retrieval and editing need from it (opened once per call)."""

    def __init__(self, db, table: str = "images", storage_options: Mapping[str, str] | None = None):
        from .store import companion_tables, connect

        if not table or not isinstance(table, str):
            raise InputError(f"invalid table name {table!r}")
        self.db = db
        self.conn = connect(db, storage_options)
        self.name = table
        try:
            self.tbl = self.conn.open_table(table)
        except Exception as exc:  # lancedb raises several types for "no such table"
            raise InputError(f"no table {table!r} in {db}: {exc}") from None
        self.concepts_name, self.postings_name = companion_tables(table)
        self._names = None
        self._concept_embeddings = None

    # -- schema and metadata --------------------------------------------------------------------
    @property
    def schema(self):
        # a snapshot: LanceDB fetches the schema through its event loop on every access (~0.3 ms)
        if not hasattr(self, "_schema"):
            self._schema = self.tbl.schema
        return self._schema

    @property
    def meta(self) -> dict:
        from .store import read_metadata

        if not hasattr(self, "_meta"):
            self._meta = read_metadata(self.conn, self.name)
        return self._meta

    def schema_json(self, key: str) -> dict | list | None:
        import json

        raw = (self.schema.metadata or {}).get(key.encode())
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def vector_dim(self, column: str) -> int:
        import pyarrow as pa

        if column not in self.schema.names:
            vecs = [f.name for f in self.schema if pa.types.is_fixed_size_list(f.type)]
            raise InputError(f"table {self.name!r} has no vector column {column!r}; vector columns: "
                             f"{', '.join(vecs) or 'none'}")
        t = self.schema.field(column).type
        if not pa.types.is_fixed_size_list(t) or not pa.types.is_floating(t.value_type):
            raise InputError(f"column {column!r} is not a vector column (type {t})")
        return int(t.list_size)

    # -- vocabulary -----------------------------------------------------------------------------
    def _concepts_table(self):
        try:
            return self.conn.open_table(self.concepts_name)
        except Exception:
            return None

    @property
    def concept_names(self) -> list[str] | None:
        """Concept names indexed by concept id (``None`` when the table has no concepts table)."""
        if self._names is None:
            ct = self._concepts_table()
            if ct is None:
                return None
            t = ct.to_lance().to_table(columns=["concept_id", "concept"])
            ids = t.column("concept_id").to_numpy()
            names: list = [None] * (int(ids.max()) + 1 if len(ids) else 0)
            for i, n in zip(ids.tolist(), t.column("concept").to_pylist()):
                names[i] = n
            self._names = names
        return self._names

    def resolver(self) -> Callable[[str], int] | None:
        names = self.concept_names
        if names is None:
            return None
        pairs = [(n, i) for i, n in enumerate(names) if n is not None]
        return concept_resolver([p[0] for p in pairs], [p[1] for p in pairs])

    def concept_ids(self, concepts: Iterable) -> list[int]:
        """Concept names (or ids) -> ids; unknown names raise with the closest matches."""
        resolve = self.resolver()
        if resolve is None:
            raise InputError(f"table {self.name!r} has no concepts table ({self.concepts_name}): "
                             "it was ingested without a vocabulary")
        out = []
        for c in concepts:
            if isinstance(c, (int,)) and not isinstance(c, bool):
                out.append(int(c))
            else:
                out.append(resolve(str(c)))
        return out

    def concept_embeddings(self):
        import numpy as np

        if self._concept_embeddings is None:
            ct = self._concepts_table()
            if ct is None:
                raise InputError(f"table {self.name!r} has no concepts table ({self.concepts_name})")
            t = ct.to_lance().to_table(columns=["concept_id", "embedding"])
            ids = t.column("concept_id").to_numpy()
            emb = t.column("embedding").combine_chunks()
            E = emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), -1).astype(np.float32)
            out = np.zeros((int(ids.max()) + 1, E.shape[1]), np.float32)
            out[ids] = E
            self._concept_embeddings = out
        return self._concept_embeddings

    # -- model ----------------------------------------------------------------------------------
    def encoder(self, encoder=None):
        """The table's CLIP encoder (from its metadata), checked against the recorded fingerprint."""
        if encoder is not None:
            fp = self.meta.get("model_fingerprint")
            if fp and getattr(encoder, "fingerprint", fp) != fp:
                raise InputError(
                    f"table {self.name!r} was embedded with model {self.meta.get('model_name')!r} "
                    f"(fingerprint {fp}) but the encoder given has fingerprint {encoder.fingerprint}")
            return encoder
        model = self.meta.get("model_name")
        if not model:
            raise InputError(f"table {self.name!r} records no model (metadata key 'lance_concepts'); "
                             "pass a query vector instead of text or an image")
        return _load_checked_encoder(model, self.meta.get("pretrained"), self.meta.get("model_fingerprint"))

    def decomposer(self, centre: str = "image"):
        """A fitted SpliceDecomposer with the table's dictionary, l1 and image mean.

        ``centre="text"`` centres with the vocabulary's own mean instead of the image mean (for
        decomposing text queries, which live on the text side of CLIP's modality gap).
        """
        import numpy as np

        from .splice import SpliceDecomposer

        key = f"_dec_{centre}"
        if not hasattr(self, key):
            l1 = self.meta.get("l1_penalty") or 0.25
            dec = SpliceDecomposer(self.concept_embeddings(), image_mean=np.zeros(1, np.float32), l1_penalty=float(l1))
            dec.image_mean = None
            dec.fit()
            if centre == "text":
                dec.image_mean_ = dec.concept_mean_.astype(np.float32)
            else:
                mean = self.meta.get("image_mean")
                if mean is None:
                    raise InputError(f"table {self.name!r} records no SpLiCE image mean; re-run the decomposition")
                mean = np.asarray(mean, np.float32).reshape(-1)
                if mean.shape[0] != dec.dim_:
                    raise InputError(f"the recorded image mean has {mean.shape[0]} dimensions, the dictionary {dec.dim_}")
                dec.image_mean_ = mean
            setattr(self, key, dec)
        return getattr(self, key)

    # -- index ----------------------------------------------------------------------------------
    def vector_index(self, column: str):
        if not hasattr(self, "_indices"):
            self._indices = list(self.tbl.list_indices())
        for ix in self._indices:
            if list(ix.columns) == [column] and str(ix.index_type).upper().replace("_", "").startswith("IVF"):
                return ix
        return None


def _load_checked_encoder(model: str, pretrained, fingerprint: str | None, device: str = "auto"):
    from .encoder import load_encoder

    enc = load_encoder(model, pretrained, device=device)
    if fingerprint and enc.fingerprint != fingerprint:
        raise InputError(
            f"the table was embedded with model {model!r} (pretrained={pretrained!r}) whose fingerprint is "
            f"{fingerprint}, but the weights loaded now have fingerprint {enc.fingerprint}: the query would be "
            "embedded by a different model. Use the same weights file or tag the table was built with.")
    return enc


_LANCE_INDEX_TYPES = {"IVFPQ": "IVF_PQ", "IVFHNSWSQ": "IVF_HNSW_SQ", "IVFFLAT": "IVF_FLAT", "IVFSQ": "IVF_SQ",
                      "IVFHNSWPQ": "IVF_HNSW_PQ", "IVFHNSWFLAT": "IVF_HNSW_FLAT", "IVFRQ": "IVF_RQ"}


def query_params(t: _Table, column: str = "embedding", *, nprobes: int | None = None,
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


def _concept_arithmetic(t: _Table, vec, *, centre: str, without: Sequence = (), with_: Sequence = (),
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
                 encoder=None, storage_options=None, _t: _Table | None = None) -> tuple:
    """The query embedding for text / an image file / a raw vector, after concept arithmetic.

    Returns ``(vector, info)``; ``info`` lists the query's concepts and what was removed or added.
    """
    import numpy as np

    given = [x is not None for x in (query, image, vector)]
    if sum(given) != 1:
        raise InputError("give exactly one query: text, an image (--image PATH) or a vector")
    t = _t or _Table(db, table, storage_options)
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
        enc = t.encoder(encoder)
        vec = enc.encode_text([query])[0]
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


def relax_where(where: str | None, schema, concept_id: Callable[[str], int] | None = None, *,
                concept_ids_column: str = "concept_ids", concept_weights_column: str = "concept_weights") -> str | None:
    """A superset of ``where`` that LanceDB answers from its scalar indexes alone (``None`` = all rows).

    Concept thresholds become presence tests (the LABEL_LIST index), conditions an absent concept
    satisfies and negations drop out; column conditions stay. Used to bound the number of rows a
    filter can match before paying for the exact weight checks.
    """
    if where is None or not str(where).strip():
        return None
    comp = _Compiler(schema, concept_id, concept_ids_column, concept_weights_column)
    return _relax(parse_where(str(where)), comp)


def _relax(node, comp: _Compiler) -> str | None:
    import numpy as np

    if isinstance(node, BoolOp):
        parts = [_relax(p, comp) for p in node.parts]
        if node.op == "AND":
            parts = [p for p in parts if p is not None]
            return None if not parts else "(" + " AND ".join(parts) + ")"
        return None if any(p is None for p in parts) else "(" + " OR ".join(parts) + ")"
    if isinstance(node, Not):
        return None
    if isinstance(node, Truthy) and isinstance(node.operand, Concept):
        return comp.has(comp.concept_ref(node.operand))
    if isinstance(node, Compare) and isinstance(node.left, Concept):
        comp.compile(node)  # validates
        v32 = float(np.float32(node.right.value))
        zero_ok = {"=": 0 == v32, "!=": 0 != v32, "<": 0 < v32, "<=": 0 <= v32, ">": 0 > v32, ">=": 0 >= v32}[node.op]
        return None if zero_ok else comp.has(comp.concept_ref(node.left))
    if isinstance(node, Between) and isinstance(node.operand, Concept):
        comp.compile(node)
        lo, hi = float(np.float32(node.low.value)), float(np.float32(node.high.value))
        zero_ok = (lo <= 0 <= hi) != node.negated
        return None if zero_ok else comp.has(comp.concept_ref(node.operand))
    return comp.compile(node)


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
        self.t = _Table(db, table, storage_options)
        self.db = db
        self.table = table
        self._encoder = encoder
        self._resolver = None
        self._rows = None
        self._params: dict = {}
        self.ds = _dataset(self.t.tbl)

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


def to_records(result) -> list[dict]:
    """A search result as JSON-ready records (timestamps as ISO strings)."""
    import datetime as _dt

    def clean(v):
        if isinstance(v, (_dt.datetime, _dt.date)):
            return v.isoformat()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        return v

    return [{k: clean(v) for k, v in row.items()} for row in result.to_pylist()]


# =====================================================================================================
# Index
# =====================================================================================================
def _metadata_index_plan(t: _Table, skip: Iterable[str]) -> dict:
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


def lancedb_registration_ready() -> tuple[bool, str]:
    """Whether recording the embedding function in a table's metadata is safe for the project's writers.

    LanceDB looks the recorded function up on every write to the table (``add``, ``merge_insert``): a
    process that has not registered it fails with ``KeyError: 'lance-concepts-clip'``; and LanceDB
    then validates the vector column (rejecting the null vectors of error rows) and tries to compute
    it for writes that leave it out (column-subset updates fail on the missing source column). Safe
    when ``import lance_concepts`` registers the function and store.py writes through the Lance
    dataset API, which ignores LanceDB's embedding functions.
    """
    import importlib

    pkg = importlib.import_module(__name__.rsplit(".", 1)[0])
    if not hasattr(pkg, "_install_lancedb_hook"):
        return False, ("lance_concepts/__init__.py does not register the embedding function at import "
                       "(processes writing the table would fail with KeyError 'lance-concepts-clip')")
    store = importlib.import_module(__name__.rsplit(".", 1)[0] + ".store")
    if not getattr(store, "WRITES_BYPASS_LANCEDB_EMBEDDINGS", False):
        return False, ("store.py writes through LanceDB's embedding-function path (error rows' null vectors "
                       "and column-subset updates would be rejected)")
    return True, ""


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

    from .store import IMAGE_COLUMNS, ImageStore, with_retries

    t = _Table(db, table, storage_options)
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


# =====================================================================================================
# Editing (SpLiCE intervention)
# =====================================================================================================
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EDITS_METADATA_KEY = "lance_concepts.edits"


def _check_template(template: str) -> str:
    import string

    if not isinstance(template, str):
        raise InputError(f"a prompt template must be a string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InputError(f"bad prompt template {template!r}: {exc}") from None
    if fields != [""]:
        raise InputError(f"a prompt template needs exactly one '{{}}' where the label goes, as in "
                         f"'a photo of a {{}}'; got {template!r}")
    return template


def _prompt_for(prompts, column: str) -> str:
    if prompts is None:
        return "a photo of a {}"
    if isinstance(prompts, str):
        return _check_template(prompts)
    if isinstance(prompts, Mapping):
        return _check_template(prompts.get(column, prompts.get("*", "a photo of a {}")))
    raise InputError("prompts must be a template string or a mapping column -> template")


def zero_shot_accuracy(embeddings, labels: Sequence, class_names: Sequence[str], text_embeddings) -> float:
    """SpLiCE's zero-shot check: argmax of cos(embedding, prompt embedding) against the true label."""
    import numpy as np

    Z = np.asarray(embeddings, np.float64)
    T = np.asarray(text_embeddings, np.float64)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    T = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)
    pred = np.asarray(class_names, dtype=object)[(Z @ T.T).argmax(1)]
    return float(np.mean(pred == np.asarray(labels, dtype=object))) if len(Z) else float("nan")


@dataclasses.dataclass
class EditReport:
    column: str
    removed: dict  # concept -> id
    rows: int  # rows written (with a decomposition)
    mean_removed_weight: float  # average over rows of the weight mass removed
    rows_touched: int  # rows that carried at least one removed concept
    accuracy: dict  # label column -> {classes, chance, clip, before, after, prompt}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"wrote column {self.column!r}: {self.rows} rows recomposed without "
                 f"{', '.join(self.removed)} ({self.rows_touched} rows carried them; mean removed weight "
                 f"{self.mean_removed_weight:.4f})"]
        if self.accuracy:
            lines.append(f"{'labels':<16}{'classes':>8}{'chance':>9}{'CLIP':>9}{'before':>9}{'after':>9}")
            for col, a in self.accuracy.items():
                lines.append(f"{col:<16}{a['classes']:>8}{a['chance']:>9.3f}{a['clip']:>9.3f}"
                             f"{a['before']:>9.3f}{a['after']:>9.3f}")
            lines.append("(zero-shot accuracy: CLIP = original embeddings, before = SpLiCE recomposition, "
                         "after = recomposition without the removed concepts)")
        return "\n".join(lines)


def edit(db, remove_concepts: Sequence, into: str, *, labels_columns: Sequence[str] = (),
         prompts=None, table: str = "images", overwrite: bool = False, encoder=None,
         storage_options=None, batch_size: int = 8192) -> EditReport:
    """Remove concepts from every row's embedding (SpLiCE model editing) and store the result.

    Each row's stored decomposition has the weights of ``remove_concepts`` zeroed and is recomposed
    (``normalize(normalize(w @ D) + image_mean)``, faithful to SpLiCE); the edited unit vectors are
    written to the new vector column ``into`` (null for rows without a decomposition) in one commit,
    streaming over the table. For each of ``labels_columns``, zero-shot accuracy (prompts
    ``template.format(label)``, argmax cosine, SpLiCE's check) is reported on the original
    embeddings, on the recompositions before the edit and after it.

    ``prompts``: one template with ``{}`` for all label columns, or a mapping column -> template
    (key ``"*"``: the default). Default ``"a photo of a {}"``.
    """
    import json
    import time

    import lance
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import scipy.sparse as sp

    from .store import IMAGE_COLUMNS, with_retries

    if isinstance(remove_concepts, (str, int)):
        remove_concepts = [remove_concepts]
    remove_concepts = list(remove_concepts)
    if not remove_concepts:
        raise InputError("name at least one concept to remove")
    if not isinstance(into, str) or not _COLUMN_NAME.match(into):
        raise InputError(f"--into must be a plain column name (letters, digits, _), got {into!r}")
    labels_columns = list(dict.fromkeys(labels_columns))
    t = _Table(db, table, storage_options)
    if into in IMAGE_COLUMNS:
        raise InputError(f"column {into!r} belongs to the table layout; choose another name")
    if into in t.schema.names and not overwrite:
        raise InputError(f"column {into!r} already exists in table {table!r}; choose another name or overwrite")
    if into in labels_columns:
        raise InputError(f"column {into!r} is also a label column")
    for col in labels_columns:
        if col not in t.schema.names:
            raise InputError(f"unknown label column {col!r}; closest: {_closest(col, t.schema.names)}")
    for col in ("id", "concept_ids", "concept_weights"):
        if col not in t.schema.names:
            raise InputError(f"table {table!r} has no {col!r} column: it was not decomposed into concepts")
    templates = {col: _prompt_for(prompts, col) for col in labels_columns}
    ids = t.concept_ids(remove_concepts)
    names = t.concept_names
    dec = t.decomposer("image")
    c, d = dec.n_concepts_, dec.dim_

    # zero-shot set-up: the classes of each label column and their prompt embeddings
    ds = _dataset(t.tbl)
    classes, text = {}, {}
    if labels_columns:
        enc = t.encoder(encoder)
        for col in labels_columns:
            values = ds.to_table(columns=[col], filter=f"{quote_identifier(col)} IS NOT NULL").column(col)
            cl = sorted({str(v) for v in pc.unique(values).to_pylist()})
            if len(cl) < 2:
                raise InputError(f"label column {col!r} has fewer than two distinct labels")
            classes[col] = cl
            T = enc.encode_text([templates[col].format(x) for x in cl]).astype(np.float64)
            text[col] = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)
    stats = {col: {"rows": 0, "clip": 0, "before": 0, "after": 0, "counts": {}} for col in labels_columns}
    totals = {"rows": 0, "touched": 0, "removed": 0.0}
    vec_type = pa.list_(pa.float32(), d)
    rm = np.asarray(ids, dtype=np.int64)

    def predict(Z, col):
        Z = np.asarray(Z, np.float64)
        Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return np.asarray(classes[col], dtype=object)[(Z @ text[col].T).argmax(1)]

    def transform(batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        cid, cw = batch.column("concept_ids"), batch.column("concept_weights")
        ok = np.asarray(cid.is_valid().to_numpy(zero_copy_only=False)) if n else np.zeros(0, bool)
        lens = np.asarray(pc.fill_null(pc.list_value_length(cid), 0).to_numpy(zero_copy_only=False)).astype(np.int64)
        rows = np.repeat(np.arange(n), lens)
        flat_ids = pc.list_flatten(cid).to_numpy(zero_copy_only=False).astype(np.int64)
        flat_w = pc.list_flatten(cw).to_numpy(zero_copy_only=False).astype(np.float32)
        W = sp.csr_matrix((flat_w, (rows, flat_ids)), shape=(n, c), dtype=np.float32)
        hit = np.isin(flat_ids, rm)
        removed = np.bincount(rows[hit], weights=flat_w[hit], minlength=n)
        We = dec.intervene(W, ids)
        edited = dec.recompose(We)
        totals["rows"] += int(ok.sum())
        totals["touched"] += int((removed > 0).sum())
        totals["removed"] += float(removed[ok].sum())
        if labels_columns:
            emb = batch.column("embedding")
            has_emb = np.asarray(emb.is_valid().to_numpy(zero_copy_only=False))
            raw = np.zeros((n, d), np.float32)
            if has_emb.any():
                raw[has_emb] = pc.list_flatten(emb.filter(pa.array(has_emb))).to_numpy(
                    zero_copy_only=False).reshape(-1, d)
            before = dec.recompose(W)
            for col in labels_columns:
                lab = batch.column(col).to_pylist()
                use = ok & has_emb & np.array([v is not None for v in lab], dtype=bool)
                if not use.any():
                    continue
                y = np.asarray([str(lab[i]) for i in np.flatnonzero(use)], dtype=object)
                st = stats[col]
                st["rows"] += int(use.sum())
                st["clip"] += int((predict(raw[use], col) == y).sum())
                st["before"] += int((predict(before[use], col) == y).sum())
                st["after"] += int((predict(edited[use], col) == y).sum())
                for v in y:
                    st["counts"][v] = st["counts"].get(v, 0) + 1
        arr = pa.FixedSizeListArray.from_arrays(pa.array(edited.reshape(-1), pa.float32()), d)
        if not ok.all():
            arr = pc.if_else(pa.array(ok), arr, pa.nulls(n, vec_type))
        return pa.RecordBatch.from_arrays([arr.cast(vec_type)], names=[into])

    udf = lance.batch_udf(output_schema=pa.schema([pa.field(into, vec_type)]))(transform)
    read = ["concept_ids", "concept_weights"] + (["embedding"] + labels_columns if labels_columns else [])
    if into in t.schema.names:
        with_retries(lambda: t.tbl.drop_columns([into]), f"drop column {into}")
        ds = _dataset(t.conn.open_table(table))
    ds.add_columns(udf, read_columns=list(dict.fromkeys(read)), batch_size=int(batch_size))

    accuracy = {}
    for col, st in stats.items():
        m = max(st["rows"], 1)
        accuracy[col] = {"classes": len(classes[col]), "rows": st["rows"], "chance": 1.0 / len(classes[col]),
                         "majority": max(st["counts"].values()) / m if st["counts"] else float("nan"),
                         "prompt": templates[col], "clip": st["clip"] / m, "before": st["before"] / m,
                         "after": st["after"] / m}
    edits = t.schema_json(EDITS_METADATA_KEY) or {}
    edits[into] = {"removed": {names[j]: j for j in ids}, "source_column": "embedding",
                   "method": "SpLiCE intervention: weights zeroed, normalize(normalize(w @ D) + image_mean)",
                   "model_fingerprint": t.meta.get("model_fingerprint"),
                   "vocabulary_digest": t.meta.get("vocabulary_digest"),
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ds = _dataset(t.conn.open_table(table))
    with_retries(lambda: ds.update_schema_metadata({EDITS_METADATA_KEY: json.dumps(edits, sort_keys=True)}),
                 f"metadata of {table}")
    return EditReport(column=into, removed={names[j]: j for j in ids}, rows=totals["rows"],
                      mean_removed_weight=totals["removed"] / max(totals["rows"], 1),
                      rows_touched=totals["touched"], accuracy=accuracy)


# =====================================================================================================
# LanceDB embedding-function registry
# =====================================================================================================
def embedding_function_metadata(meta: Mapping, *, vector_column: str = "embedding",
                                source_column: str = "uri") -> list[dict]:
    """The ``embedding_functions`` schema-metadata entry for a table's model, with explicit arguments."""
    return [{
        "name": EMBEDDING_FUNCTION_NAME,
        "model": {"model": meta.get("model_name"), "pretrained": meta.get("pretrained"),
                  "fingerprint": meta.get("model_fingerprint"), "device": "auto"},
        "source_column": source_column,
        "vector_column": vector_column,
    }]


_REGISTERED = False


def register_embedding_function() -> None:
    """Register ``lance-concepts-clip`` in LanceDB's embedding-function registry (idempotent).

    Tables indexed by :func:`index` name it in their ``embedding_functions`` schema metadata, so that
    ``table.search("a dog on the beach")`` embeds the text with the table's own CLIP model (checked
    against the recorded fingerprint). LanceDB looks the name up whenever it opens such a table for a
    text query or a write, so any process that queries or writes it with plain ``lancedb`` must have
    imported ``lance_concepts`` first (the import installs a hook that registers the function as soon
    as ``lancedb`` is imported; it does not import ``lancedb`` itself).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from typing import List, Optional

    from lancedb.embeddings.base import EmbeddingFunction
    from lancedb.embeddings.registry import EmbeddingFunctionRegistry

    registry = EmbeddingFunctionRegistry.get_instance()
    try:
        registry.get(EMBEDDING_FUNCTION_NAME)
        _REGISTERED = True
        return
    except KeyError:
        pass

    class LanceConceptsCLIP(EmbeddingFunction):
        """The CLIP model of a lance-concepts table (open_clip, or the offline demo model)."""

        model: str = "ViT-B-32"
        pretrained: Optional[str] = "laion2b_s34b_b79k"
        fingerprint: Optional[str] = None
        device: str = "auto"

        def _encoder(self):
            return _load_checked_encoder(self.model, self.pretrained, self.fingerprint, self.device)

        def ndims(self) -> int:
            return int(self._encoder().embed_dim)

        def compute_query_embeddings(self, query, *args, **kwargs) -> List:
            from PIL import Image

            enc = self._encoder()
            if isinstance(query, str):
                return [enc.encode_text([query])[0]]
            if isinstance(query, Image.Image):
                return [enc.encode_images([query.convert("RGB")])[0]]
            raise TypeError("lance-concepts-clip embeds a text string or a PIL image")

        def compute_source_embeddings(self, sources, *args, **kwargs) -> List:
            """Always ``None``: image embeddings come from ``lance-concepts ingest`` (decode workers,
            error rows, concept decomposition), never from LanceDB's write path. A row written through
            plain lancedb without a vector keeps a null one, like an error row."""
            return [None] * len(self.sanitize_input(sources))

    LanceConceptsCLIP.__module__ = __name__
    registry.register(EMBEDDING_FUNCTION_NAME)(LanceConceptsCLIP)
    _REGISTERED = True


class _RegisterAfterImport:
    """``sys.meta_path`` hook: registers the embedding function right after LanceDB's registry module
    is imported, so that ``import lance_concepts`` does not have to import lancedb (seconds)."""

    target = "lancedb.embeddings.registry"

    def find_spec(self, fullname, path=None, target=None):
        import sys

        if fullname != self.target:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec

        class _Loader:
            def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
                return getattr(loader, name)

            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                _uninstall_hook()
                try:
                    register_embedding_function()
                except Exception as exc:  # never break `import lancedb`
                    import warnings

                    warnings.warn(f"lance-concepts could not register its LanceDB embedding function: {exc}")

        spec.loader = _Loader()
        return spec


_HOOK = _RegisterAfterImport()


def _uninstall_hook() -> None:
    import sys

    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install_lancedb_hook() -> None:
    """Register the embedding function now if lancedb is loaded, else as soon as it is imported."""
    import sys

    if "lancedb.embeddings.registry" in sys.modules:
        register_embedding_function()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


install_lancedb_hook()
