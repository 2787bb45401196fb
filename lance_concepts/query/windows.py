"""Time windows that move with the calendar: "last 7 days" against "previous 28 days".

Monitoring compares what arrived lately with what came before, relative to *now* (or a given day),
not fixed calendar months. A window is resolved to a half-open day range [start, end): the reports
then sum the table's daily aggregates over it (the rollup stores days, so this stays on the fast
path) and test the two windows against each other with the same statistics as :func:`drift`.

Spellings (case-insensitive):

- ``last N days`` / ``last N weeks``: the N days (7N) ending with today (``now``'s day), inclusive.
- ``previous N days`` / ``previous N weeks`` (reference only): the N days just before the current window.
- ``first N days`` / ``first N weeks``: the first N days from the table's first day.
- ``YYYY-MM-DD..YYYY-MM-DD``: a fixed period, both days included; ``YYYY-MM-DD`` one day.
- ``all before`` (reference only): everything before the current window.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

_REL = re.compile(r"^\s*(last|previous|first)\s+(\d+)\s+(day|days|week|weeks)\s*$", re.I)
_FIXED = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})\s*(?:\.\.\s*(\d{4}-\d{2}-\d{2}))?\s*$")


@dataclass(frozen=True)
class Window:
    """A half-open day range [start, end) and the text it came from."""

    start: dt.date
    end: dt.date
    spec: str

    @property
    def label(self) -> str:
        last = self.end - dt.timedelta(days=1)
        return self.start.isoformat() if last == self.start else f"{self.start.isoformat()}..{last.isoformat()}"

    def contains(self, day: dt.date) -> bool:
        return self.start <= day < self.end


def _day(v) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v[:10])
        except ValueError:
            raise InputError(f"now must be a date (YYYY-MM-DD); got {v!r}") from None
    raise InputError(f"now must be a date or datetime; got {v!r}")


def _parse(spec: str, param: str, today: dt.date, first_day: dt.date | None, current: Window | None) -> Window:
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"{param} must be a window such as 'last 7 days', 'previous 28 days', "
                         f"'2024-01-01..2024-01-31'; got {spec!r}")
    m = _REL.match(spec)
    if m:
        kind, n, unit = m.group(1).lower(), int(m.group(2)), m.group(3).lower()
        days = n * (7 if unit.startswith("week") else 1)
        if days < 1:
            raise InputError(f"{param}: a window needs at least one day; got {spec!r}")
        if kind == "last":
            end = today + dt.timedelta(days=1)
            return Window(end - dt.timedelta(days=days), end, spec)
        if kind == "previous":
            if current is None:
                raise InputError(f"{param}: 'previous ...' is relative to the current window (reference only)")
            return Window(current.start - dt.timedelta(days=days), current.start, spec)
        if first_day is None:
            raise InputError(f"{param}: 'first ...' needs a table with at least one dated image")
        return Window(first_day, first_day + dt.timedelta(days=days), spec)
    if spec.strip().lower() == "all before":
        if current is None:
            raise InputError(f"{param}: 'all before' is relative to the current window (reference only)")
        return Window(first_day or current.start, current.start, spec)
    m = _FIXED.match(spec)
    if m:
        try:
            a = dt.date.fromisoformat(m.group(1))
            b = dt.date.fromisoformat(m.group(2) or m.group(1))
        except ValueError as exc:
            raise InputError(f"{param}: {exc} in {spec!r}") from None
        if b < a:
            raise InputError(f"{param}: the period ends before it starts: {spec!r}")
        return Window(a, b + dt.timedelta(days=1), spec)
    raise InputError(f"{param}: cannot read window {spec!r}; use 'last N days', 'previous N days', "
                     "'first N days' (or weeks), 'all before', or 'YYYY-MM-DD..YYYY-MM-DD'")


def resolve_windows(current: str, reference: str, *, now=None, first_day=None) -> tuple[Window, Window]:
    """(current, reference) as day ranges. ``now``: the day 'last' counts back from (default today,
    UTC); ``first_day``: the table's first day (for 'first N days' / 'all before')."""
    today = _day(now) if now is not None else dt.datetime.now(dt.timezone.utc).date()
    first = _day(first_day) if first_day is not None else None
    cur = _parse(current, "current", today, first, None)
    ref = _parse(reference, "reference", today, first, cur)
    if ref.start < cur.end and cur.start < ref.end:
        raise InputError(f"the reference window {ref.label} overlaps the current window {cur.label}")
    return cur, ref


def two_window_crosstab(daily, current: Window, reference: Window):
    """The daily crosstab summed into two groups, reference first (as :func:`drift` expects)."""
    from ..lake.aggregates import Crosstab

    days = [_day(g) for g in daily.groups]
    masks = [np.array([w.contains(d) for d in days], bool) for w in (reference, current)]
    C = daily.present.shape[1] if daily.present.ndim == 2 else 0

    def fold(a, m):
        return a[m].sum(axis=0) if m.any() else np.zeros(C, a.dtype)

    return Crosstab(groups=[reference.label, current.label],
                    n=np.array([int(daily.n[m].sum()) for m in masks], np.int64),
                    present=np.vstack([fold(daily.present, m) for m in masks]),
                    weight_sum=np.vstack([fold(daily.weight_sum, m) for m in masks]),
                    weight_sq=None if daily.weight_sq is None else np.vstack([fold(daily.weight_sq, m)
                                                                              for m in masks]),
                    min_weight=daily.min_weight, dropped_null_groups=daily.dropped_null_groups,
                    engine=daily.engine)


def windowed_crosstab(con, time_column: str, current: str, reference: str | None, *, now=None, where=None,
                      params=None, min_weight: float = 0.0, second_moment: bool = False, engine: str = "auto"):
    """(crosstab of [reference, current], current, reference) from the table's daily counts."""
    from .crosstab import concept_crosstab

    daily = concept_crosstab(con, time_column, every="day", where=where, params=params, min_weight=min_weight,
                             second_moment=second_moment, engine=engine)
    first = daily.groups[0] if daily.groups else None
    cur, ref = resolve_windows(current, reference or "previous 28 days", now=now, first_day=first)
    ct = two_window_crosstab(daily, cur, ref)
    for w, k in ((cur, 1), (ref, 0)):
        if ct.n[k] == 0:
            raise InputError(f"no images with concepts in the {'reference' if k == 0 else 'current'} window "
                             f"{w.label} ({w.spec!r}, {time_column!r})")
    return ct, cur, ref
