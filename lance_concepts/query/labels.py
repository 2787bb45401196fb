"""Which concepts merely name a label ('dog' for the class dog): excluded from spurious findings.

A concept that is the label's own word (by lemma) or whose text embedding is near the label's is not
a spurious correlate of it; this module decides which, by string and by embedding.
"""
from __future__ import annotations

import functools
import re
import unicodedata
import weakref
from typing import Sequence

import numpy as np

from ..errors import InputError
from .connection import connection_state, run_query

#: Centred cosine similarity (SpLiCE-centred text embeddings) at or above which a concept is taken to
#: merely name the label (see :func:`label_name_concepts`).
LABEL_MATCH_THRESHOLD = 0.6
#: ... and only among the label's nearest concepts, so that a text tower that crowds many words together
#: (the tiny demo model puts 'circle', 'dot', 'hexagon' and 'heart' within 0.05) cannot drop dozens.
LABEL_MATCH_NEIGHBOURS = 5


# ======================================================================================== spurious
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _lemma(tok: str) -> str:
    """A crude English lemma (plural -> singular), enough to match 'circles' with 'circle'."""
    t = tok
    for suf, rep in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"), ("oes", "o")):
        if t.endswith(suf) and len(t) > len(suf) + 2:
            return t[: -len(suf)] + rep
    if t.endswith("s") and not t.endswith("ss") and len(t) > 3:
        return t[:-1]
    return t


@functools.lru_cache(maxsize=1 << 16)
def _lemmas(text: str) -> tuple[str, ...]:
    text = unicodedata.normalize("NFKC", str(text)).casefold().replace("_", " ")
    return tuple(_lemma(t) for t in _WORD.findall(text))


def string_names_label(concept: str, label: str) -> bool:
    """The concept's words are all words of the label ('car' for 'sports car'), or the label's words
    all occur in the concept ('red circle' for 'circle'); plural/singular folded."""
    c, l_ = set(_lemmas(concept)), set(_lemmas(label))
    if not c or not l_:
        return False
    return c <= l_ or l_ <= c


_LEMMA_INDEX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _lemma_index(names) -> tuple[dict, dict]:
    """(lemma -> ids of the concepts containing it, id -> the concept's lemma set), once per vocabulary
    object (a connection's ``ConceptNames``)."""
    got = _LEMMA_INDEX.get(names)
    if got is None:
        words: dict[str, set] = {}
        csets = {}
        for i, c in zip(names.ids, names.names):
            ls = set(_lemmas(c))
            csets[int(i)] = ls
            for w in ls:
                words.setdefault(w, set()).add(int(i))
        got = _LEMMA_INDEX[names] = (words, csets)
    return got


def label_name_concepts(con, labels: Sequence, *, threshold: float = LABEL_MATCH_THRESHOLD,
                        method: str = "auto") -> tuple[dict, str]:
    """For each label, the concept ids that merely name it, and a sentence saying how this was decided
    (see :func:`label_name_rules`, which also says which rule excluded each concept)."""
    rules, how = label_name_rules(con, labels, threshold=threshold, method=method)
    return {lab: set(r) for lab, r in rules.items()}, how


def label_name_rules(con, labels: Sequence, *, threshold: float = LABEL_MATCH_THRESHOLD,
                     method: str = "auto") -> tuple[dict, str]:
    """For each label, ``{concept id: rule}`` for the concepts that merely name it ('string' or
    'embedding (cosine 0.71)'), so a report can list what it left out and why, and a sentence for all.

    Always: the string rule (:func:`string_names_label`). With ``method`` 'auto' or 'embedding' and
    the table's CLIP model loadable: also the concepts among the label's ``LABEL_MATCH_NEIGHBOURS``
    (5) nearest whose SpLiCE-centred text embedding has cosine >= ``threshold`` with the label's text
    embedding (same encoder, same prompt template, centred with the vocabulary mean of the
    ``concepts`` table). 'string': the string rule only. The threshold 0.6 was chosen on the demo
    model (where 'grass'/'desert' score 0.40/0.44 against 'circle'); it has not been calibrated on
    ViT-B-32 (no weights offline here)."""
    st = connection_state(con)
    words, csets = _lemma_index(st.names)
    out = {}
    for lab in labels:
        ll = set(_lemmas(str(lab)))
        hits = set()
        if ll:
            cand = set().union(*(words.get(w, set()) for w in ll))
            hits = {i for i in cand if csets[i] <= ll or ll <= csets[i]}
        out[lab] = {i: "string" for i in hits}
    how = "string match (same words, singular/plural folded)"
    if method == "string":
        return out, how
    emb, why = label_embeddings(con, [str(lab) for lab in labels])
    if emb is None:
        if method == "embedding":
            raise InputError(f"cannot compare concept and label text with the table's encoder: {why}")
        return out, how + f"; no text-embedding match ({why})"
    E, ids = concept_matrix(con)
    mu = E.mean(axis=0)
    D = E - mu
    D /= np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
    L = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12) - mu
    L /= np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-12)
    sims = L @ D.T
    k = min(LABEL_MATCH_NEIGHBOURS, sims.shape[1])
    for j, lab in enumerate(labels):
        near = np.argpartition(-sims[j], k - 1)[:k] if k else np.zeros(0, np.int64)
        for i in near:
            if sims[j, i] >= threshold:
                out[lab].setdefault(int(ids[i]), f"embedding (cosine {sims[j, i]:.2f})")
    return out, how + (f" + text-embedding match ({why}; the label's {LABEL_MATCH_NEIGHBOURS} nearest concepts "
                       f"with centred cosine >= {threshold})")


def concept_matrix(con):
    tbl = run_query(con, "SELECT concept_id, embedding FROM concepts ORDER BY concept_id")
    ids = tbl.column("concept_id").to_numpy()
    emb = tbl.column("embedding").combine_chunks()
    d = emb.type.list_size
    E = np.asarray(emb.values, dtype=np.float32).reshape(-1, d).astype(np.float64)
    E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    return E, ids


class _Unavailable(Exception):
    """The table's model cannot embed the labels here (the reason is the message)."""


def label_embeddings(con, labels: list[str]):
    """(embeddings, description) of the label texts with the table's encoder, or (None, reason)."""
    st = connection_state(con)
    meta = st.metadata or {}
    model = meta.get("model_name")
    if not model:
        return None, "the table records no model"
    fp = meta.get("model_fingerprint")
    tpl = meta.get("prompt_template")
    texts = [tpl.format(t) if tpl else t for t in labels]

    def load():
        from ..models.encoder import load_encoder

        try:
            enc = load_encoder(model, meta.get("pretrained"))
        except Exception as exc:  # WeightsUnavailableError, unknown architecture, no network, ...
            raise _Unavailable(f"model {model!r} not loadable: {str(exc).splitlines()[0][:160]}") from None
        if fp and getattr(enc, "fingerprint", fp) != fp:
            raise _Unavailable(f"model {model!r} loads with another fingerprint than the table's")
        return enc

    try:
        if fp:  # label names embedded before: no model load, no torch import
            from ..models.text_cache import cached_text_embeddings

            emb = cached_text_embeddings(fp, texts, load).astype(np.float64)
        else:
            emb = np.asarray(load().encode_text(texts), dtype=np.float64)
    except _Unavailable as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"encoding failed: {exc}"
    E, _ = concept_matrix(con)
    if emb.shape[1] != E.shape[1]:
        return None, f"model gives {emb.shape[1]}-d text embeddings, concepts table has {E.shape[1]}-d"
    return emb, f"model {model!r}"
