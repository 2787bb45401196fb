"""Concept names, resolved one way everywhere (SQL macros, the where-language, vocabularies, Python).

Earlier versions had three resolvers that disagreed on case; a name a user types must find the same
concept whichever door it comes through.
"""
from __future__ import annotations

import difflib
import unicodedata
from typing import Sequence

import numpy as np

from ..errors import InputError, VocabularyError


class UnknownConceptError(InputError, VocabularyError):
    """A concept name that is not in the vocabulary (the message lists the closest names)."""


def _norm(s: str) -> str:
    """Lenient key for concept names: unicode NFC, case-folded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", str(s)).casefold().split())


class ConceptNames:
    """Concept name <-> id, the one resolver every part of the package uses.

    Lookup is exact first, then lenient (unicode NFC, case-folded, inner whitespace collapsed) when
    that leaves exactly one concept, so ``'Red'`` finds ``'red'`` in SQL, search and Python alike; an
    unknown name raises :class:`UnknownConceptError` with the closest names.
    """

    def __init__(self, ids: Sequence[int], names: Sequence[str]):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.names = [str(n) for n in names]
        self._exact = {n: int(i) for i, n in zip(self.ids, self.names)}
        loose: dict[str, list[int]] = {}
        for i, n in zip(self.ids, self.names):
            loose.setdefault(_norm(n), []).append(int(i))
        self._loose = loose
        self.size = int(self.ids.max()) + 1 if len(self.ids) else 0
        by_id = [None] * self.size
        for i, n in zip(self.ids, self.names):
            by_id[int(i)] = n
        self.by_id = by_id

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return name in self._exact or len(self._loose.get(_norm(name), ())) == 1

    def closest(self, name: str, n: int = 5) -> list[str]:
        key = _norm(name)
        pool = {_norm(c): c for c in self.names}
        hits = difflib.get_close_matches(key, list(pool), n=n, cutoff=0.6)
        if len(hits) < n:  # substring matches help for long or compound names ('desert road' -> 'desert')
            extra = [c for k, c in pool.items() if (key in k or (len(k) > 2 and k in key)) and k not in hits]
            hits += [_norm(c) for c in sorted(extra, key=len)[: n - len(hits)]]
        return [pool[h] for h in hits]

    def id(self, name: str) -> int:
        if not isinstance(name, str):
            raise UnknownConceptError(f"concept names are strings, got {name!r}")
        if name in self._exact:
            return self._exact[name]
        loose = self._loose.get(_norm(name))
        if loose and len(loose) == 1:
            return loose[0]
        near = self.closest(name)
        hint = (f"; closest in the vocabulary: {', '.join(repr(c) for c in near)}" if near
                else "; no similar names in the vocabulary")
        raise UnknownConceptError(f"unknown concept {name!r} (vocabulary of {len(self.names)} concepts){hint}")

    def name(self, cid: int) -> str | None:
        return self.by_id[cid] if 0 <= cid < self.size else None
