"""Concept slices of a model's errors: which concepts (and pairs) a model fails on, named in words.

A slice is the set of images of a scope (all images, or one label) where a concept is present
(weight > ``min_weight``), or two concepts are. Its error rate is compared with the rest of the
scope; every (scope, slice) with ``min_support`` images on both sides is tested and the p-values go
through one Benjamini-Hochberg family, so a model without a systematic failure gets (at false
discovery rate ``alpha``) no slice at all. The counts come from one sparse image x concept matrix,
which also gives the example images of each slice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..records import to_records
from .connection import arrow_table, check_column, connection_state, open_connection, quote_ident
from .statistics import benjamini_hochberg, proportion_test

_COLUMNS = ("scope", "concepts", "slice", "rank", "n_scope", "n_slice", "metric_slice", "metric_rest", "change",
            "p_value", "q_value", "wrong_examples", "right_examples")


@dataclass
class SlicesResult:
    """Slices where the error rate (or mean score) differs most; ``groups`` holds worst-group accuracy."""

    table: pa.Table
    groups: pa.Table
    metric: str
    n_images: int
    n_errors: float
    params: dict = field(default_factory=dict)
    rows: pa.Table | None = None  # id, uri, label, prediction, target: what the examples come from

    def records(self) -> list[dict]:
        return to_records(self.table)

    def summary(self, top: int = 10) -> str:
        p = self.params
        what = "error rate" if self.metric == "error" else f"mean {p.get('score_column')}"
        lines = [f"{self.n_images} images, overall {what} {self.n_errors / max(self.n_images, 1):.3f}; "
                 f"{self.table.num_rows} slices with BH q < {p.get('alpha')} (support >= {p.get('min_support')}, "
                 f"{p.get('tested')} tested)"]
        for r in self.table.to_pylist()[:top]:
            ex = ", ".join(r["wrong_examples"][:3])
            lines.append(f"  {r['rank']:>2}. [{r['scope']}] {r['slice']}: {what} {r['metric_slice']:.3f} vs "
                         f"{r['metric_rest']:.3f} (n={r['n_slice']}, q={r['q_value']:.2g})  e.g. {ex}")
        worst = [r for r in self.groups.filter(self.groups["worst"]).to_pylist() if r["accuracy"] < 1]
        if worst:
            lines.append("worst group per label (accuracy, labels with an error):")
            for r in worst:
                lines.append(f"  {r['label']} / {r['concept']}: {r['accuracy']:.3f} (n={r['n']})")
        return "\n".join(lines)

    def examples(self, rank: int = 1, n: int = 8, wrong: bool | None = None) -> pa.Table:
        """Images of the slice ranked ``rank``: wrong ones (``wrong=True``), right ones, or both."""
        if not 1 <= rank <= self.table.num_rows:
            raise InputError(f"rank must be between 1 and {self.table.num_rows}; got {rank!r}")
        r = self.table.slice(rank - 1, 1).to_pylist()[0]
        uris = (r["wrong_examples"] if wrong in (None, True) else []) + \
               (r["right_examples"] if wrong in (None, False) else [])
        import pyarrow.compute as pc

        return self.rows.filter(pc.is_in(self.rows["uri"], pa.array(uris, pa.string()))).slice(0, n)

    def html(self, path, root: str | None = None):
        """A self-contained page with the figure and thumbnails of every slice's examples (``root``:
        where relative uris resolve; default the table's recorded image root)."""
        from .slices_html import slices_html

        return slices_html(self, path, root=root if root is not None else self.params.get("image_root"))

    def plot(self, path, top: int = 12):
        """Horizontal bars: metric inside vs outside each of the ``top`` slices."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rs = self.table.to_pylist()[:top]
        fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rs), 2) + 1.2))
        y = np.arange(len(rs))[::-1]
        ax.barh(y + 0.2, [r["metric_slice"] for r in rs], 0.4, label="in slice", color="#c0392b")
        ax.barh(y - 0.2, [r["metric_rest"] for r in rs], 0.4, label="rest of scope", color="#95a5a6")
        ax.set_yticks(y, [f"[{r['scope']}] {r['slice']} (n={r['n_slice']})" for r in rs])
        ax.set_xlabel("error rate" if self.metric == "error" else f"mean {self.params.get('score_column')}")
        ax.set_title("Concept slices of model errors" if rs else "No significant slice")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def slices(db, label_column: str = "label", prediction_column: str | None = None, *,
           score_column: str | None = None, split_column: str | None = None, split: str | None = None,
           zero_shot: str | None = None, min_support: int = 20, min_weight: float = 0.0, alpha: float = 0.05,
           top: int = 20, pairs: bool = True, pair_candidates: int = 40, examples: int = 4,
           where: str | None = None, params: Mapping[str, Any] | None = None, table: str = "images",
           storage_options: Mapping[str, str] | None = None) -> SlicesResult:
    """Concepts (and pairs of concepts) whose presence most raises a model's error rate, overall and
    within each label.

    The target per image is ``prediction != label`` (``prediction_column``, or predictions made here
    by zero-shot classification with the table's CLIP model and the prompt template ``zero_shot``,
    e.g. ``"a photo of a {}"``), or, without predictions, the numeric ``score_column`` (a loss; the
    test is then Welch's t on the means). ``split_column`` / ``split``: only that split's images.
    Ranked by the rise in error rate (slice minus the rest of its scope), significant ones only.
    ``pairs``: also the pairs among the ``pair_candidates`` strongest single concepts of each scope,
    kept when the pair's error rate beats both of its concepts alone.
    """
    if prediction_column is None and zero_shot is None and score_column is None:
        raise InputError("give prediction_column, zero_shot or score_column")
    if min_support < 1:
        raise InputError(f"min_support must be >= 1; got {min_support!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1; got {alpha!r}")
    if zero_shot is not None and ("{}" not in zero_shot):
        raise InputError(f"zero_shot must be a template with {{}} for the label; got {zero_shot!r}")
    con, owned = open_connection(db, table=table, storage_options=storage_options)
    try:
        st = connection_state(con)
        cols = {"label": check_column(con, label_column, what="label column")}
        if prediction_column is not None and zero_shot is None:
            cols["prediction"] = check_column(con, prediction_column, what="prediction column")
        if score_column is not None:
            cols["score"] = check_column(con, score_column, what="score column")
        conds = [f"{quote_ident(label_column)} IS NOT NULL", "concept_ids IS NOT NULL"]
        bind = dict(params or {})
        if split_column is not None:
            check_column(con, split_column, what="split column")
            if split is not None:
                conds.append(f"{quote_ident(split_column)} = $_split")
                bind["_split"] = split
        if where:
            conds.append(f"({where})")
        sel = ", ".join(f"{c} AS {k}" for k, c in cols.items() if k != "label")
        rows = arrow_table(con, f"SELECT id, uri, {quote_ident(label_column)} AS label"
                                f"{', ' + sel if sel else ''}, concept_ids, concept_weights FROM images "
                                f"WHERE {' AND '.join(conds)}", bind or None)
        names = st.names
        image_root = _image_root(db, table, storage_options)
    finally:
        if owned:
            con.close()
    if rows.num_rows == 0:
        raise InputError(f"no images with concepts and a {label_column!r} value")
    if zero_shot is not None:
        rows = rows.append_column("prediction", zero_shot_predictions(db, rows, zero_shot, table, storage_options))
    labels = [str(x) for x in rows["label"].to_pylist()]
    if "prediction" in rows.column_names:
        pred = [None if x is None else str(x) for x in rows["prediction"].to_pylist()]
        y = np.array([p != lab for p, lab in zip(pred, labels)], dtype=np.float64)
        metric = "error"
    else:
        y = np.asarray(rows["score"].to_numpy(zero_copy_only=False), dtype=np.float64)
        if np.isnan(y).any():
            raise InputError(f"score column {score_column!r} has missing values in the selected images")
        metric = "score"
    X = presence_matrix(rows, names.size, min_weight)
    uris = np.array(rows["uri"].to_pylist(), dtype=object)
    found = _all_scopes(X, y, labels, metric, min_support, pairs, pair_candidates)
    tbl = _report(found, alpha, top, names, X, y, uris, labels, metric, examples)
    groups = worst_groups(X, y, labels, names, min_support) if metric == "error" else _empty_groups()
    rows = rows.drop_columns(["concept_ids", "concept_weights"]).append_column("target", pa.array(y))
    return SlicesResult(table=tbl, groups=groups, metric=metric, n_images=len(y), n_errors=float(y.sum()),
                        params={"min_support": min_support, "min_weight": min_weight, "alpha": alpha, "top": top,
                                "pairs": pairs, "score_column": score_column, "zero_shot": zero_shot,
                                "tested": sum(len(f["p"]) for f in found), "image_root": image_root},
                        rows=rows)


def _image_root(db, table, storage_options):
    from ..lake.store import read_metadata

    try:
        return read_metadata(db, table, storage_options).get("image_root")
    except Exception:  # no metadata: relative uris resolve from the working directory
        return None


def zero_shot_predictions(db, rows: pa.Table, template: str, table: str, storage_options) -> pa.Array:
    """The label whose prompt ``template.format(label)`` is nearest (cosine) to each image's embedding."""
    import pyarrow.compute as pc

    from ..retrieval.table import ConceptTable

    t = ConceptTable(db, table, storage_options)
    enc = t.encoder()
    classes = sorted({str(x) for x in rows["label"].to_pylist()})
    txt = np.asarray(enc.encode_text([template.format(c) for c in classes]), dtype=np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    emb_tbl = t.tbl.to_lance().to_table(columns=["id", "embedding"]).filter(pc.field("id").isin(rows["id"]))
    by_id = dict(zip(emb_tbl["id"].to_pylist(), range(emb_tbl.num_rows)))
    col = emb_tbl["embedding"].combine_chunks()
    E = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
    idx = np.array([by_id[i] for i in rows["id"].to_pylist()])
    sims = E[idx] @ txt.T
    return pa.array([classes[k] for k in sims.argmax(axis=1)], pa.string())


def presence_matrix(rows: pa.Table, n_concepts: int, min_weight: float):
    """Sparse boolean image x concept matrix (CSR) of weight > ``min_weight``."""
    import scipy.sparse as sp

    ids = rows["concept_ids"].combine_chunks()
    w = rows["concept_weights"].combine_chunks()
    offs = ids.offsets.to_numpy()
    cid = ids.values.to_numpy(zero_copy_only=False).astype(np.int64)
    wv = w.values.to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(offs) - 1), np.diff(offs))
    keep = wv > min_weight
    X = sp.csr_matrix((np.ones(int(keep.sum()), np.float64), (row[keep], cid[keep])),
                      shape=(rows.num_rows, n_concepts))
    X.data[:] = 1.0  # a concept listed twice is still one presence
    return X


def _tests(n_in, s_in, q_in, n_all, s_all, q_all, metric):
    """Two-sided p-values of slice vs rest: two-proportion/Fisher on error counts, Welch t on scores."""
    n_out, s_out = n_all - n_in, s_all - s_in
    if metric == "error":
        return proportion_test(s_in, n_in, s_out, n_out, "two-sided")
    from scipy.special import stdtr

    q_out = q_all - q_in
    with np.errstate(invalid="ignore", divide="ignore"):
        m1, m2 = s_in / n_in, s_out / n_out
        v1 = np.maximum(q_in / n_in - m1 * m1, 0) * n_in / np.maximum(n_in - 1, 1)
        v2 = np.maximum(q_out / n_out - m2 * m2, 0) * n_out / np.maximum(n_out - 1, 1)
        se2 = v1 / n_in + v2 / n_out
        t = (m1 - m2) / np.sqrt(se2)
        df = se2 ** 2 / ((v1 / n_in) ** 2 / np.maximum(n_in - 1, 1) + (v2 / n_out) ** 2 / np.maximum(n_out - 1, 1))
        p = 2 * stdtr(df, -np.abs(t))
    return np.where(np.isfinite(p), p, 1.0)


def _scope(X, y, metric, min_support, pairs, pair_candidates):
    """Single concepts and pairs of one scope (rows of X) with enough support on both sides."""
    n = X.shape[0]
    s_all, q_all = y.sum(), (y * y).sum()
    cnt = np.asarray(X.sum(axis=0)).ravel()
    s = X.T @ y
    q = X.T @ (y * y)
    ok = np.flatnonzero((cnt >= min_support) & (n - cnt >= min_support))
    out = {"concepts": [(int(c),) for c in ok], "n_in": cnt[ok], "s_in": s[ok], "q_in": q[ok]}
    if pairs and len(ok) > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            d = s[ok] / cnt[ok] - (s_all - s[ok]) / (n - cnt[ok])
        cand = ok[np.argsort(-d)[:pair_candidates]]
        Xc = X[:, cand]
        co = (Xc.T @ Xc).toarray()
        sy = (Xc.T @ Xc.multiply(y[:, None])).toarray()
        syy = (Xc.T @ Xc.multiply((y * y)[:, None])).toarray()
        rate = dict(zip(ok.tolist(), (s[ok] / cnt[ok]).tolist()))
        i, j = np.triu_indices(len(cand), 1)
        good = (co[i, j] >= min_support) & (n - co[i, j] >= min_support)
        i, j = i[good], j[good]
        # the pair must beat the stronger of its two concepts alone, tested: its images vs the
        # stronger concept's other images, Bonferroni over the pairs (else noise concepts ride along
        # with a real slice)
        best = np.where([rate[int(cand[a])] >= rate[int(cand[b])] for a, b in zip(i, j)], i, j)
        bc = cand[best] if len(best) else best
        n_pair, e_pair = co[i, j], sy[i, j]
        n_rest, e_rest = cnt[bc] - n_pair, s[bc] - e_pair
        if len(i):
            beats = (n_rest > 0) & (e_pair / n_pair > e_rest / np.maximum(n_rest, 1))
            p_beat = np.ones(len(i))
            p_beat[beats] = (proportion_test(e_pair[beats], n_pair[beats], e_rest[beats], n_rest[beats], "greater")
                             if metric == "error" else 0.0)
            keep = beats & (p_beat < 0.05 / len(i))  # Bonferroni over the scope's pairs
            out["concepts"] += [(int(cand[a]), int(cand[b])) for a, b in zip(i[keep], j[keep])]
            out["n_in"] = np.concatenate([out["n_in"], n_pair[keep]])
            out["s_in"] = np.concatenate([out["s_in"], e_pair[keep]])
            out["q_in"] = np.concatenate([out["q_in"], syy[i, j][keep]])
    out["p"] = _tests(out["n_in"], out["s_in"], out["q_in"], n, s_all, q_all, metric) if out["concepts"] \
        else np.zeros(0)
    out.update(n=n, s_all=s_all)
    return out


def _all_scopes(X, y, labels, metric, min_support, pairs, pair_candidates):
    lab = np.array(labels, dtype=object)
    found = [dict(_scope(X, y, metric, min_support, pairs, pair_candidates), scope="all", rows=None)]
    for L in sorted(set(labels)):
        r = np.flatnonzero(lab == L)
        if len(r) >= 2 * min_support:
            found.append(dict(_scope(X[r], y[r], metric, min_support, pairs, pair_candidates), scope=L, rows=r))
    return found


def _report(found, alpha, top, names, X, y, uris, labels, metric, k_examples) -> pa.Table:
    p = np.concatenate([f["p"] for f in found]) if found else np.zeros(0)
    q = benjamini_hochberg(p)
    out = {c: [] for c in _COLUMNS}
    at = 0
    recs = []
    for f in found:
        for j, cs in enumerate(f["concepts"]):
            qi, pi = q[at + j], f["p"][j]
            n_in, s_in = f["n_in"][j], f["s_in"][j]
            m_in = s_in / n_in
            m_out = (f["s_all"] - s_in) / (f["n"] - n_in)
            if qi < alpha and m_in > m_out:
                recs.append((m_in - m_out, f, cs, n_in, m_in, m_out, pi, qi))
        at += len(f["concepts"])
    recs.sort(key=lambda r: (-r[0], r[7]))
    for rank, (d, f, cs, n_in, m_in, m_out, pi, qi) in enumerate(recs[:top], 1):
        cn = [names.name(c) for c in cs]
        members = f["rows"] if f["rows"] is not None else np.arange(X.shape[0])
        sub = X[members][:, list(cs)]
        inside = members[np.asarray(sub.sum(axis=1)).ravel() == len(cs)]
        wrong = inside[y[inside] > 0] if metric == "error" else inside[np.argsort(-y[inside])]
        right = inside[y[inside] == 0] if metric == "error" else inside[np.argsort(y[inside])]
        out["scope"].append(str(f["scope"]))
        out["concepts"].append(cn)
        out["slice"].append(" & ".join(cn))
        out["rank"].append(rank)
        out["n_scope"].append(int(f["n"]))
        out["n_slice"].append(int(n_in))
        out["metric_slice"].append(float(m_in))
        out["metric_rest"].append(float(m_out))
        out["change"].append(float(d))
        out["p_value"].append(float(pi))
        out["q_value"].append(float(qi))
        out["wrong_examples"].append([str(u) for u in uris[wrong[:k_examples]]])
        out["right_examples"].append([str(u) for u in uris[right[:k_examples]]])
    types = {"scope": pa.string(), "concepts": pa.list_(pa.string()), "slice": pa.string(), "rank": pa.int32(),
             "n_scope": pa.int64(), "n_slice": pa.int64(), "wrong_examples": pa.list_(pa.string()),
             "right_examples": pa.list_(pa.string())}
    return pa.table({c: pa.array(out[c], types.get(c, pa.float64())) for c in _COLUMNS})


def worst_groups(X, y, labels, names, min_support) -> pa.Table:
    """Accuracy per (label, concept) group with >= ``min_support`` images; ``worst`` marks each label's
    lowest (the worst-group accuracy of robustness papers, over concept-defined groups)."""
    lab = np.array(labels, dtype=object)
    out = {"label": [], "concept": [], "n": [], "accuracy": [], "worst": []}
    for L in sorted(set(labels)):
        r = np.flatnonzero(lab == L)
        cnt = np.asarray(X[r].sum(axis=0)).ravel()
        err = X[r].T @ y[r]
        ok = np.flatnonzero(cnt >= min_support)
        if not len(ok):
            continue
        acc = 1 - err[ok] / cnt[ok]
        w = int(np.argmin(acc))
        for k, c in enumerate(ok):
            out["label"].append(L)
            out["concept"].append(names.name(int(c)))
            out["n"].append(int(cnt[c]))
            out["accuracy"].append(float(acc[k]))
            out["worst"].append(k == w)
    return pa.table({"label": pa.array(out["label"], pa.string()), "concept": pa.array(out["concept"], pa.string()),
                     "n": pa.array(out["n"], pa.int64()), "accuracy": pa.array(out["accuracy"], pa.float64()),
                     "worst": pa.array(out["worst"], pa.bool_())})


def _empty_groups() -> pa.Table:
    return worst_groups(np.zeros((0, 0)), np.zeros(0), [], None, 1)
