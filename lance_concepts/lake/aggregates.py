"""The sparse (group x concept) cross-tabulation that drift and spurious reports are built on.

Shared by the rollup (which stores it per day/month and per categorical column) and by the query-time
crosstab (which computes it from the postings when no current rollup exists): one accumulator, so both
paths give identical numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import InputError

# ------------------------------------------------------------------------------ sparse cross-table
WINDOWS = ("day", "week", "month", "quarter", "year")


@dataclass
class Crosstab:
    """Per group (time window, label, (label, split), ...) and concept: image counts and weight sums.

    ``n[g]`` images in group g; ``present[g, c]`` images of g whose weight for concept c exceeds
    ``min_weight``; ``weight_sum[g, c]`` / ``weight_sq[g, c]`` sums of weights / squared weights
    (absent concepts count as weight 0; ``weight_sq`` is None unless asked for). ``groups`` holds the
    group values, sorted (tuples when grouping by several columns)."""

    groups: list
    n: np.ndarray
    present: np.ndarray
    weight_sum: np.ndarray
    weight_sq: np.ndarray | None
    min_weight: float
    dropped_null_groups: int = 0
    engine: str = ""


class Accumulator:
    def __init__(self, n_concepts: int, ngroup_cols: int, min_weight: float, second_moment: bool):
        self.C = max(int(n_concepts), 1)
        self.k = ngroup_cols
        self.thr = np.float32(min_weight)
        self.min_weight = float(min_weight)
        self.second = second_moment
        self.values: list = []
        self.index: dict = {}
        self.cap = 0
        self.n = np.zeros(0, np.int64)
        self.present = np.zeros((0, self.C), np.int64)
        self.wsum = np.zeros((0, self.C), np.float64)
        self.wsq = np.zeros((0, self.C), np.float64) if second_moment else None
        self.dropped = 0
        # with the numba kernel, the rows of a batch are split over threads with private sums
        self.threads = _threads() if _numba_kernel() is not None else 1
        self.extra: list[list[np.ndarray]] = [[] for _ in range(self.threads - 1)]

    def _grow(self, G: int):
        if G <= self.cap:
            return
        new = max(G, self.cap * 2, 8)
        pad = new - self.cap
        self.n = np.concatenate([self.n, np.zeros(pad, np.int64)])
        self.present = np.vstack([self.present, np.zeros((pad, self.C), np.int64)])
        self.wsum = np.vstack([self.wsum, np.zeros((pad, self.C))])
        if self.second:
            self.wsq = np.vstack([self.wsq, np.zeros((pad, self.C))])
        for ex in self.extra:
            if ex:
                ex[:] = [np.vstack([a, np.zeros((pad, self.C), a.dtype)]) for a in ex]
        self.cap = new

    def _arrays(self, t: int) -> list[np.ndarray]:
        if t == 0:
            return [self.present, self.wsum, self.wsq if self.second else np.zeros((1, 1))]
        ex = self.extra[t - 1]
        if not ex:
            ex[:] = [np.zeros_like(self.present), np.zeros_like(self.wsum),
                     np.zeros_like(self.wsq) if self.second else np.zeros((1, 1))]
        return ex

    def _fold(self) -> None:
        for ex in self.extra:
            if ex:
                self.present += ex[0]
                self.wsum += ex[1]
                if self.second:
                    self.wsq += ex[2]
                ex.clear()

    def _codes(self, cols: list[pa.Array]) -> np.ndarray:
        """Global group code per row (-1 where any group column is null)."""
        n = len(cols[0])
        if len(cols) == 1:  # one column: map the batch dictionary straight to global codes
            col = cols[0].combine_chunks() if isinstance(cols[0], pa.ChunkedArray) else cols[0]
            enc = col.dictionary_encode()
            mapping = np.empty(len(enc.dictionary) + 1, np.int64)
            for j, val in enumerate(enc.dictionary.to_pylist()):
                gi = self.index.get(val)
                if gi is None:
                    gi = self.index[val] = len(self.values)
                    self.values.append(val)
                mapping[j] = gi
            mapping[-1] = -1
            idx = np.asarray(enc.indices.fill_null(len(enc.dictionary)), dtype=np.int64)
            self.dropped += int(enc.indices.null_count)
            self._grow(len(self.values))
            return mapping[idx]
        combined = np.zeros(n, np.int64)
        valid = np.ones(n, bool)
        uniques = []
        for col in cols:
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            enc = col.dictionary_encode()
            idx = enc.indices
            valid &= np.asarray(idx.is_valid())
            codes = np.asarray(idx.fill_null(0), dtype=np.int64)
            dic = enc.dictionary.to_pylist()
            uniques.append(dic)
            combined = combined * max(len(dic), 1) + codes
        self.dropped += int((~valid).sum())
        local, inv = np.unique(combined[valid], return_inverse=True)
        mapping = np.empty(len(local), np.int64)
        for j, key in enumerate(local.tolist()):
            parts = []
            for dic in reversed(uniques):
                key, r = divmod(key, max(len(dic), 1))
                parts.append(dic[r])
            val = parts[0] if self.k == 1 else tuple(reversed(parts))
            gi = self.index.get(val)
            if gi is None:
                gi = self.index[val] = len(self.values)
                self.values.append(val)
            mapping[j] = gi
        out = np.full(n, -1, np.int64)
        out[valid] = mapping[inv]
        self._grow(len(self.values))
        return out

    def add(self, group_cols: list[pa.Array], ids, ws) -> None:
        if len(group_cols[0]) == 0:
            return
        if isinstance(ids, pa.ChunkedArray):
            ids, ws = ids.combine_chunks(), ws.combine_chunks()
        if ids.null_count:  # error rows: no concepts, not counted anywhere
            keep = pa.array(np.asarray(ids.is_valid()))
            ids, ws = ids.filter(keep), ws.filter(keep)
            group_cols = [g.filter(keep) for g in group_cols]
            if len(ids) == 0:
                return
        codes = self._codes(group_cols)
        off = np.asarray(ids.offsets)
        woff = np.asarray(ws.offsets)
        if not np.array_equal(np.diff(off), np.diff(woff)):
            raise InputError("concept_ids and concept_weights have different lengths in some rows")
        cids = np.asarray(ids.values)[off[0]:off[-1]]
        w = np.asarray(ws.values)[woff[0]:woff[-1]]
        C = self.C
        if cids.size and (int(cids.min()) < 0 or int(cids.max()) >= C):
            raise InputError(f"concept ids outside the concepts table (0..{C - 1}) in images.concept_ids")
        ok_rows = codes >= 0
        self.n += np.bincount(codes[ok_rows], minlength=self.cap)
        if not cids.size:
            return
        kernel = _numba_kernel()
        if kernel is not None:  # one fused pass (optional accelerator), rows split over threads
            rel = off - off[0]
            T = self.threads if len(codes) >= 4096 else 1
            cuts = np.linspace(0, len(codes), T + 1).astype(np.int64)

            def run(t):
                a, b = cuts[t], cuts[t + 1]
                pr, ws_, sq = self._arrays(t)
                kernel(codes[a:b], rel[a:b + 1], cids, w, C, self.thr, pr.reshape(-1), ws_.reshape(-1),
                       sq.reshape(-1), self.second)

            if T == 1:
                run(0)
            else:
                for t in range(1, T):
                    self._arrays(t)  # allocate in this thread
                futs = [_pool().submit(run, t) for t in range(1, T)]
                run(0)
                for f in futs:
                    f.result()
            return
        rep = np.repeat(codes, np.diff(off))
        if not ok_rows.all():
            m = rep >= 0
            rep, cids, w = rep[m], cids[m], w[m]
        key = rep * C + cids
        size = self.cap * C
        self.wsum += np.bincount(key, weights=w, minlength=size).reshape(self.cap, C)
        if self.second:
            self.wsq += np.bincount(key, weights=np.square(w, dtype=np.float64), minlength=size).reshape(self.cap, C)
        if self.thr > 0:
            key = key[w > self.thr]
        self.present += np.bincount(key, minlength=size).reshape(self.cap, C)

    def result(self, engine: str) -> Crosstab:
        self._fold()
        G = len(self.values)
        order = np.array(sorted(range(G), key=lambda i: sort_key(self.values[i])), dtype=np.int64)
        return Crosstab(groups=[self.values[i] for i in order], n=self.n[:G][order],
                        present=self.present[:G][order], weight_sum=self.wsum[:G][order],
                        weight_sq=None if self.wsq is None else self.wsq[:G][order], min_weight=self.min_weight,
                        dropped_null_groups=self.dropped, engine=engine)


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("LANCE_CONCEPTS_THREADS", "0"))) if os.environ.get(
            "LANCE_CONCEPTS_THREADS") else max(1, min(os.cpu_count() or 1, 4))
    except ValueError:
        return 1


_POOL: list = []


def _pool():
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=max(1, _threads() - 1), thread_name_prefix="lc-crosstab"))
    return _POOL[0]


def optional_kernel(build):
    """Memoised ``build(numba)`` -> a jitted function, or None when numba is missing, broken or turned
    off (LANCE_CONCEPTS_NUMBA=0): numba is optional and every kernel has a numpy path with the same
    numbers."""
    cache: list = []

    def get():
        if not cache:
            kernel = None
            if os.environ.get("LANCE_CONCEPTS_NUMBA", "1") not in ("0", "false", "no"):
                try:
                    import numba

                    kernel = build(numba)
                except Exception:  # numba missing or broken: the numpy path
                    kernel = None
            cache.append(kernel)
        return cache[0]

    get.__doc__ = build.__doc__
    return get


def _build_crosstab_kernel(numba):
    """The fused crosstab kernel when numba is installed (it is optional: numpy's bincount gives the
    same numbers, about 2-3x slower). LANCE_CONCEPTS_NUMBA=0 turns it off."""

    @numba.njit(cache=True, nogil=True)
    def _k(codes, off, cids, w, C, thr, present, wsum, wsq, second):  # pragma: no cover - jitted
        for i in range(codes.shape[0]):
            g = codes[i]
            if g < 0:
                continue
            base = g * C
            for j in range(off[i], off[i + 1]):
                k = base + cids[j]
                x = w[j]
                if x > thr:
                    present[k] += 1
                xd = np.float64(x)  # squares in float64, as the numpy path (float32 loses ~1e-8)
                wsum[k] += xd
                if second:
                    wsq[k] += xd * xd

    return _k


_numba_kernel = optional_kernel(_build_crosstab_kernel)


def sort_key(v):
    if isinstance(v, tuple):
        return tuple(sort_key(x) for x in v)
    return (v is None, str(type(v)), v)


def truncate_to_window(arr: pa.Array, every: str) -> pa.Array:
    """pyarrow equivalent of DuckDB date_trunc(every, col) for timestamp/date columns."""
    import pyarrow.compute as pc

    if pa.types.is_date(arr.type):
        arr = arr.cast(pa.timestamp("us"))
    kw = {"week_starts_monday": True} if every == "week" else {}
    return pc.floor_temporal(arr, multiple=1, unit=every, **kw)
