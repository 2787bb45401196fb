"""FALCON: name the features of an image representation with concepts (the method; no database here).

Implemented from the description of FALCON (Kalibhat et al., "Identifying Interpretable Subspaces in
Image Representations", ICML 2023) in the project's METHODS.md; no code of the original is used.

Pipeline (``FalconExplainer.fit``), for a representation ``R`` (images x features):

1. each image's row is L2-normalised;
2. a *global* high threshold ``mean(R) + high_std * std(R)`` over all entries of ``R`` marks the
   highly activating (image, feature) pairs (faithful: not a per-feature top-k);
3. images whose *set* of highly activated features is identical form a feature group; groups with
   more than ``min_group_size`` images are kept (a single feature is a group of one);
4. the group's evidence images are its member images, or (with a model) GradCAM crops of them;
5. a group is interpretable when the mean pairwise cosine of its evidence images' CLIP embeddings,
   diagonal included, exceeds ``coherence_threshold`` (0.8);
6. concept scores: each evidence image gets ``p(doc | image) = softmax(temperature * cosine)`` over
   ONE global list of documents (the vocabulary's concepts, plus optional captions), keeps its
   ``top_k`` documents, and ``score(term) = mean over images of p(term | image) * [term in top-k]``;
   a caption passes its probability to each of its words and bigrams;
7. contrastive filtering: lowly activating images have every group feature below ``mean(R)``; they
   are ranked by the dot product of their other features with the mean other features of the group's
   images, and those with similarity >= ``low_similarity`` (0.3) are kept, at most ``max_low`` (10).
   A term is *spurious* when its score on the lowly set is at least ``spurious_threshold`` times its
   OWN score on the highly activating set (recalibrated, see below): the images without the feature
   show it nearly as much as those with it, so it is not what the feature encodes (a common
   background). Comparing with the group's top term instead made removal depend on an unrelated
   word. Spurious terms are removed from the labels and those that would have been shown are
   reported separately;
8. per group: the top ``n_terms`` single words and top ``n_terms`` phrases (two or more words).

Faithful vs recalibrated: steps 1-5, 7's choice of lowly activating images and 8 follow FALCON.
FALCON's removal cut-off (an absolute 0.1) belongs to its softmax over a shard of LAION captions and
means nothing for one global softmax over a vocabulary, so the cut-off here is *relative* to the
term's own score on the highly activating images (``spurious_threshold``, default 0.25: a term is
spurious when the lowly activating images show it at least a quarter as strongly as the highly
activating images show it). The softmax temperature (100, CLIP's logit scale) is FALCON's.

The whole core is vectorised numpy over row chunks; the LanceDB layer (``falcon``) reads a vector
column of the images table, writes three tables and returns JSON-able records. ``transfer`` carries
labels to another representation of the same images through a ridge map.

Tables (for an images table ``T`` other than ``images`` they are prefixed ``T_``); every row carries
``representation`` (the explained column, or the name given), and a new run of the same
representation replaces its rows:

``features``  one row per feature group: ``group_id``, ``features`` list<int32>, ``n_features``,
    ``concepts`` / ``concept_scores`` (single words, strongest first), ``bigrams`` / ``bigram_scores``,
    ``spurious`` with ``spurious_high_scores`` / ``spurious_low_scores``, ``n_high``, ``n_low``,
    ``high_ids``, ``low_ids``, ``coherence``, ``interpretable``, ``used_crops``, ``evidence``,
    ``method`` ('falcon' | 'transfer'), ``representation_fingerprint``, ``params`` (JSON) and, for
    transferred labels, ``source_representation``, ``source_groups``, ``source_weights``, ``fit_r2``.
    The table's Lance schema metadata (key ``lance_concepts``) holds each representation's
    parameters and summary (including the fraction of features explained).
``feature_concepts``  the same labels in long form: ``group_id``, ``kind`` ('word' | 'phrase' |
    'spurious'), ``rank``, ``concept``, ``score``, ``low_score`` (spurious terms).
``image_features``  per image: ``image_id``, ``group_id``, ``features``, ``labels`` (the group's top
    labels), ``exact`` (the group of exactly the image's highly active features; otherwise all of
    the group's features are among them), ``interpretable``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import sparse

from ..errors import InputError
from ..threads import hot_path

_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*", re.UNICODE)


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    n[n == 0] = 1.0
    return x / n


# ----------------------------------------------------------------------------------------------
# Term corpus: documents (concepts, optional captions) -> terms (words, phrases)
# ----------------------------------------------------------------------------------------------

class _Corpus:
    """Documents with unit embeddings, and the sparse incidence of the terms each document carries."""

    def __init__(self, concepts: Sequence[str], concept_embeddings: np.ndarray | None,
                 captions: Sequence[str] | None = None, caption_embeddings: np.ndarray | None = None):
        concepts = [str(c) for c in concepts]
        if not concepts:
            raise InputError("the concept vocabulary is empty")
        terms: dict[str, int] = {}
        rows, cols = [], []
        for i, c in enumerate(concepts):
            t = " ".join(c.split())
            j = terms.setdefault(t, len(terms))
            rows.append(i)
            cols.append(j)
        n_docs = len(concepts)
        emb = None
        if concept_embeddings is not None:
            emb = np.asarray(concept_embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(concepts):
                raise InputError(f"concept_embeddings must have shape ({len(concepts)}, d); got {emb.shape}")
        if captions is not None and len(captions):
            if caption_embeddings is None or emb is None:
                raise InputError("captions need caption_embeddings and concept_embeddings")
            cap = np.asarray(caption_embeddings, dtype=np.float32)
            if cap.shape != (len(captions), emb.shape[1]):
                raise InputError(f"caption_embeddings must have shape ({len(captions)}, {emb.shape[1]}); "
                                 f"got {cap.shape}")
            from .vocabulary import STOPWORDS

            for k, text in enumerate(captions):
                seen = set()
                prev = None
                for w in _WORD.findall(str(text or "").lower()):
                    if w in STOPWORDS or len(w) < 2:
                        prev = None
                        continue
                    for t in ([w] if prev is None else [w, f"{prev} {w}"]):
                        if t not in seen:
                            seen.add(t)
                            rows.append(n_docs + k)
                            cols.append(terms.setdefault(t, len(terms)))
                    prev = w
            n_docs += len(captions)
            emb = np.concatenate([emb, cap], axis=0)
        self.terms = list(terms)
        self.n_words = np.array([len(t.split()) for t in self.terms], dtype=np.int32)
        self.doc_terms = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (np.asarray(rows), np.asarray(cols))),
            shape=(n_docs, len(self.terms)))
        self.doc_terms.sum_duplicates()
        self.doc_terms.data[:] = 1.0
        self.embeddings = None if emb is None else _unit(emb)
        self.n_docs = n_docs
        self.n_concepts = len(concepts)


def _topk_softmax(evidence: np.ndarray, docs: np.ndarray, temperature: float, top_k: int,
                  chunk: int = 2048) -> sparse.csr_matrix:
    """``p(doc | image) = softmax(temperature * cos)`` over all documents, kept on each row's top-k."""
    n, nd = evidence.shape[0], docs.shape[0]
    k = min(int(top_k), nd)
    out_idx = np.empty((n, k), dtype=np.int32)
    out_val = np.empty((n, k), dtype=np.float32)
    docs_t = np.ascontiguousarray(docs.T)
    for s in range(0, n, chunk):
        e = _unit(evidence[s:s + chunk])
        logits = e @ docs_t
        logits *= np.float32(temperature)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        z = logits.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        if k < nd:
            idx = np.argpartition(logits, nd - k, axis=1)[:, nd - k:]
        else:
            idx = np.broadcast_to(np.arange(nd), logits.shape)
        out_idx[s:s + chunk] = idx
        out_val[s:s + chunk] = np.take_along_axis(logits, idx, axis=1) / z
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    return sparse.csr_matrix((out_val.ravel(), out_idx.ravel(), indptr), shape=(n, nd))


def _topk_scores(scores, top_k: int) -> sparse.csr_matrix:
    """Given per-image concept evidence (e.g. SpLiCE weights), ``p = w / sum(w)`` kept on the top-k."""
    if sparse.issparse(scores):
        m = sparse.csr_matrix(scores, dtype=np.float32, copy=True)
    else:
        m = sparse.csr_matrix(np.asarray(scores, dtype=np.float32))
    m.data = np.maximum(m.data, 0)
    m.eliminate_zeros()
    rows, cols, vals = [], [], []
    for i in range(m.shape[0]):
        a, b = m.indptr[i], m.indptr[i + 1]
        v, c = m.data[a:b], m.indices[a:b]
        tot = float(v.sum())
        if tot <= 0:
            continue
        if len(v) > top_k:
            keep = np.argpartition(v, len(v) - top_k)[len(v) - top_k:]
            v, c = v[keep], c[keep]
        rows.append(np.full(len(v), i))
        cols.append(c)
        vals.append(v / tot)
    if not rows:
        return sparse.csr_matrix(m.shape, dtype=np.float32)
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------

@dataclass
class FeatureGroup:
    """One feature group: its member features, evidence images, labels and tests."""

    group_id: int
    features: tuple[int, ...]
    members: np.ndarray                      # row indices of the highly activating images
    low: np.ndarray                          # row indices of the lowly activating images, most similar first
    low_similarity: np.ndarray               # their similarity on the non-group features
    concepts: list[tuple[str, float]] = field(default_factory=list)   # single words, strongest first
    bigrams: list[tuple[str, float]] = field(default_factory=list)    # phrases of 2+ words, strongest first
    spurious: list[tuple[str, float, float]] = field(default_factory=list)  # (term, high score, low score)
    coherence: float = float("nan")
    interpretable: bool = False
    used_crops: bool = False

    @property
    def n_high(self) -> int:
        return int(len(self.members))

    @property
    def n_low(self) -> int:
        return int(len(self.low))

    def labels(self, n: int = 3) -> list[str]:
        """The top ``n`` labels: words and phrases merged by score."""
        merged = sorted(self.concepts + self.bigrams, key=lambda ts: -ts[1])
        return [t for t, _ in merged[:n]]

    def to_record(self, ids: Sequence | None = None, max_ids: int | None = 50) -> dict:
        """JSON-able record (the ``--format json`` shape)."""
        def _ids(rows):
            rows = rows if max_ids is None else rows[:max_ids]
            return [str(ids[int(r)]) if ids is not None else int(r) for r in rows]

        return {
            "group_id": self.group_id,
            "features": [int(f) for f in self.features],
            "concepts": [t for t, _ in self.concepts],
            "concept_scores": [round(float(s), 6) for _, s in self.concepts],
            "bigrams": [t for t, _ in self.bigrams],
            "bigram_scores": [round(float(s), 6) for _, s in self.bigrams],
            "spurious": [t for t, _, _ in self.spurious],
            "spurious_scores": [[round(float(h), 6), round(float(lo), 6)] for _, h, lo in self.spurious],
            "n_high": self.n_high,
            "n_low": self.n_low,
            "interpretable": bool(self.interpretable),
            "coherence": None if not np.isfinite(self.coherence) else round(float(self.coherence), 6),
            "used_crops": bool(self.used_crops),
            "high_ids": _ids(self.members),
            "low_ids": _ids(self.low),
        }


# ----------------------------------------------------------------------------------------------
# The explainer
# ----------------------------------------------------------------------------------------------

class FalconExplainer:
    """FALCON feature labelling (scikit-learn style).

    Parameters
    ----------
    high_std : highly activating = ``R >= mean(R) + high_std * std(R)`` over all entries (5).
    min_group_size : keep feature groups with MORE than this many images (10).
    coherence_threshold : interpretable when the mean pairwise CLIP cosine of the evidence > this (0.8).
    top_k : documents (concepts or captions) kept per evidence image (10).
    n_terms : words and phrases reported per group, each (8).
    low_similarity : lowly activating images need this similarity on the other features (0.3).
    max_low : at most this many lowly activating images per group (10).
    spurious_threshold : a term is spurious when its lowly-set score >= this x its own
        highly-set score (0.25; recalibrated, see the module docstring).
    temperature : softmax scale on cosines (100, CLIP's logit scale).
    chunk_size : rows processed at a time (memory vs speed).

    Learned attributes: ``mean_``, ``std_``, ``threshold_``, ``groups_`` (list of
    :class:`FeatureGroup`), ``image_group_`` (each row's exact group id or -1), ``high_`` (sparse
    highly-activating mask), ``summary_`` (dict), ``n_features_in_``, ``n_samples_``, ``evidence_``.
    """

    def __init__(self, high_std: float = 5.0, min_group_size: int = 10, coherence_threshold: float = 0.8,
                 top_k: int = 10, n_terms: int = 8, low_similarity: float = 0.3, max_low: int = 10,
                 spurious_threshold: float = 0.25, temperature: float = 100.0, chunk_size: int = 4096):
        self.high_std = high_std
        self.min_group_size = min_group_size
        self.coherence_threshold = coherence_threshold
        self.top_k = top_k
        self.n_terms = n_terms
        self.low_similarity = low_similarity
        self.max_low = max_low
        self.spurious_threshold = spurious_threshold
        self.temperature = temperature
        self.chunk_size = chunk_size

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in (
            "high_std", "min_group_size", "coherence_threshold", "top_k", "n_terms", "low_similarity",
            "max_low", "spurious_threshold", "temperature", "chunk_size")}

    def __repr__(self) -> str:
        return "FalconExplainer(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"

    def _check_params(self):
        if not (self.high_std > 0 and math.isfinite(self.high_std)):
            raise InputError("high_std must be a positive number")
        if int(self.min_group_size) < 0 or int(self.max_low) < 0:
            raise InputError("min_group_size and max_low must be >= 0")
        if int(self.top_k) < 1 or int(self.n_terms) < 1 or int(self.chunk_size) < 1:
            raise InputError("top_k, n_terms and chunk_size must be >= 1")
        if self.spurious_threshold < 0:
            raise InputError("spurious_threshold must be >= 0 (use a large value to disable filtering)")

    # -- passes over R -----------------------------------------------------------------------------
    # Rows are never divided by their norms in full: normalisation is folded into the comparisons
    # (``R_ij >= thr * |R_i|``) and into the small matrices multiplied with the chunks.
    def _blocks(self, R, width: int = 0):
        cs = int(self.chunk_size)
        if width:  # keep (rows x width) intermediates under ~32M entries
            cs = max(64, min(cs, (1 << 25) // max(int(width), 1)))
        for s in range(0, R.shape[0], cs):
            yield s, np.asarray(R[s:s + cs], dtype=np.float32)

    def _threshold_and_high(self, R):
        n, m = R.shape
        norms = np.empty(n, dtype=np.float32)
        total, n_unit = 0.0, 0
        for s, block in self._blocks(R):
            if not np.isfinite(block).all():
                raise InputError("activations contain NaN or infinite values")
            nb = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
            n_unit += int(np.count_nonzero(nb))
            nb[nb == 0] = 1.0
            norms[s:s + len(nb)] = nb
            total += float((block.sum(axis=1, dtype=np.float64) / nb).sum())
        count = float(n) * m
        mean = total / count
        # every non-zero normalised row has unit norm, so the sum of squares is the row count
        std = math.sqrt(max(n_unit / count - mean * mean, 0.0))
        thr = mean + float(self.high_std) * std
        rows, cols = [], []
        if std > 0:
            for s, block in self._blocks(R):
                r, c = np.nonzero(block >= (np.float32(thr) * norms[s:s + len(block), None]))
                rows.append(r + s)
                cols.append(c)
        rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols).astype(np.int32) if cols else np.zeros(0, np.int32)
        high = sparse.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, m))
        high.sort_indices()
        return norms, mean, std, thr, high

    def _groups(self, high):
        """Exact groups of rows by their set of highly activated features (hashing, then exact check)."""
        n, m = high.shape
        counts = np.diff(high.indptr)
        nz = np.flatnonzero(counts > 0)
        if len(nz) == 0:
            return [], np.full(n, -1, dtype=np.int64)
        rng = np.random.default_rng(12345)
        w1 = rng.integers(1, 2**63 - 1, size=m, dtype=np.int64).view(np.uint64)
        w2 = rng.integers(1, 2**63 - 1, size=m, dtype=np.int64).view(np.uint64)
        starts = high.indptr[:-1][nz]
        with np.errstate(over="ignore"):
            h1 = np.add.reduceat(w1[high.indices], starts)
            h2 = np.add.reduceat(w2[high.indices], starts)
        keys = np.stack([h1, h2, counts[nz].astype(np.uint64)], axis=1)
        uniq, inverse, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        kept = np.flatnonzero(sizes > int(self.min_group_size))
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        groups = []
        for u in kept:
            rows = nz[order[bounds[u]:bounds[u + 1]]]
            feats = tuple(int(f) for f in high.indices[high.indptr[rows[0]]:high.indptr[rows[0] + 1]])
            sub = high[rows]
            if not (np.all(np.diff(sub.indptr) == len(feats)) and
                    np.all(sub.indices.reshape(len(rows), len(feats)) == np.asarray(feats))):
                raise RuntimeError("feature-set hash collision")  # probability ~2^-128 per pair
            groups.append((feats, np.sort(rows)))
        groups.sort(key=lambda g: (len(g[0]), g[0]))
        image_group = np.full(n, -1, dtype=np.int64)
        for gid, (_, rows) in enumerate(groups):
            image_group[rows] = gid
        return groups, image_group

    def _lows(self, R, norms, groups, mean):
        """Lowly activating images per group (faithful selection), most similar first."""
        n, m = R.shape
        G = len(groups)
        K = int(self.max_low)
        if G == 0 or K == 0:
            return [np.zeros(0, np.int64)] * G, [np.zeros(0, np.float32)] * G
        inv = (1.0 / norms).astype(np.float32)
        memb = sparse.csr_matrix(   # (G, n): mean of the members' normalised rows
            (np.concatenate([inv[r] / len(r) for _, r in groups]),
             (np.concatenate([np.full(len(r), g) for g, (_, r) in enumerate(groups)]),
              np.concatenate([r for _, r in groups]))), shape=(G, n))
        V = np.zeros((G, m), dtype=np.float32)
        for s, block in self._blocks(R):
            sub = memb[:, s:s + block.shape[0]]
            if sub.nnz:
                V += sub @ block
        L = max(len(f) for f, _ in groups)
        fpad = np.array([list(f) + [f[0]] * (L - len(f)) for f, _ in groups], dtype=np.int64)  # (G, L)
        V[np.repeat(np.arange(G), L), fpad.ravel()] = 0.0        # keep only the non-group features
        Vt = np.ascontiguousarray(V.T)
        # Running top-K per group, kept as flat (group, similarity, row) arrays. Once a group holds K
        # images, its K-th similarity becomes its admission bar, so later chunks yield few candidates.
        bar = np.full(G, np.float32(self.low_similarity), dtype=np.float32)
        best_g = np.zeros(0, np.int64)
        best_v = np.zeros(0, np.float32)
        best_r = np.zeros(0, np.int64)
        for s, block in self._blocks(R, width=G * max(L, 2)):
            b = block.shape[0]
            sims = block @ Vt                                     # (rows, G), un-normalised
            sims *= inv[s:s + b, None]
            gmax = np.take(block, fpad[:, 0], axis=1)
            for j in range(1, L):
                np.maximum(gmax, np.take(block, fpad[:, j], axis=1), out=gmax)
            # every group feature below the global mean (of the normalised R), and similar enough
            ok = sims >= bar[None, :]
            ok &= gmax < (np.float32(mean) * norms[s:s + b, None])
            r, g = np.nonzero(ok)
            if len(r) > 8 * K * G:                                # first chunks: prune with a partition
                sims[~ok] = -np.inf
                part = np.argpartition(-sims, K - 1, axis=0)[:K] if b > K else \
                    np.broadcast_to(np.arange(b)[:, None], sims.shape)
                g = np.broadcast_to(np.arange(G)[None, :], part.shape).ravel()
                r = part.ravel()
                keep = np.isfinite(sims[r, g])
                r, g = r[keep], g[keep]
            if len(r) == 0:
                continue
            cg = np.concatenate([best_g, g])
            cv = np.concatenate([best_v, sims[r, g]])
            cr = np.concatenate([best_r, r + s])
            order = np.lexsort((cr, -cv, cg))                    # by group, similarity desc, row
            cg, cv, cr = cg[order], cv[order], cr[order]
            rank = np.arange(len(cg)) - np.searchsorted(cg, cg, side="left")
            keep = rank < K
            best_g, best_v, best_r = cg[keep], cv[keep], cr[keep]
            kth = np.flatnonzero(rank[keep] == K - 1)
            bar[best_g[kth]] = np.maximum(best_v[kth], np.float32(self.low_similarity))
        lows, sims_out = [], []
        bounds = np.searchsorted(best_g, np.arange(G + 1))
        for g in range(G):
            lows.append(best_r[bounds[g]:bounds[g + 1]])
            sims_out.append(best_v[bounds[g]:bounds[g + 1]])
        return lows, sims_out

    # -- evidence --------------------------------------------------------------------------------
    @staticmethod
    def _load(source, rows: np.ndarray) -> np.ndarray:
        if source is None:
            raise InputError("image embeddings are needed (for coherence and CLIP concept scores)")
        if callable(source):
            out = np.asarray(source(rows), dtype=np.float32)
        else:
            out = np.asarray(source[rows], dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(rows):
            raise InputError(f"image embeddings for {len(rows)} rows came back with shape {out.shape}")
        return out

    def _term_probs(self, embeddings: np.ndarray | None, score_rows, corpus: _Corpus) -> sparse.csr_matrix:
        """Per evidence image: p(term | image) on its top-k documents (sparse, rows x terms)."""
        if score_rows is not None:
            pdoc = _topk_scores(score_rows, int(self.top_k))
        else:
            pdoc = _topk_softmax(embeddings, corpus.embeddings, float(self.temperature), int(self.top_k),
                                 chunk=min(int(self.chunk_size), 1024))
        return (pdoc @ corpus.doc_terms).tocsr()

    def _select(self, h: np.ndarray, lo: np.ndarray | None, n_words: np.ndarray, terms: list[str]):
        """Labels and spurious terms of one group from its dense high/low term scores."""
        cand = np.flatnonzero(h > 0)
        if len(cand) == 0:
            return [], [], []
        spur = np.zeros(len(cand), dtype=bool)
        if lo is not None:  # each term against itself: shown almost as much without the feature as with it
            spur = lo[cand] >= float(self.spurious_threshold) * h[cand]
        order = np.lexsort((cand, -h[cand]))           # strongest first, ties by term index
        cand, spur = cand[order], spur[order]
        nt = int(self.n_terms)
        out = {}
        for kind in (False, True):                     # words, then phrases
            sel = (n_words[cand] > 1) == kind
            c, sp = cand[sel], spur[sel]
            kept = [(terms[t], float(h[t])) for t in c[~sp][:nt]]
            # reported: the removed terms that would otherwise have been shown (score at least the
            # last shown label's, or any when fewer than n_terms are shown)
            bar = kept[-1][1] if len(kept) >= nt else 0.0
            removed = [(terms[t], float(h[t]), float(lo[t])) for t in c[sp] if h[t] >= bar]
            out[kind] = (kept, removed)
        words, phrases = out[False][0], out[True][0]
        spurious = sorted(out[False][1] + out[True][1], key=lambda x: -x[1])
        return words, phrases, spurious

    # -- fit -------------------------------------------------------------------------------------
    @hot_path()
    def fit(self, activations, image_embeddings=None, concept_embeddings=None, concepts=None, *,
            concept_scores=None, captions=None, caption_embeddings=None,
            crop_embedder: Callable[[tuple, np.ndarray], np.ndarray] | None = None) -> "FalconExplainer":
        """Find the feature groups of ``activations`` and label them.

        activations : (n, m) array (any float dtype; a memory-mapped array works).
        image_embeddings : (n, d) CLIP embeddings of the whole images, or a callable ``rows -> (len(rows), d)``
            (loaded lazily, only for the rows that are needed).
        concept_embeddings, concepts : the vocabulary's (c, d) CLIP text embeddings and its strings.
        concept_scores : optional (n, c) non-negative per-image concept evidence used INSTEAD of CLIP
            similarities (e.g. SpLiCE weights; normalised per image to sum to 1).
        captions, caption_embeddings : optional caption documents joining the one global softmax.
        crop_embedder : optional ``(group features, member rows) -> (len(rows), d)`` CLIP embeddings of
            GradCAM crops; used for the highly activating images' coherence and concept scores.
        """
        self._check_params()
        R = activations
        if not hasattr(R, "shape") or len(R.shape) != 2:
            R = np.asarray(R, dtype=np.float32)
        if len(R.shape) != 2 or R.shape[0] < 1 or R.shape[1] < 1:
            raise InputError(f"activations must be a non-empty 2-D array (images x features); got shape {R.shape}")
        n, m = R.shape
        if concepts is None:
            raise InputError("concepts (the vocabulary's strings) are required")
        use_scores = concept_scores is not None
        if use_scores:
            if concept_scores.shape != (n, len(concepts)):
                raise InputError(f"concept_scores must have shape ({n}, {len(concepts)}); got {concept_scores.shape}")
            score_matrix = sparse.csr_matrix(concept_scores, dtype=np.float32)
            if captions is not None:
                raise InputError("captions can only be used with CLIP similarities, not with concept_scores")
        else:
            if concept_embeddings is None:
                raise InputError("concept_embeddings are required unless concept_scores are given")
            if image_embeddings is None and crop_embedder is None:
                raise InputError("image_embeddings (or a crop_embedder) are required")
        if image_embeddings is not None and not callable(image_embeddings):
            if len(image_embeddings) != n:
                raise InputError(f"image_embeddings has {len(image_embeddings)} rows, activations {n}")
        corpus = _Corpus(concepts, concept_embeddings, captions, caption_embeddings)

        import time

        clock = [time.perf_counter()]
        timings = {}

        def _tick(name):
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - clock[0]
            clock[0] = now

        norms, mean, std, thr, high = self._threshold_and_high(R)
        _tick("threshold")
        groups, image_group = self._groups(high)
        _tick("groups")
        lows, low_sims = self._lows(R, norms, groups, mean)
        _tick("lows")
        G = len(groups)
        self.n_samples_, self.n_features_in_ = n, m
        self.mean_, self.std_, self.threshold_ = mean, std, thr
        self.high_, self.image_group_ = high, image_group
        self.evidence_ = "concept_scores" if use_scores else "clip"
        self.used_crops_ = crop_embedder is not None
        self.terms_ = corpus.terms
        self.notes_ = []
        if crop_embedder is not None and use_scores:
            self.notes_.append("concept scores come from whole images (concept_scores); crops were used for "
                               "coherence only")

        # lowly activating images: whole images always
        low_rows = np.unique(np.concatenate(lows)) if G else np.zeros(0, np.int64)
        need = low_rows
        if crop_embedder is None and G:
            need = np.union1d(np.concatenate([r for _, r in groups]), low_rows)
        pos = np.full(n, -1, dtype=np.int64)
        pos[need] = np.arange(len(need))
        emb = None
        if len(need) and (image_embeddings is not None):
            emb = self._load(image_embeddings, need)
        if len(need):
            if use_scores:
                probs = self._term_probs(None, score_matrix[need], corpus)
            else:
                if emb is None:
                    raise InputError("image_embeddings are required for the lowly activating images")
                probs = self._term_probs(emb, None, corpus)
        else:
            probs = sparse.csr_matrix((0, len(corpus.terms)), dtype=np.float32)

        def _avg_matrix(row_lists):
            r = np.concatenate([np.full(len(x), g) for g, x in enumerate(row_lists)]) if row_lists else np.zeros(0)
            c = np.concatenate([pos[x] for x in row_lists]) if row_lists else np.zeros(0)
            v = np.concatenate([np.full(len(x), 1.0 / max(len(x), 1), dtype=np.float32) for x in row_lists]) \
                if row_lists else np.zeros(0)
            return sparse.csr_matrix((v, (r, c)), shape=(len(row_lists), len(need)))

        _tick("concept_scores")
        low_scores = (_avg_matrix(lows) @ probs).tocsr() if G else None
        if crop_embedder is None and G:
            high_avg = _avg_matrix([r for _, r in groups])
            high_scores = (high_avg @ probs).tocsr()
            if emb is not None:
                u = _unit(emb)
                centroid = np.asarray(high_avg @ u)
                coherence = np.einsum("ij,ij->i", centroid, centroid)
            else:
                coherence = np.full(G, np.nan)

        self.groups_ = []
        for g, (feats, rows) in enumerate(groups):
            if crop_embedder is not None:
                crops = np.asarray(crop_embedder(feats, rows), dtype=np.float32)
                if crops.shape[0] != len(rows):
                    raise InputError(f"crop_embedder returned {crops.shape[0]} embeddings for {len(rows)} images")
                cu = _unit(crops)
                c = cu.mean(axis=0)
                coh = float(c @ c)
                if use_scores:
                    h = np.asarray(self._term_probs(None, score_matrix[rows], corpus).mean(axis=0)).ravel()
                else:
                    h = np.asarray(self._term_probs(crops, None, corpus).mean(axis=0)).ravel()
            else:
                coh = float(coherence[g])
                h = high_scores[g].toarray().ravel()
            lo = low_scores[g].toarray().ravel() if len(lows[g]) else None
            words, phrases, spurious = self._select(h, lo, corpus.n_words, corpus.terms)
            self.groups_.append(FeatureGroup(
                group_id=g, features=feats, members=rows, low=lows[g], low_similarity=low_sims[g],
                concepts=words, bigrams=phrases, spurious=spurious, coherence=coh,
                interpretable=bool(np.isfinite(coh) and coh > float(self.coherence_threshold)),
                used_crops=crop_embedder is not None))
        _tick("labels")
        self.timings_ = timings
        self.summary_ = self._summary()
        return self

    def _summary(self) -> dict:
        m = self.n_features_in_
        single = {g.features[0] for g in self.groups_ if len(g.features) == 1}
        single_int = {g.features[0] for g in self.groups_ if len(g.features) == 1 and g.interpretable}
        in_int = set()
        for g in self.groups_:
            if g.interpretable:
                in_int.update(g.features)
        n_high_images = int(np.count_nonzero(np.diff(self.high_.indptr)))
        return {
            "n_images": int(self.n_samples_),
            "n_features": int(m),
            "mean": float(self.mean_), "std": float(self.std_), "high_threshold": float(self.threshold_),
            "n_highly_activating_images": n_high_images,
            "n_images_in_groups": int(np.count_nonzero(self.image_group_ >= 0)),
            "n_groups": len(self.groups_),
            "n_single_feature_groups": sum(len(g.features) == 1 for g in self.groups_),
            "n_interpretable_groups": sum(g.interpretable for g in self.groups_),
            "n_interpretable_single": len(single_int),
            "n_interpretable_multi": sum(g.interpretable and len(g.features) > 1 for g in self.groups_),
            "features_with_single_group": len(single),
            # the paper's "fraction of the representation explained": features with an interpretable
            # single-feature group, vs features that belong to any interpretable group
            "fraction_explained_single": len(single_int) / m,
            "fraction_explained_groups": len(in_int) / m,
            "evidence": self.evidence_,
            "used_crops": bool(self.used_crops_),
        }

    # -- outputs ---------------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "groups_"):
            raise InputError("this FalconExplainer is not fitted yet; call fit() first")

    def records(self, ids: Sequence | None = None, max_ids: int | None = 50) -> list[dict]:
        """One JSON-able record per feature group (``features``, ``concepts``, ``bigrams``, ``spurious``, ...)."""
        self._check_fitted()
        return [g.to_record(ids, max_ids=max_ids) for g in self.groups_]

    def group_of(self, features) -> FeatureGroup | None:
        """The group with exactly this feature set (an int for a single feature), or None."""
        self._check_fitted()
        key = (int(features),) if np.isscalar(features) else tuple(sorted(int(f) for f in features))
        for g in self.groups_:
            if g.features == key:
                return g
        return None

    @hot_path()
    def transform(self, activations) -> sparse.csr_matrix:
        """Boolean (n, n_groups) matrix: image i activates group g when all of g's features are highly
        active in it (the learned threshold applied to new rows). Exact groups are a subset."""
        self._check_fitted()
        R = np.asarray(activations, dtype=np.float32)
        if R.ndim != 2 or R.shape[1] != self.n_features_in_:
            raise InputError(f"activations must have {self.n_features_in_} columns; got shape {R.shape}")
        norms = np.linalg.norm(R, axis=1)
        norms[norms == 0] = 1.0
        high = sparse.csr_matrix((R / norms[:, None]) >= np.float32(self.threshold_))
        return self._superset(high)

    def _superset(self, high) -> sparse.csr_matrix:
        n = high.shape[0]
        csc = high.tocsc()
        rows_l, cols_l = [], []
        for g in self.groups_:
            rows = None
            for f in g.features:
                r = csc.indices[csc.indptr[f]:csc.indptr[f + 1]]
                rows = r if rows is None else np.intersect1d(rows, r, assume_unique=True)
            rows_l.append(rows)
            cols_l.append(np.full(len(rows), g.group_id))
        if not rows_l:
            return sparse.csr_matrix((n, 0), dtype=bool)
        r = np.concatenate(rows_l)
        return sparse.csr_matrix((np.ones(len(r), dtype=bool), (r, np.concatenate(cols_l))),
                                 shape=(n, len(self.groups_)))

    def image_labels(self, n_labels: int = 3) -> dict:
        """Per-image labels in long form: arrays ``row``, ``group_id``, ``exact`` (the image's own group)
        and the list ``labels`` (top concepts of that group) for every (image, activated group)."""
        self._check_fitted()
        memb = self._superset(self.high_).tocoo()
        order = np.lexsort((memb.col, memb.row))
        rows, gids = memb.row[order].astype(np.int64), memb.col[order].astype(np.int64)
        top = [g.labels(n_labels) for g in self.groups_]
        return {"row": rows, "group_id": gids, "exact": self.image_group_[rows] == gids,
                "labels": _LazyLabels(top, gids)}


class _LazyLabels(Sequence):
    """``labels[i]`` = the top labels of row i's group, without materialising one list per row."""

    def __init__(self, top, gids):
        self._top, self._gids = top, gids

    def __len__(self):
        return len(self._gids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._top[g] for g in self._gids[i]]
        return self._top[int(self._gids[i])]


# ----------------------------------------------------------------------------------------------
# Transfer to another representation of the same images
# ----------------------------------------------------------------------------------------------

def _ridge(A: np.ndarray, B: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge ``B ~ A @ W + b`` on centred columns; ``alpha`` is relative to the mean feature variance."""
    a_mean = A.mean(axis=0)
    b_mean = B.mean(axis=0)
    Ac = A - a_mean
    gram = (Ac.T @ Ac).astype(np.float64)
    lam = float(alpha) * max(np.trace(gram) / gram.shape[0], 1e-12)
    gram[np.diag_indices_from(gram)] += lam
    rhs = (Ac.T @ (B - b_mean)).astype(np.float64)
    try:
        from scipy.linalg import solve

        W = solve(gram, rhs, assume_a="pos")
    except Exception:  # singular despite the ridge (alpha = 0): least squares
        W = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return W.astype(np.float32), a_mean, b_mean


class FalconTransfer:
    """Carry FALCON labels from an explained representation A to another representation B of the
    same images through a linear (ridge) map ``B ~ A W``.

    For target feature j, the standardised coefficient ``W[f, j] * std(A_f) / std(B_j)`` says how
    much A's feature f makes up B's feature j. Each labelled A group scores the mean of its features'
    coefficients; when the best group scores at least ``min_weight``, the groups scoring at least
    ``share`` of the best one pass their concept scores, weighted by their score, to feature j
    (features made of no labelled group stay unlabelled). ``r2_`` is the held-out R^2 of the map (``test_fraction``
    of the rows held out; the map used for labels is then refitted on all rows).
    """

    def __init__(self, alpha: float = 1e-3, test_fraction: float = 0.2, random_state: int = 0,
                 n_terms: int = 8, share: float = 0.5, min_weight: float = 0.5, interpretable_only: bool = False):
        self.alpha = alpha
        self.test_fraction = test_fraction
        self.random_state = random_state
        self.n_terms = n_terms
        self.share = share
        self.min_weight = min_weight
        self.interpretable_only = interpretable_only

    @hot_path()
    def fit(self, source_activations, target_activations, source_groups) -> "FalconTransfer":
        """``source_groups``: a fitted :class:`FalconExplainer` or its ``records()`` (dicts with
        ``features``, ``concepts``, ``concept_scores``, ``bigrams``, ``bigram_scores``, ``interpretable``)."""
        A = _unit(np.asarray(source_activations, dtype=np.float32))
        B = _unit(np.asarray(target_activations, dtype=np.float32))
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
            raise InputError(f"both representations need one row per image; got {A.shape} and {B.shape}")
        n = A.shape[0]
        if n < 3:
            raise InputError("transfer needs at least 3 images")
        if isinstance(source_groups, FalconExplainer):
            records = source_groups.records(max_ids=0)
        else:
            records = list(source_groups)
        if self.interpretable_only:
            records = [r for r in records if r.get("interpretable")]
        records = [r for r in records if r.get("concepts") or r.get("bigrams")]
        rng = np.random.default_rng(self.random_state)
        perm = rng.permutation(n)
        n_test = int(round(float(self.test_fraction) * n)) if self.test_fraction else 0
        n_test = min(max(n_test, 0), n - 2)
        if n_test > 0:
            test, train = perm[:n_test], perm[n_test:]
            W, am, bm = _ridge(A[train], B[train], self.alpha)
            pred = (A[test] - am) @ W + bm
            resid = ((B[test] - pred) ** 2).sum(axis=0, dtype=np.float64)
            total = ((B[test] - bm) ** 2).sum(axis=0, dtype=np.float64)
            self.r2_ = float(1.0 - resid.sum() / max(total.sum(), 1e-30))
            with np.errstate(divide="ignore", invalid="ignore"):
                self.r2_per_feature_ = np.where(total > 0, 1.0 - resid / total, np.nan).astype(np.float32)
        else:
            self.r2_, self.r2_per_feature_ = float("nan"), np.full(B.shape[1], np.nan, np.float32)
        W, am, bm = _ridge(A, B, self.alpha)
        self.coef_ = W
        sa, sb = A.std(axis=0), B.std(axis=0)
        sb[sb == 0] = 1.0
        contrib = W * sa[:, None] / sb[None, :]                     # (mA, mB), standardised
        self.contributions_ = contrib
        self.n_features_in_, self.n_targets_ = A.shape[1], B.shape[1]
        if not records:
            self.labels_ = [self._empty(j) for j in range(B.shape[1])]
            return self
        # group scores: mean coefficient of the group's features, (G, mB)
        gs = np.stack([contrib[np.asarray(r["features"], dtype=np.int64)].mean(axis=0) for r in records])
        self.group_scores_ = gs
        labels = []
        for j in range(B.shape[1]):
            col = gs[:, j]
            best = float(col.max())
            if not (best > 0 and best >= float(self.min_weight)):
                labels.append(self._empty(j))
                continue
            chosen = np.flatnonzero(col >= float(self.share) * best)
            chosen = chosen[np.argsort(-col[chosen], kind="stable")]
            weights = col[chosen] / col[chosen].sum()
            out = {}
            for key, skey in (("concepts", "concept_scores"), ("bigrams", "bigram_scores")):
                acc: dict[str, float] = {}
                for g, w in zip(chosen, weights):
                    rec = records[g]
                    for t, sc in zip(rec.get(key) or [], rec.get(skey) or []):
                        acc[t] = acc.get(t, 0.0) + float(w) * float(sc)
                ranked = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:int(self.n_terms)]
                out[key] = [t for t, _ in ranked]
                out[skey] = [round(s, 6) for _, s in ranked]
            labels.append({
                "feature": j, **out,
                "source_groups": [int(records[g].get("group_id", g)) for g in chosen],
                "source_features": [[int(f) for f in records[g]["features"]] for g in chosen],
                "source_weights": [round(float(col[g]), 6) for g in chosen],
                "interpretable": bool(any(records[g].get("interpretable") for g in chosen)),
                "r2": None if not np.isfinite(self.r2_per_feature_[j]) else round(float(self.r2_per_feature_[j]), 6),
            })
        self.labels_ = labels
        return self

    @staticmethod
    def _empty(j):
        return {"feature": j, "concepts": [], "concept_scores": [], "bigrams": [], "bigram_scores": [],
                "source_groups": [], "source_features": [], "source_weights": [], "interpretable": False,
                "r2": None}


def encoder_temperature(encoder, default: float = 100.0) -> float:
    """The encoder's learned CLIP logit scale (100 for the CLIP models FALCON used), else ``default``."""
    scale = getattr(getattr(encoder, "model", None), "logit_scale", None)
    if scale is None:
        return float(default)
    return float(scale.exp().item()) if hasattr(scale, "exp") else float(np.exp(scale))
