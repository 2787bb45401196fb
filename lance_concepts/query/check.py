"""Declarative expectations on an images table, checked to a yes/no a scheduler or CI can act on.

A spec is TOML (a file path, TOML text, or the equivalent dict); every ``[[expect]]`` is one check::

    [defaults]                       # optional: apply to every expectation
    time_column = "timestamp"
    now = "2024-06-20"               # the day 'last N days' counts back from (default: today, UTC)

    [[expect]]
    name = "no drift in the key concepts over the last week"
    type = "no_drift"                # alerts of drift(current=..., reference=...) among `concepts`
    current = "last 7 days"
    reference = "previous 28 days"
    concepts = ["snow", "grass"]     # optional: any concept
    min_change = 0.10                # optional: drift()'s parameters (alpha, min_support, min_weight)

    [[expect]]
    type = "prevalence"              # share of images with the concept, within [min, max]
    concept = "snow"
    where = { split = "train" }      # optional: column = value conditions (bound as parameters)
    min = 0.05
    max = 0.20

    [[expect]]
    type = "max_lift"                # no concept over-represented in `label` beyond lift `max`
    label = "camel"
    label_column = "label"           # optional
    max = 3.0

    [[expect]]
    type = "error_rate"              # rows whose image failed (status = 'error'), at most `max`
    max = 0.01

    [[expect]]
    type = "images_per_day"          # every day of `window` has at least `min` images
    window = "last 7 days"
    min = 1000

    [[expect]]
    type = "mean_splice_cosine"      # how well the concepts explain the embeddings, at least `min`
    min = 0.5

Each result says what was expected, what was measured and which images to look at (ids and uris).
``status``: pass, fail, or error (the expectation could not be evaluated: e.g. an empty window).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa

from ..errors import InputError
from .connection import arrow_table, check_column, connection_state, open_connection, quote_ident

N_EXAMPLES = 5
_COMMON = {"name", "type", "time_column", "now"}


@dataclass
class Outcome:
    name: str
    type: str
    status: str  # pass | fail | error
    expected: str
    measured: str
    value: Any = None
    images: list = field(default_factory=list)  # [{"id": ..., "uri": ...}] to look at


@dataclass
class CheckResult:
    outcomes: list

    @property
    def ok(self) -> bool:
        return all(o.status == "pass" for o in self.outcomes)

    @property
    def failed(self) -> list:
        return [o for o in self.outcomes if o.status != "pass"]

    def table(self) -> pa.Table:
        return pa.table({"status": [o.status for o in self.outcomes], "name": [o.name for o in self.outcomes],
                         "expected": [o.expected for o in self.outcomes],
                         "measured": [o.measured for o in self.outcomes],
                         "look_at": [", ".join(str(i.get("uri") or i.get("id")) for i in o.images)
                                     for o in self.outcomes]})

    def records(self) -> list[dict]:
        return [o.__dict__.copy() for o in self.outcomes]

    def summary(self) -> str:
        n = len(self.outcomes)
        bad = self.failed
        return f"{n - len(bad)} of {n} expectations hold" + (
            "; not holding: " + "; ".join(o.name for o in bad) if bad else "")

    def junit_xml(self) -> str:
        """JUnit XML (one testcase per expectation) for CI systems."""
        import xml.etree.ElementTree as ET

        suite = ET.Element("testsuite", name="lance-concepts check", tests=str(len(self.outcomes)),
                           failures=str(sum(o.status == "fail" for o in self.outcomes)),
                           errors=str(sum(o.status == "error" for o in self.outcomes)))
        for o in self.outcomes:
            case = ET.SubElement(suite, "testcase", classname=f"lance_concepts.check.{o.type}", name=o.name)
            if o.status != "pass":
                tag = "failure" if o.status == "fail" else "error"
                el = ET.SubElement(case, tag, message=f"expected {o.expected}; measured {o.measured}")
                el.text = "look at: " + json.dumps(o.images, default=str)
        return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True)


# ------------------------------------------------------------------------------------------ spec
def load_spec(spec) -> dict:
    """A spec from a path, TOML text or a dict; validated (unknown types and keys, missing bounds)."""
    import tomllib

    if isinstance(spec, Mapping):
        data = dict(spec)
    elif isinstance(spec, (str, Path)) and "\n" not in str(spec) and Path(spec).suffix == ".toml":
        try:
            data = tomllib.loads(Path(spec).read_text())
        except FileNotFoundError:
            raise InputError(f"spec: no file {str(spec)!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"spec: {spec}: not valid TOML ({exc})") from None
    elif isinstance(spec, str):
        try:
            data = tomllib.loads(spec)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"spec: not valid TOML ({exc})") from None
    else:
        raise InputError(f"spec must be a TOML file, TOML text or a dict; got {type(spec).__name__}")
    extra = set(data) - {"defaults", "expect"}
    if extra:
        raise InputError(f"spec: unknown top-level keys {sorted(extra)} (use [defaults] and [[expect]])")
    exps = data.get("expect")
    if not isinstance(exps, list) or not exps:
        raise InputError("spec: no expectations (add [[expect]] sections)")
    defaults = data.get("defaults") or {}
    out = []
    for i, e in enumerate(exps, 1):
        if not isinstance(e, Mapping):
            raise InputError(f"spec: expectation {i} is not a table")
        e = {**defaults, **e}
        t = e.get("type")
        if t not in CHECKS:
            raise InputError(f"spec: expectation {i}: type must be one of {', '.join(CHECKS)}; got {t!r}")
        allowed, required = CHECKS[t][1], CHECKS[t][2]
        unknown = set(e) - allowed - _COMMON - set(defaults)
        if unknown:
            raise InputError(f"spec: expectation {i} ({t}): unknown keys {sorted(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed | _COMMON))}")
        for k in required:
            if k not in e:
                raise InputError(f"spec: expectation {i} ({t}) needs {k!r}")
        for k in ("min", "max", "min_change", "alpha"):
            if k in e and (not isinstance(e[k], (int, float)) or isinstance(e[k], bool)):
                raise InputError(f"spec: expectation {i} ({t}): {k} must be a number; got {e[k]!r}")
        if t in ("prevalence",) and "min" not in e and "max" not in e:
            raise InputError(f"spec: expectation {i} ({t}) needs min and/or max")
        e.setdefault("name", _default_name(e))
        out.append(e)
    return {"expect": out}


def _default_name(e) -> str:
    bits = [e["type"]] + [f"{k}={e[k]}" for k in ("concept", "label", "current", "window", "min", "max") if k in e]
    return " ".join(str(b) for b in bits)


# ---------------------------------------------------------------------------------------- checks
def _where(con, e) -> tuple[str, dict]:
    """``where = {col = value}`` as SQL with bound parameters (values never reach the SQL text)."""
    conds, params = [], {}
    for i, (col, val) in enumerate((e.get("where") or {}).items()):
        check_column(con, col, what="where column")
        conds.append(f"{quote_ident(col)} = $w{i}")
        params[f"w{i}"] = val
    return (" AND ".join(conds) or "TRUE"), params


def _examples(con, cond: str, params: dict, order: str = "random()") -> list[dict]:
    q = f"SELECT id, uri FROM images WHERE {cond} ORDER BY {order} LIMIT {N_EXAMPLES}"
    return arrow_table(con, q, params).to_pylist()


def _concept_id(con, name: str) -> int:
    return int(connection_state(con).names.id(name))


def _window_bounds(e, con, spec_key: str):
    from .windows import resolve_windows

    tc = e.get("time_column", "timestamp")
    check_column(con, tc, what="time column", kinds=("TIMESTAMP", "DATE"))
    first = arrow_table(con, f"SELECT min({quote_ident(tc)})::DATE AS d FROM images").column("d")[0].as_py()
    cur, _ = resolve_windows(e[spec_key], "all before", now=e.get("now"), first_day=first)
    return tc, cur


def check_no_drift(con, e) -> Outcome:
    from .drift import drift

    kw = {k: e[k] for k in ("alpha", "min_change", "min_support", "min_weight") if k in e}
    res = drift(con, e.get("time_column", "timestamp"), current=e.get("current", "last 7 days"),
                reference=e.get("reference", "previous 28 days"), now=e.get("now"), top=0, **kw)
    wanted = set(e.get("concepts") or [])
    alerts = [a for a in res.alerts if not wanted or a["concept"] in wanted]
    exp = "no drift alerts" + (f" among {', '.join(sorted(wanted))}" if wanted else "") + \
        f" ({res.windows[1]} vs {res.windows[0]})"
    if not alerts:
        return Outcome(e["name"], e["type"], "pass", exp, "none", 0)
    meas = "; ".join(f"{a['concept']} {a['reference_prevalence']:.1%} -> {a['prevalence']:.1%} (q={a['q_value']:.2g})"
                     for a in alerts)
    tc, cur = _window_bounds({**e, "window": e.get("current", "last 7 days")}, con, "window")
    cid = _concept_id(con, alerts[0]["concept"])
    cond = (f"{quote_ident(tc)} >= $s AND {quote_ident(tc)} < $t AND list_contains(concept_ids, $cid)")
    imgs = _examples(con, cond, {"s": cur.start, "t": cur.end, "cid": cid},
                     "concept_weights[list_position(concept_ids, $cid)] DESC")
    return Outcome(e["name"], e["type"], "fail", exp, meas, len(alerts), imgs)


def check_prevalence(con, e) -> Outcome:
    cond, params = _where(con, e)
    params = {**params, "cid": _concept_id(con, e["concept"]), "mw": float(e.get("min_weight", 0.0))}
    has = "coalesce(concept_weights[list_position(concept_ids, $cid)], 0) > $mw"
    t = arrow_table(con, f"SELECT count(*) AS n, count(*) FILTER (WHERE {has}) AS k FROM images "
                         f"WHERE concept_ids IS NOT NULL AND {cond}", params)
    n, k = t.column("n")[0].as_py(), t.column("k")[0].as_py()
    lo, hi = e.get("min", 0.0), e.get("max", 1.0)
    exp = f"prevalence of {e['concept']!r} in [{lo:g}, {hi:g}]" + (f" where {e['where']}" if e.get("where") else "")
    if n == 0:
        return Outcome(e["name"], e["type"], "error", exp, "no images match", None)
    p = k / n
    meas = f"{p:.4g} ({k:,} of {n:,} images)"
    if lo <= p <= hi:
        return Outcome(e["name"], e["type"], "pass", exp, meas, p)
    look = f"concept_ids IS NOT NULL AND {cond} AND " + (has if p > hi else f"NOT ({has})")
    return Outcome(e["name"], e["type"], "fail", exp, meas, p, _examples(con, look, params))


def check_max_lift(con, e) -> Outcome:
    from .spurious import spurious

    col = e.get("label_column", "label")
    res = spurious(con, col, min_lift=float(e["max"]), top=10_000, label_match=e.get("label_match", "string"),
                   min_support=int(e.get("min_support", 5)), alpha=float(e.get("alpha", 0.05)))
    rows = [r for r in res.records() if str(r["label"]) == str(e["label"])
            and r.get("kind", "over_represented") == "over_represented" and (r.get("lift") or 0) > e["max"]]
    exp = f"no concept with lift > {e['max']:g} for {col} = {e['label']!r}"
    if not rows:
        return Outcome(e["name"], e["type"], "pass", exp, "none", 0)
    rows.sort(key=lambda r: -r["lift"])
    meas = "; ".join(f"{r['concept']} lift {r['lift']:.2f}" for r in rows[:5])
    cid = _concept_id(con, rows[0]["concept"])
    imgs = _examples(con, f"{quote_ident(col)} = $lab AND list_contains(concept_ids, $cid)",
                     {"lab": e["label"], "cid": cid}, "concept_weights[list_position(concept_ids, $cid)] DESC")
    return Outcome(e["name"], e["type"], "fail", exp, meas, rows[0]["lift"], imgs)


def check_error_rate(con, e) -> Outcome:
    cond, params = _where(con, e)
    t = arrow_table(con, f"SELECT count(*) AS n, count(*) FILTER (WHERE status = 'error') AS k FROM images "
                         f"WHERE {cond}", params)
    n, k = t.column("n")[0].as_py(), t.column("k")[0].as_py()
    exp = f"error rows <= {e['max']:.4g}"
    if n == 0:
        return Outcome(e["name"], e["type"], "error", exp, "no images", None)
    meas = f"{k / n:.4g} ({k:,} of {n:,} rows)"
    if k / n <= e["max"]:
        return Outcome(e["name"], e["type"], "pass", exp, meas, k / n)
    return Outcome(e["name"], e["type"], "fail", exp, meas, k / n,
                   _examples(con, f"status = 'error' AND {cond}", params, "id"))


def check_images_per_day(con, e) -> Outcome:
    tc, w = _window_bounds(e, con, "window")
    q = (f"SELECT {quote_ident(tc)}::DATE AS d, count(*) AS n FROM images WHERE {quote_ident(tc)} >= $s "
         f"AND {quote_ident(tc)} < $t GROUP BY d")
    counts = {r["d"]: r["n"] for r in arrow_table(con, q, {"s": w.start, "t": w.end}).to_pylist()}
    days = [w.start + dt.timedelta(days=i) for i in range((w.end - w.start).days)]
    low = min(days, key=lambda d: counts.get(d, 0))
    exp = f"at least {e['min']:,} images every day of {w.label}"
    meas = f"fewest on {low.isoformat()}: {counts.get(low, 0):,}"
    ok = counts.get(low, 0) >= e["min"]
    return Outcome(e["name"], e["type"], "pass" if ok else "fail", exp, meas, counts.get(low, 0))


def check_mean_splice_cosine(con, e) -> Outcome:
    cond, params = _where(con, e)
    check_column(con, "splice_cosine", what="column")
    t = arrow_table(con, f"SELECT avg(splice_cosine) AS m, count(splice_cosine) AS n FROM images WHERE {cond}",
                    params)
    m, n = t.column("m")[0].as_py(), t.column("n")[0].as_py()
    exp = f"mean SpLiCE cosine >= {e['min']:g}"
    if not n:
        return Outcome(e["name"], e["type"], "error", exp, "no decomposed images", None)
    meas = f"{m:.4f} over {n:,} images"
    if m >= e["min"]:
        return Outcome(e["name"], e["type"], "pass", exp, meas, m)
    return Outcome(e["name"], e["type"], "fail", exp, meas, m,
                   _examples(con, f"splice_cosine IS NOT NULL AND {cond}", params, "splice_cosine"))


_STATS = {"alpha", "min_change", "min_support", "min_weight"}
#: type -> (function, allowed keys, required keys)
CHECKS: dict[str, tuple[Callable, set, set]] = {
    "no_drift": (check_no_drift, {"current", "reference", "concepts"} | _STATS, set()),
    "prevalence": (check_prevalence, {"concept", "where", "min", "max", "min_weight"}, {"concept"}),
    "max_lift": (check_max_lift, {"label", "label_column", "max", "label_match", "min_support", "alpha"},
                 {"label", "max"}),
    "error_rate": (check_error_rate, {"where", "max"}, {"max"}),
    "images_per_day": (check_images_per_day, {"window", "min"}, {"window", "min"}),
    "mean_splice_cosine": (check_mean_splice_cosine, {"where", "min"}, {"min"}),
}


def check(db, spec, *, table: str = "images", storage_options: Mapping[str, str] | None = None) -> CheckResult:
    """Evaluate every expectation of ``spec`` (TOML path/text or dict; format in this module's doc)
    on ``db``. A spec that cannot be used raises InputError before anything runs; an expectation that
    cannot be evaluated on this data (an empty window, an unknown concept) is reported as ``error``,
    and the others still run."""
    parsed = load_spec(spec)
    con, owned = open_connection(db, table=table, storage_options=storage_options)
    try:
        out = []
        for e in parsed["expect"]:
            try:
                out.append(CHECKS[e["type"]][0](con, e))
            except InputError as exc:
                out.append(Outcome(e["name"], e["type"], "error", _default_name(e), f"not evaluated: {exc}"))
        return CheckResult(out)
    finally:
        if owned:
            con.close()
