"""Exact and near-duplicate groups: content hash, and embedding cosine above a threshold.

Near-duplicates are found the way an IVF vector index searches, not over all pairs: k-means cells
over (a sample of) the normalised embeddings, every image placed in its ``probes`` nearest cells,
exact cosine only between images sharing a cell, then union-find over the pairs above the
threshold. Near duplicates (cosine >= 0.9) nearly always share their nearest cell; the second probe
catches the ones on a boundary.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

from ..errors import InputError


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def near_duplicate_pairs(emb: np.ndarray, threshold: float, *, cells: int | None = None, probes: int = 2,
                         seed: int = 0, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) with cosine >= ``threshold``, searched cell by cell (see module doc)."""
    x = np.asarray(emb, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    cells = cells or max(1, int(np.sqrt(n)))
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(n, size=min(cells, n), replace=False)]
    sample = x[rng.choice(n, size=min(n, 64 * len(cent)), replace=False)]
    for _ in range(6):  # spherical k-means on a sample
        a = (sample @ cent.T).argmax(axis=1)
        for c in range(len(cent)):
            m = sample[a == c]
            if len(m):
                v = m.sum(axis=0)
                cent[c] = v / max(np.linalg.norm(v), 1e-12)
    probes = min(probes, len(cent))
    assign = np.empty((n, probes), np.int64)  # column 0: the nearest cell
    for s in range(0, n, 65536):
        sims = x[s:s + 65536] @ cent.T
        top = np.argpartition(-sims, probes - 1, axis=1)[:, :probes] if probes < len(cent) \
            else np.argsort(-sims, axis=1)
        assign[s:s + 65536] = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), 1), 1)
    order = np.argsort(assign.ravel(), kind="stable")
    owner = np.repeat(np.arange(n), probes)[order]
    bounds = np.searchsorted(assign.ravel()[order], np.arange(len(cent) + 1))
    home = assign[:, 0]  # each image asks only its nearest cell, which holds its neighbours' probes
    pi, pj = [], []
    for c in range(len(cent)):
        m = owner[bounds[c]:bounds[c + 1]]
        qs = np.flatnonzero(home == c) if len(m) >= 2 else ()
        if len(qs) == 0:
            continue
        xm = x[m].T
        for s in range(0, len(qs), block):
            q = qs[s:s + block]
            r, k = np.nonzero((x[q] @ xm) >= threshold)
            a, b = q[r], m[k]
            pi.append(np.minimum(a, b)[a != b])
            pj.append(np.maximum(a, b)[a != b])
    if not pi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(pi), np.concatenate(pj)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def group_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    uf = UnionFind(n)
    for a, b in zip(i.tolist(), j.tolist()):
        uf.union(a, b)
    return uf.labels()


def duplicates(db, threshold: float = 0.95, *, table: str = "images", exact: bool = True, near: bool = True,
               write: bool = True,
               probes: int = 2, storage_options: Mapping[str, str] | None = None) -> pa.Table:
    """Groups of duplicate images -> table (group_id, kind, id, uri, keep, size).

    ``kind``: 'exact' (same ``content_sha256``, when the column exists and ``exact``) or 'near'
    (embedding cosine >= ``threshold``, transitively: union-find over the pairs; ``near=False`` skips
    them). ``keep`` marks one
    image per group (the first id) so SQL can keep one: ``WHERE id NOT IN (SELECT id FROM
    duplicate_groups WHERE NOT keep)``. With ``write`` the result replaces the ``duplicate_groups``
    table of the database (``<table>_duplicate_groups`` for other tables)."""
    from ..lake.store import connect, derived_table_name

    if not 0 < threshold <= 1:
        raise InputError(f"threshold must be in (0, 1]; got {threshold!r}")
    conn = connect(db, storage_options)
    try:
        tbl = conn.open_table(table)
    except Exception as exc:
        raise InputError(f"no table {table!r} in {db}: {exc}") from None
    names = tbl.schema.names
    cols = ["id", "uri", "embedding"] + (["content_sha256"] if exact and "content_sha256" in names else [])
    t = tbl.to_lance().to_table(columns=cols, filter="embedding IS NOT NULL")
    parts = []
    if "content_sha256" in cols:
        parts.append(_exact_groups(t))
    if near and t.num_rows > 1:
        col = t["embedding"].combine_chunks()
        emb = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
        i, j = near_duplicate_pairs(emb, threshold, probes=probes)
        parts.append(_groups_table(t, group_labels(t.num_rows, i, j), "near"))
    out = pa.concat_tables(parts) if parts else _groups_table(t.slice(0, 0), np.zeros(0, np.int64), "near")
    if write:
        conn.create_table(derived_table_name(table, "duplicate_groups"), out, mode="overwrite")
    return out


def _exact_groups(t: pa.Table) -> pa.Table:
    h = t["content_sha256"].to_pylist()
    first: dict = {}
    lab = np.array([first.setdefault(v, k) if v is not None else k for k, v in enumerate(h)])
    return _groups_table(t, lab, "exact")


def _groups_table(t: pa.Table, lab: np.ndarray, kind: str) -> pa.Table:
    sizes = np.bincount(lab, minlength=len(lab)) if len(lab) else np.zeros(0, np.int64)
    rows = np.flatnonzero(sizes[lab] > 1) if len(lab) else np.zeros(0, np.int64)
    rows = rows[np.lexsort((rows, lab[rows]))]
    ids = t["id"].take(pa.array(rows, pa.int64()))
    g = lab[rows]
    keep = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, bool)
    gid = [f"{kind}-{ids[k].as_py()}" for k in np.flatnonzero(keep)]
    gid_per = np.cumsum(keep) - 1
    return pa.table({"group_id": pa.array([gid[k] for k in gid_per], pa.string()),
                     "kind": pa.array([kind] * len(rows), pa.string()), "id": ids,
                     "uri": t["uri"].take(pa.array(rows, pa.int64())), "keep": pa.array(keep, pa.bool_()),
                     "size": pa.array(sizes[g] if len(g) else [], pa.int64())})
