"""The where-language: ``concept('sand') > 0.1 AND label = 'dog'``, parsed and compiled safely.

Column and concept names are checked against the table, every literal is validated against its column's
type and re-rendered; nothing a user typed is spliced into a filter string.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from datetime import date, datetime
from typing import Callable, Iterable, Mapping, Sequence

from ..concepts.names import ConceptNames, UnknownConceptError
from ..errors import InputError


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
#   literal    := number | 'string' | "string" | TRUE | FALSE | $name (a bound parameter)
#   (a "double-quoted" name where a column is expected is the column: "group" = 'a')
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
  | (?P<param>\$[A-Za-z_][A-Za-z0-9_]*)
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
    kind: str  # number | string | param | ident | kw | op | punct | end
    value: object
    pos: int
    quoted_ident: bool = False  # "double-quoted": a column name at the start of a predicate


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
        elif kind == "dq":  # a string, or a column name where a column is expected ("group" = 'a')
            out.append(_Tok("string", raw[1:-1].replace('""', '"'), pos, quoted_ident=True))
        elif kind == "param":
            out.append(_Tok("param", raw[1:], pos))
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
class Param(Literal):
    """``$name``: a value given separately (``params``), checked like a literal and never spliced."""


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
        if t.kind == "param":
            self.next()
            return Param(str(t.value))
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
        t0 = self.peek()
        if t0.kind == "string" and t0.quoted_ident:  # "group" = 'a': SQL's quoted identifier
            self.next()
            left = Column(str(t0.value))
        else:
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
def closest_names(name: str, candidates: Iterable[str], n: int = 5) -> str:
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
                 concept_ids_column: str = "concept_ids", concept_weights_column: str = "concept_weights",
                 params: Mapping[str, object] | None = None):
        self.params = dict(params or {})
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
                raise WhereError(f"unknown column {name!r}; closest: {closest_names(name, names)}. "
                                 f"Columns: {', '.join(names)}")
        t = self.schema.field(name).type
        if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
                or pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_binary(t)):
            hint = " (use concept('name') for concept weights)" if name in (self.ids_col, self.w_col) else ""
            raise WhereError(f"column {name!r} of type {t} cannot be used in a condition{hint}")
        return name, t

    def ident(self, name: str) -> str:
        return quote_identifier(name)

    def value(self, lit: Literal):
        """The literal's value (a ``$name`` parameter looked up in ``params``)."""
        if isinstance(lit, Param):
            if lit.value not in self.params:
                raise WhereError(f"the condition uses ${lit.value} but no such parameter was given"
                                 + (f" (given: {', '.join(sorted(self.params))})" if self.params else ""))
            return self.params[lit.value]
        return lit.value

    def literal(self, lit: Literal, t, column: str) -> str:
        """Render ``lit`` as a value of Arrow type ``t`` (validated, never spliced)."""
        import pyarrow as pa

        v = self.value(lit)
        if isinstance(v, (datetime, date)):
            v = v.isoformat()
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

    def pattern(self, text: str) -> str:
        return quote_string(text)

    # concepts -----------------------------------------------------------------
    def concept_ref(self, c: Concept) -> int:
        if self.concept_id is None:
            raise WhereError("this table has no concept vocabulary, so concept(...) cannot be used")
        return int(self.concept_id(c.name))

    def has(self, cid: int) -> str:
        # the CAST keeps the literal Int32 like the column, which lets LanceDB use the LABEL_LIST index
        return f"array_has_any({self.ident(self.ids_col)}, [CAST({cid} AS INT)])"

    def weight(self, cid: int) -> str:
        return (f"array_element({self.ident(self.w_col)}, CAST(array_position("
                f"{self.ident(self.ids_col)}, CAST({cid} AS INT)) AS BIGINT))")

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
        ids = self.ident(self.ids_col)
        zero = f"CAST(cardinality({ids}) * 0 AS FLOAT)"
        return f"(COALESCE({self.weight(cid)}, {zero}) {op} {v})"

    # nodes --------------------------------------------------------------------
    def operand_sql(self, node) -> tuple[str, object]:
        if isinstance(node, Column):
            name, t = self.column_type(node.name)
            return self.ident(name), t
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
            return f"({self.ident(name)} = TRUE)"
        if isinstance(node, Compare):
            if isinstance(node.left, Concept):
                if not isinstance(node.right, Literal):
                    raise WhereError("concept(...) can only be compared with a number")
                return self.concept_compare(self.concept_ref(node.left), node.op, self.value(node.right))
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
                inner = (f"({self.concept_compare(cid, '>=', self.value(node.low))} AND "
                         f"{self.concept_compare(cid, '<=', self.value(node.high))})")
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
            return f"({lhs} {'NOT LIKE' if node.negated else 'LIKE'} {self.pattern(node.pattern)})"
        if isinstance(node, IsNull):
            if isinstance(node.operand, Concept):
                raise WhereError("concept(...) is never NULL (an absent concept has weight 0)")
            lhs, _ = self.operand_sql(node.operand)
            return f"({lhs} IS {'NOT ' if node.negated else ''}NULL)"
        raise WhereError(f"cannot use {node!r} as a condition")


def compile_where(where: str | None, schema, concept_id: Callable[[str], int] | None = None, *,
                  concept_ids_column: str = "concept_ids", concept_weights_column: str = "concept_weights",
                  params: Mapping[str, object] | None = None) -> str | None:
    """Compile a ``--where`` condition to a LanceDB filter string for a table with Arrow ``schema``.

    ``concept_id(name) -> int`` resolves concept names (raise :class:`WhereError` for unknown ones).
    Returns ``None`` for an empty/blank condition.
    """
    if where is None or not str(where).strip():
        return None
    node = parse_where(str(where))
    return _Compiler(schema, concept_id, concept_ids_column, concept_weights_column, params).compile(node)


def concept_resolver(names: Sequence[str], ids: Sequence[int] | None = None) -> Callable[[str], int]:
    """A ``concept_id(name)`` function over a vocabulary (:class:`ConceptNames` rules); unknown names
    raise :class:`WhereError` with the closest matches."""
    known = ConceptNames(range(len(names)) if ids is None else ids, names)

    def resolve(name: str) -> int:
        try:
            return known.id(name)
        except UnknownConceptError as exc:
            raise WhereError(str(exc)) from None

    return resolve


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
        v32 = float(np.float32(comp.value(node.right)))
        zero_ok = {"=": 0 == v32, "!=": 0 != v32, "<": 0 < v32, "<=": 0 <= v32, ">": 0 > v32, ">=": 0 >= v32}[node.op]
        return None if zero_ok else comp.has(comp.concept_ref(node.left))
    if isinstance(node, Between) and isinstance(node.operand, Concept):
        comp.compile(node)
        lo, hi = float(np.float32(comp.value(node.low))), float(np.float32(comp.value(node.high)))
        zero_ok = (lo <= 0 <= hi) != node.negated
        return None if zero_ok else comp.has(comp.concept_ref(node.operand))
    return comp.compile(node)


# =====================================================================================================
# The same language for DuckDB (drift, spurious, reports): SQL text with every value bound
# =====================================================================================================
class _DuckDBCompiler(_Compiler):
    """Renders the AST as a DuckDB condition on ``images`` whose values are all ``$`` parameters."""

    def __init__(self, *args, prefix: str = "w", **kw):
        super().__init__(*args, **kw)
        self.bound: dict[str, object] = {}
        self.prefix = prefix

    def bind(self, value) -> str:
        name = f"_{self.prefix}{len(self.bound)}"
        self.bound[name] = value
        return f"${name}"

    def ident(self, name: str) -> str:
        return '"' + str(name).replace('"', '""') + '"'

    def pattern(self, text: str) -> str:
        return self.bind(str(text))

    def literal(self, lit: Literal, t, column: str) -> str:
        import pyarrow as pa

        rendered = super().literal(lit, t, column)  # validates the value against the column type
        v = self.value(lit)
        if isinstance(v, (datetime, date)):
            v = v.isoformat()
        if pa.types.is_date(t):
            return f"CAST({self.bind(datetime.fromisoformat(v.strip().replace('Z', '+00:00')).date().isoformat())} AS DATE)"
        if pa.types.is_timestamp(t):
            iso = rendered[len("CAST('"):-len("' AS TIMESTAMP)")]  # the UTC wall time super() derived
            return f"CAST({self.bind(iso)} AS TIMESTAMP)"
        return self.bind(v)

    def has(self, cid: int) -> str:
        return f"list_contains({self.ident(self.ids_col)}, {self.bind(int(cid))})"

    def weight(self, cid: int) -> str:
        return f"{self.ident(self.w_col)}[list_position({self.ident(self.ids_col)}, {self.bind(int(cid))})]"

    def concept_compare(self, cid: int, op: str, value) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise WhereError(f"concept weights are finite numbers: compare concept(...) with a number, not {value!r}")
        import numpy as np

        v32 = float(np.float32(value))
        holds_at_zero = {"=": 0 == v32, "!=": 0 != v32, "<": 0 < v32, "<=": 0 <= v32, ">": 0 > v32, ">=": 0 >= v32}[op]
        v = f"CAST({self.bind(float(value))} AS FLOAT)"
        if not holds_at_zero:
            return f"({self.has(cid)} AND {self.weight(cid)} {op} {v})"
        ids = self.ident(self.ids_col)
        # absent concept: weight 0; no decomposition (error rows): NULL, matching neither side
        return f"(COALESCE({self.weight(cid)}, CASE WHEN {ids} IS NULL THEN NULL ELSE CAST(0 AS FLOAT) END) {op} {v})"


def compile_where_sql(where: str | None, schema, concept_id: Callable[[str], int] | None = None, *,
                      params: Mapping[str, object] | None = None, prefix: str = "w"
                      ) -> tuple[str | None, dict[str, object]]:
    """Compile a where-language condition to a DuckDB condition over ``images`` and its bound values.

    Returns ``(sql, bound)``: ``sql`` references only ``$_<prefix>N`` parameters (values from the
    condition's literals and from ``params`` for its ``$name`` references), so nothing a user typed is
    ever part of the SQL text: ``split = 'test') OR (1=1`` is a syntax error, not a disabled filter.
    """
    if where is None or not str(where).strip():
        return None, {}
    comp = _DuckDBCompiler(schema, concept_id, params=params, prefix=prefix)
    sql = comp.compile(parse_where(str(where)))
    return sql, comp.bound
