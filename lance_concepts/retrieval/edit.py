"""Remove concepts from every embedding (SpLiCE model editing) and measure zero-shot accuracy before/after.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from ..errors import InputError
from .table import ConceptTable, lance_dataset
from .where import closest_names, quote_identifier

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

    from ..lake.store import IMAGE_COLUMNS, check_db_writable, with_retries

    if isinstance(remove_concepts, (str, int)):
        remove_concepts = [remove_concepts]
    remove_concepts = list(remove_concepts)
    if not remove_concepts:
        raise InputError("name at least one concept to remove")
    if not isinstance(into, str) or not _COLUMN_NAME.match(into):
        raise InputError(f"into must be a plain column name (letters, digits, _), got {into!r}")
    labels_columns = list(dict.fromkeys(labels_columns))
    t = ConceptTable(db, table, storage_options)
    check_db_writable(db, "edit")
    if into in IMAGE_COLUMNS:
        raise InputError(f"column {into!r} belongs to the table layout; choose another name")
    if into in t.schema.names and not overwrite:
        raise InputError(f"column {into!r} already exists in table {table!r}; choose another name or overwrite")
    if into in labels_columns:
        raise InputError(f"column {into!r} is also a label column")
    for col in labels_columns:
        if col not in t.schema.names:
            raise InputError(f"unknown label column {col!r}; closest: {closest_names(col, t.schema.names)}")
    for col in ("id", "concept_ids", "concept_weights"):
        if col not in t.schema.names:
            raise InputError(f"table {table!r} has no {col!r} column: it was not decomposed into concepts")
    templates = {col: _prompt_for(prompts, col) for col in labels_columns}
    ids = t.concept_ids(remove_concepts)
    names = t.concept_names
    dec = t.decomposer("image")
    c, d = dec.n_concepts_, dec.dim_

    # zero-shot set-up: the classes of each label column and their prompt embeddings
    ds = lance_dataset(t.tbl)
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
        ds = lance_dataset(t.conn.open_table(table))
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
    ds = lance_dataset(t.conn.open_table(table))
    with_retries(lambda: ds.update_schema_metadata({EDITS_METADATA_KEY: json.dumps(edits, sort_keys=True)}),
                 f"metadata of {table}")
    return EditReport(column=into, removed={names[j]: j for j in ids}, rows=totals["rows"],
                      mean_removed_weight=totals["removed"] / max(totals["rows"], 1),
                      rows_touched=totals["touched"], accuracy=accuracy)
