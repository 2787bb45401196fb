"""FALCON on a table: read a representation column, label its feature groups, write the FALCON tables.

The method itself (:mod:`lance_concepts.concepts.falcon`) needs no database; this module adds the
LanceDB I/O, image loading for GradCAM evidence and ``transfer`` of labels between representations.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import sparse

from ..concepts.falcon import FalconExplainer, FalconTransfer, encoder_temperature
from ..concepts.gradcam import gradcam_crop_embedder, model_features
from ..errors import InputError, LanceConceptsError
from .store import derived_table_name

FEATURES_TABLE = "features"
FEATURE_CONCEPTS_TABLE = "feature_concepts"
IMAGE_FEATURES_TABLE = "image_features"


# ----------------------------------------------------------------------------------------------
# LanceDB layer
# ----------------------------------------------------------------------------------------------

@dataclass
class FalconResult:
    """What :func:`falcon` computed and wrote."""

    representation: str
    fingerprint: str
    records: list[dict]
    summary: dict
    notes: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    explainer: FalconExplainer | None = None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.records, indent=indent)

    def __str__(self) -> str:
        s = self.summary
        lines = [
            f"FALCON on {self.representation!r} ({s['n_images']} images x {s['n_features']} features, "
            f"fingerprint {self.fingerprint}): {s['n_groups']} feature groups "
            f"({s['n_single_feature_groups']} single), {s['n_interpretable_groups']} interpretable",
            f"explained by interpretable single features: {100 * s['fraction_explained_single']:.1f}% of the "
            f"features; by interpretable groups (single or not): {100 * s['fraction_explained_groups']:.1f}%",
        ]
        lines += [f"note: {n}" for n in self.notes]
        if self.tables:
            lines.append("wrote tables: " + ", ".join(self.tables))
        lines.append("")
        lines.append(f"{'group':>5}  {'features':<14} {'interp':<6} {'coher':>5} {'high':>5} {'low':>3}  labels"
                     "  [spurious]")
        for r in self.records:
            feats = ",".join(map(str, r["features"]))
            if len(feats) > 14:
                feats = feats[:13] + "…"
            labels = ", ".join(r["concepts"][:5] + r["bigrams"][:2])
            spur = f"  [{', '.join(r['spurious'][:4])}]" if r["spurious"] else ""
            coh = "-" if r["coherence"] is None else f"{r['coherence']:.2f}"
            lines.append(f"{r['group_id']:>5}  {feats:<14} {'yes' if r['interpretable'] else 'no':<6} {coh:>5} "
                         f"{r['n_high']:>5} {r['n_low']:>3}  {labels}{spur}")
        return "\n".join(lines)


def _vectors(col, name: str, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A (fixed-size or variable) list<float> column -> (mask of the rows returned, (n, d) float32).

    Rows with a null vector, and rows where ``keep`` is False, are left out. Without nulls and with
    a float32 fixed-size list the values are not copied.
    """
    import pyarrow as pa

    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    t = col.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise InputError(f"column {name!r} is {t}, not a vector (list of floats) column")
    valid = np.ones(len(col), dtype=bool) if col.null_count == 0 else \
        np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if keep is not None:
        valid &= np.asarray(keep, dtype=bool)
    sub = col if valid.all() else col.filter(pa.array(valid))
    if len(sub) == 0:
        return valid, np.zeros((0, 0), np.float32)
    flat = sub.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
    else:
        lens = np.diff(sub.offsets.to_numpy()) if hasattr(sub, "offsets") else None
        if lens is None or len(set(lens.tolist())) != 1:
            raise InputError(f"column {name!r} holds vectors of different lengths")
        d = int(lens[0])
    return valid, flat.reshape(len(sub), d)


def _status_ok(table) -> np.ndarray:
    """Rows whose ``status`` is 'ok' (all rows when the table has no status column)."""
    import pyarrow.compute as pc

    if "status" not in table.schema.names:
        return np.ones(table.num_rows, dtype=bool)
    return np.asarray(pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(
        zero_copy_only=False), dtype=bool)


def _image_roots(meta: dict, image_root=None) -> list:
    """Where relative uris may live: the given root, else the roots of the table's ingest sources."""
    if image_root is not None:
        return [str(image_root)]
    roots = [s.get("root") for s in reversed(meta.get("sources") or []) if isinstance(s, dict) and s.get("root")]
    roots = list(dict.fromkeys(roots + ([meta["image_root"]] if meta.get("image_root") else [])))
    return roots + [None]


def _image_loader(uris: Sequence[str], roots=(None,)):
    """``rows -> list of RGB PIL images``, read the way ingest reads them (local, file://, s3://, http)."""
    from .decode import ImageDecodeError, decode_image, read_location

    roots = list(roots) or [None]

    def open_image(uri):
        last = None
        for root in roots:
            try:
                return decode_image(read_location(root, str(uri)))
            except (ImageDecodeError, LanceConceptsError, OSError) as exc:
                last = exc
        raise InputError(f"could not read image {uri!r}: {last}. If the table's uris are relative, pass "
                         "image_root=... (CLI: --image-root)") from None

    def load(rows):
        return [open_image(uris[int(r)]) for r in rows]

    return load


def _model_digest(model) -> str:
    from ..models.encoder import digest_state_dict

    return "model:" + digest_state_dict(model.state_dict())[:20]


def _escape(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _replace_representation(conn, name: str, data, representation: str, meta_update: dict | None = None):
    """Replace the rows of one representation in table ``name`` (created when missing)."""
    from .store import METADATA_KEY, decode_metadata, table_names, with_retries

    if name in table_names(conn):
        tbl = conn.open_table(name)
        if set(tbl.schema.names) != set(data.schema.names):
            old = tbl.to_lance().to_table(filter=f"representation != {_escape(representation)}")
            keep = [c for c in data.schema.names if c in old.schema.names]
            if old.num_rows and len(keep) == len(data.schema.names):
                import pyarrow as pa

                data = pa.concat_tables([old.select(keep).cast(data.schema), data])
            tbl = conn.create_table(name, data, mode="overwrite")
        else:
            with_retries(lambda: tbl.delete(f"representation = {_escape(representation)}"), f"delete from {name}")
            if data.num_rows:
                with_retries(lambda: tbl.add(data.cast(tbl.schema)), f"write {name}")
    else:
        tbl = conn.create_table(name, data)
    if meta_update is not None:
        ds = tbl.to_lance()
        meta = decode_metadata(ds.schema)
        meta.setdefault("representations", {})[representation] = meta_update
        payload = {METADATA_KEY: json.dumps(meta, sort_keys=True, default=str)}
        with_retries(lambda: ds.update_schema_metadata(payload), f"metadata of {name}")
    return tbl


def _features_tables(representation, fingerprint, groups, ids, params, evidence, method="falcon",
                     transfer_info=None):
    import pyarrow as pa

    rows = {k: [] for k in (
        "representation", "representation_fingerprint", "method", "group_id", "features", "n_features",
        "concepts", "concept_scores", "bigrams", "bigram_scores", "spurious", "spurious_high_scores",
        "spurious_low_scores", "n_high", "n_low", "high_ids", "low_ids", "coherence", "interpretable",
        "used_crops", "evidence", "source_representation", "source_groups", "source_weights", "fit_r2",
        "params")}
    long = {k: [] for k in ("representation", "group_id", "kind", "rank", "concept", "score", "low_score")}
    pj = json.dumps(params, sort_keys=True, default=str)
    for r in groups:
        rows["representation"].append(representation)
        rows["representation_fingerprint"].append(fingerprint)
        rows["method"].append(method)
        rows["group_id"].append(int(r["group_id"]))
        rows["features"].append([int(f) for f in r["features"]])
        rows["n_features"].append(len(r["features"]))
        for key in ("concepts", "concept_scores", "bigrams", "bigram_scores", "spurious"):
            rows[key].append(list(r.get(key) or []))
        sp = r.get("spurious_scores") or []
        rows["spurious_high_scores"].append([float(a) for a, _ in sp])
        rows["spurious_low_scores"].append([float(b) for _, b in sp])
        rows["n_high"].append(int(r.get("n_high", 0)))
        rows["n_low"].append(int(r.get("n_low", 0)))
        rows["high_ids"].append([str(x) for x in r.get("high_ids", [])])
        rows["low_ids"].append([str(x) for x in r.get("low_ids", [])])
        rows["coherence"].append(r.get("coherence"))
        rows["interpretable"].append(bool(r.get("interpretable")))
        rows["used_crops"].append(bool(r.get("used_crops")))
        rows["evidence"].append(evidence)
        ti = transfer_info or {}
        rows["source_representation"].append(ti.get("source_representation"))
        rows["source_groups"].append(r.get("source_groups"))
        rows["source_weights"].append(r.get("source_weights"))
        rows["fit_r2"].append(ti.get("r2"))
        rows["params"].append(pj)
        gid = int(r["group_id"])
        for kind, tkey, skey in (("word", "concepts", "concept_scores"), ("phrase", "bigrams", "bigram_scores")):
            for rank, (t, s) in enumerate(zip(r.get(tkey) or [], r.get(skey) or [])):
                for k, v in (("representation", representation), ("group_id", gid), ("kind", kind),
                             ("rank", rank), ("concept", t), ("score", float(s)), ("low_score", None)):
                    long[k].append(v)
        for rank, (t, (hs, ls)) in enumerate(zip(r.get("spurious") or [], sp)):
            for k, v in (("representation", representation), ("group_id", gid), ("kind", "spurious"),
                         ("rank", rank), ("concept", t), ("score", float(hs)), ("low_score", float(ls))):
                long[k].append(v)
    ls, lf, li = pa.list_(pa.string()), pa.list_(pa.float32()), pa.list_(pa.int32())
    schema = pa.schema([
        ("representation", pa.string()), ("representation_fingerprint", pa.string()), ("method", pa.string()),
        ("group_id", pa.int32()), ("features", li), ("n_features", pa.int32()),
        ("concepts", ls), ("concept_scores", lf), ("bigrams", ls), ("bigram_scores", lf),
        ("spurious", ls), ("spurious_high_scores", lf), ("spurious_low_scores", lf),
        ("n_high", pa.int32()), ("n_low", pa.int32()), ("high_ids", ls), ("low_ids", ls),
        ("coherence", pa.float32()), ("interpretable", pa.bool_()), ("used_crops", pa.bool_()),
        ("evidence", pa.string()), ("source_representation", pa.string()), ("source_groups", li),
        ("source_weights", lf), ("fit_r2", pa.float32()), ("params", pa.string())])
    long_schema = pa.schema([("representation", pa.string()), ("group_id", pa.int32()), ("kind", pa.string()),
                             ("rank", pa.int32()), ("concept", pa.string()), ("score", pa.float32()),
                             ("low_score", pa.float32())])
    return pa.table(rows, schema=schema), pa.table(long, schema=long_schema)


def _read_columns(store, columns):
    have = store.schema.names
    cols = [c for c in columns if c in have]
    return store.table.to_lance().to_table(columns=cols)


def _load_concepts(store, meta, vocabulary, get_encoder, need_embeddings: bool):
    """(concept strings, raw text embeddings or None, description)."""
    from .store import table_names

    use_table = vocabulary is None and store.concepts_name in table_names(store.conn)
    if use_table:
        ct = store.conn.open_table(store.concepts_name).to_lance().to_table(columns=["concept_id", "concept",
                                                                                   "embedding"])
        order = np.argsort(ct.column("concept_id").to_numpy())
        names = ct.column("concept").to_pylist()
        concepts = [names[i] for i in order]
        emb = None
        if need_embeddings:
            _, emb = _vectors(ct.column("embedding"), "concepts.embedding")
            emb = emb[order]
        return concepts, emb, f"table {store.concepts_name} ({meta.get('vocabulary', '?')})", None
    from ..concepts.vocabulary import load_vocabulary

    vocab = load_vocabulary(vocabulary if vocabulary is not None else meta.get("vocabulary") or "default")
    emb = vocab.embed(get_encoder()) if need_embeddings else None
    return list(vocab.concepts), emb, f"vocabulary {vocab.name} ({vocab.digest})", vocab


def falcon(db, features_column: str = "embedding", *, table: str = "images", vocabulary=None, encoder=None,
           evidence: str = "clip", caption_column: str | None = None, model=None, transform=None,
           target_layer=None, features_layer=None, cam_threshold: float = 0.6, representation: str | None = None,
           image_root=None, write: bool = True, storage_options=None, max_ids: int | None = 50,
           n_labels: int = 3, device: str = "cpu", explainer: FalconExplainer | None = None,
           **params) -> FalconResult:
    """Label the features of a vector column of the images table with FALCON and store the labels.

    db, table : the LanceDB database and its images table.
    features_column : the representation to explain (default the CLIP ``embedding``; typically a
        model's features ingested as a column). With ``model`` and a missing column, the model's
        pre-classifier features are computed from the images and added to the table under this name.
    vocabulary : concept vocabulary (name, path, Vocabulary); default: the table's concepts table.
    encoder : ClipEncoder for text, crops and re-encoding; default: the table's model (metadata).
    evidence : ``"clip"`` (softmax over CLIP cosines) or ``"splice"`` (the stored SpLiCE weights).
    caption_column : optional caption column whose captions join the global softmax as documents.
    model, transform, target_layer, features_layer : a ``torch.nn.Module`` for GradCAM crops of the
        highly activating images (without it whole images are used and the output says so).
    params : FalconExplainer parameters (high_std, min_group_size, coherence_threshold, top_k,
        n_terms, low_similarity, max_low, spurious_threshold, temperature, chunk_size). The
        temperature defaults to the CLIP model's learned logit scale (100 for the CLIP models
        FALCON used, which is FALCON's value; 100 when the model cannot be loaded).
    write : write the ``features``, ``feature_concepts`` and ``image_features`` tables.
    """
    from .store import ImageStore

    if evidence not in ("clip", "splice"):
        raise InputError(f"evidence must be 'clip' or 'splice', not {evidence!r}")
    if explainer is not None and params:
        raise InputError("pass either explainer= or explainer parameters, not both")
    bad = sorted(set(params) - set(FalconExplainer().get_params()))
    if bad:
        raise InputError(f"unknown FALCON parameter(s) {bad}; valid: {sorted(FalconExplainer().get_params())}")
    store = ImageStore(db, table, storage_options)
    if not store.exists():
        raise InputError(f"no table {table!r} in {db}")
    meta = store.metadata()
    notes: list[str] = []
    enc_box = {"enc": encoder}

    def get_encoder():
        if enc_box["enc"] is None:
            from ..models.encoder import load_encoder

            name = meta.get("model_name")
            if not name:
                raise InputError(f"table {table!r} records no CLIP model; pass encoder=")
            enc_box["enc"] = load_encoder(name, meta.get("pretrained"), device=device)
        return enc_box["enc"]

    names = store.schema.names
    computed = None
    base = _read_columns(store, ["id", "uri", "status"])
    ids_all = base.column("id").to_numpy(zero_copy_only=False).astype(object)
    uris_all = base.column("uri").to_pylist() if "uri" in base.schema.names else [None] * base.num_rows
    roots = _image_roots(meta, image_root)
    load_all = _image_loader(uris_all, roots)
    if features_column not in names:
        if model is None:
            vec = [f.name for f in store.schema if str(f.type).startswith(("fixed_size_list", "list<item: float"))]
            raise InputError(f"table {table!r} has no column {features_column!r}; vector columns: "
                             f"{', '.join(vec) or '(none)'}. Pass a model to compute it.")
        ok_rows = np.flatnonzero(_status_ok(base))
        feats = _features_in_batches(model, load_all, ok_rows, transform, features_layer, device)
        if write:
            add_features_column(store, ids_all[ok_rows], feats, features_column, _model_digest(model))
            names = store.refresh().schema.names
            notes.append(f"computed the model's pre-classifier features into column {features_column!r}")
        else:
            notes.append("computed the model's pre-classifier features (not stored: write=False)")
            computed = (ok_rows, feats)
    cols = ["id", features_column] + (["status"] if "status" in names else [])
    if features_column != "embedding" and "embedding" in names:
        cols.append("embedding")
    if evidence == "splice":
        cols += ["concept_ids", "concept_weights"]
    if caption_column:
        if caption_column not in names:
            raise InputError(f"table {table!r} has no caption column {caption_column!r}")
        cols.append(caption_column)
    data = _read_columns(store, cols)
    if computed is not None:
        valid = np.zeros(data.num_rows, dtype=bool)
        valid[computed[0]] = True
        R = computed[1]
    else:
        valid, R = _vectors(data.column(features_column), features_column, keep=_status_ok(data))
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        raise InputError(f"column {features_column!r} of table {table!r} holds no vectors")
    ids = ids_all[rows]
    uris = [uris_all[i] for i in rows]
    load_images = _image_loader(uris, roots)

    # whole-image CLIP embeddings: the stored column when it comes from the encoder in use
    stored_emb = None
    if "embedding" in data.schema.names:
        emb_col = data.column("embedding")
        emb_rows, emb_vals = _vectors(emb_col, "embedding", keep=valid)
        if np.array_equal(emb_rows, valid):
            stored_emb = emb_vals
    same_model = encoder is None or encoder.fingerprint == meta.get("model_fingerprint")
    if stored_emb is not None and same_model:
        image_embeddings = stored_emb
    else:
        notes.append("whole-image CLIP embeddings were computed from the images (the encoder differs from "
                     "the table's, or the table has no embedding column)")
        image_embeddings = lambda rr: get_encoder().encode_images(load_images(rr))  # noqa: E731

    concepts, cemb, vocab_desc, _ = _load_concepts(store, meta, vocabulary, get_encoder,
                                                   need_embeddings=evidence == "clip")
    concept_scores = None
    if evidence == "splice":
        if vocabulary is not None:
            raise InputError("evidence='splice' uses the table's concepts; do not pass vocabulary=")
        cid = data.column("concept_ids").filter(valid).combine_chunks()
        cw = data.column("concept_weights").filter(valid).combine_chunks()
        indptr = np.concatenate([[0], np.cumsum([0 if x is None else len(x) for x in cid.to_pylist()])])
        concept_scores = sparse.csr_matrix(
            (cw.flatten().to_numpy(zero_copy_only=False).astype(np.float32),
             cid.flatten().to_numpy(zero_copy_only=False).astype(np.int64), indptr),
            shape=(len(rows), len(concepts)))
        notes.append("concept evidence: the stored SpLiCE weights (normalised per image), not CLIP similarities")
    captions = cap_emb = None
    if caption_column:
        caps = data.column(caption_column).filter(valid).to_pylist()
        captions = sorted({str(c) for c in caps if c})
        cap_emb = get_encoder().encode_text(captions) if captions else None
        if not captions:
            captions = None
        notes.append(f"{0 if captions is None else len(captions)} distinct captions of column "
                     f"{caption_column!r} joined the softmax")
    # softmax temperature: FALCON's 100 is CLIP's learned logit scale; use the encoder's own scale
    if explainer is None and params.get("temperature") is None:
        params.pop("temperature", None)
        temperature, source = 100.0, "FALCON's default (100)"
        if evidence == "clip":
            try:
                enc = get_encoder()
                if getattr(getattr(enc, "model", None), "logit_scale", None) is not None:
                    temperature = encoder_temperature(enc)
                    source = f"the CLIP model's learned logit scale ({temperature:.1f})"
            except LanceConceptsError as exc:
                source = f"FALCON's default (100): the table's CLIP model could not be loaded ({exc})"
        notes.append(f"softmax temperature: {source}")
        params["temperature"] = temperature
    fx = explainer if explainer is not None else FalconExplainer(**params)
    crop_embedder = None
    if model is not None:
        crop_embedder = gradcam_crop_embedder(model, load_images, get_encoder(), transform,
                                              target_layer=target_layer, features_layer=features_layer,
                                              threshold=cam_threshold, device=device)
        notes.append(f"GradCAM crops (threshold {cam_threshold}, largest box) of the highly activating images")
    else:
        notes.append("no model given: whole images were used as evidence (no GradCAM crops)")
    fx.fit(R, image_embeddings, cemb, concepts, concept_scores=concept_scores, captions=captions,
           caption_embeddings=cap_emb, crop_embedder=crop_embedder)
    if crop_embedder is not None:
        crop_embedder.gradcam.remove()
    notes += fx.notes_

    rep = representation or features_column
    if model is not None:
        fingerprint = _model_digest(model)
    elif features_column == "embedding" and meta.get("model_fingerprint"):
        fingerprint = str(meta["model_fingerprint"])
    else:
        fmeta = store.schema.field(features_column).metadata or {}
        fp = fmeta.get(b"fingerprint") or fmeta.get(b"model_fingerprint")
        fingerprint = fp.decode() if fp else "data:" + hashlib.blake2b(
            np.ascontiguousarray(R).view(np.uint8), digest_size=10).hexdigest()
    run_params = {**fx.get_params(), "evidence": evidence, "vocabulary": vocab_desc,
                  "caption_column": caption_column, "used_crops": model is not None,
                  "cam_threshold": cam_threshold if model is not None else None, "table": table,
                  "features_column": features_column,
                  "encoder_fingerprint": None if enc_box["enc"] is None else enc_box["enc"].fingerprint}
    full_records = fx.records(ids, max_ids=None)
    tables = []
    if write:
        tables = _write_falcon(store, rep, fingerprint, full_records, fx, ids, run_params, n_labels)
    records = fx.records(ids, max_ids=max_ids)
    return FalconResult(representation=rep, fingerprint=fingerprint, records=records, summary=fx.summary_,
                        notes=notes, params=run_params, tables=tables, explainer=fx)


def _write_falcon(store, rep, fingerprint, full_records, fx, ids, run_params, n_labels):
    import pyarrow as pa

    feats_tbl, long_tbl = _features_tables(rep, fingerprint, full_records, ids, run_params, fx.evidence_)
    meta = {"fingerprint": fingerprint, "params": run_params, "summary": fx.summary_,
            "images_table": store.name}
    names = _falcon_table_names(store.name)
    _replace_representation(store.conn, names[0], feats_tbl, rep, meta)
    _replace_representation(store.conn, names[1], long_tbl, rep)
    lab = fx.image_labels(n_labels)
    groups = fx.groups_
    gid = pa.array(lab["group_id"].astype(np.int32))
    # per-group values, gathered per (image, group) row without Python loops over the rows
    g_feats = pa.array([list(g.features) for g in groups], pa.list_(pa.int32()))
    g_labels = pa.array([g.labels(n_labels) for g in groups], pa.list_(pa.string()))
    g_interp = pa.array([g.interpretable for g in groups], pa.bool_())
    img = pa.table({
        "image_id": pa.array(ids, pa.string()).take(pa.array(lab["row"])),
        "representation": pa.array(np.full(len(lab["row"]), rep, dtype=object), pa.string()),
        "group_id": gid,
        "features": g_feats.take(gid),
        "labels": g_labels.take(gid),
        "exact": pa.array(lab["exact"]),
        "interpretable": g_interp.take(gid),
    })
    _replace_representation(store.conn, names[2], img, rep)
    return list(names)


def _falcon_table_names(images_table: str) -> tuple[str, str, str]:
    return tuple(derived_table_name(images_table, kind) for kind in (FEATURES_TABLE, FEATURE_CONCEPTS_TABLE,
                                                                      IMAGE_FEATURES_TABLE))


def _features_in_batches(model, load_images, rows, transform, features_layer, device, batch_size=64):
    out = []
    for s in range(0, len(rows), batch_size):
        out.append(model_features(model, load_images(rows[s:s + batch_size]), transform,
                                  batch_size=batch_size, features_layer=features_layer, device=device))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def add_features_column(store, ids, features: np.ndarray, column: str, fingerprint: str | None = None) -> None:
    """Add (or replace) a vector column ``column`` on the images table, matched on ``id``; rows not in
    ``ids`` get null. ``fingerprint`` is recorded in the field metadata."""
    import pyarrow as pa

    from .store import with_retries

    feats = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if feats.ndim != 2 or feats.shape[0] != len(ids):
        raise InputError(f"{len(ids)} ids but features of shape {feats.shape}")
    ds = store.table.to_lance()
    if column in ds.schema.names:
        if column in ("id", "uri", "embedding", "concept_ids", "concept_weights"):
            raise InputError(f"refusing to replace the table's own column {column!r}")
        ds.drop_columns([column])
        ds = store.refresh().table.to_lance()
    fmeta = {b"fingerprint": fingerprint.encode()} if fingerprint else None
    typ = pa.list_(pa.float32(), feats.shape[1])
    arr = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1])
    new = pa.table([pa.array([str(i) for i in ids], pa.string()), arr],
                   schema=pa.schema([pa.field("id", pa.string()), pa.field(column, typ, metadata=fmeta)]))
    with_retries(lambda: ds.merge(new, left_on="id"), f"add column {column}")
    store.refresh()


# ----------------------------------------------------------------------------------------------
# Transfer, LanceDB layer
# ----------------------------------------------------------------------------------------------

@dataclass
class TransferResult:
    from_column: str
    to_column: str
    r2: float
    labels: list[dict]
    n_images: int
    tables: list[str] = field(default_factory=list)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps({"from": self.from_column, "to": self.to_column, "r2_heldout": self.r2,
                           "n_images": self.n_images, "features": self.labels}, indent=indent)

    def __str__(self) -> str:
        lab = [r for r in self.labels if r["concepts"] or r["bigrams"]]
        lines = [f"transfer {self.from_column!r} -> {self.to_column!r} over {self.n_images} images: ridge map "
                 f"held-out R^2 = {self.r2:.3f}; {len(lab)} of {len(self.labels)} target features labelled"]
        if self.tables:
            lines.append("wrote tables: " + ", ".join(self.tables))
        for r in lab:
            src = ",".join(str(g) for g in r["source_groups"][:3])
            lines.append(f"  feature {r['feature']:>5}: {', '.join((r['concepts'] + r['bigrams'])[:5])}"
                         f"   (from groups {src})")
        return "\n".join(lines)


def transfer(db, from_column: str, to_column: str, *, table: str = "images", alpha: float = 1e-3,
             test_fraction: float = 0.2, share: float = 0.5, min_weight: float = 0.5,
             interpretable_only: bool = False,
             from_representation: str | None = None, write: bool = True, storage_options=None,
             random_state: int = 0) -> TransferResult:
    """Carry the stored FALCON labels of ``from_column`` to the features of ``to_column``.

    Needs a previous :func:`falcon` run on ``from_column`` (its ``features`` rows). Fits a ridge map
    between the two columns (held-out R^2 reported) and writes one ``features`` row per labelled
    target feature (``method = 'transfer'``) under representation ``to_column``.
    """
    from .store import ImageStore, table_names

    store = ImageStore(db, table, storage_options)
    names = store.schema.names
    for c in (from_column, to_column):
        if c not in names:
            raise InputError(f"table {table!r} has no column {c!r}")
    ftab = _falcon_table_names(table)[0]
    src = from_representation or from_column
    if ftab not in table_names(store.conn):
        raise InputError(f"no FALCON labels yet: run falcon(db, features_column={from_column!r}) first")
    recs = store.conn.open_table(ftab).to_lance().to_table(
        filter=f"representation = {_escape(src)} AND method = 'falcon'").to_pylist()
    if not recs:
        raise InputError(f"no FALCON labels for representation {src!r}: run "
                         f"falcon(db, features_column={from_column!r}) first")
    data = _read_columns(store, ["id", from_column, to_column, "status"])
    keep = _status_ok(data)
    keep &= np.asarray(data.column(from_column).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    keep &= np.asarray(data.column(to_column).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    _, A = _vectors(data.column(from_column), from_column, keep=keep)
    _, B = _vectors(data.column(to_column), to_column, keep=keep)
    tr = FalconTransfer(alpha=alpha, test_fraction=test_fraction, share=share, min_weight=min_weight,
                        interpretable_only=interpretable_only, random_state=random_state).fit(A, B, recs)
    tables = []
    if write:
        labelled = [dict(lab, group_id=lab["feature"], features=[lab["feature"]], n_high=0, n_low=0)
                    for lab in tr.labels_ if lab["concepts"] or lab["bigrams"]]
        fp = store.schema.field(to_column).metadata or {}
        fingerprint = (fp.get(b"fingerprint") or b"").decode() or "data:" + hashlib.blake2b(
            np.ascontiguousarray(B).view(np.uint8), digest_size=10).hexdigest()
        params = {"alpha": alpha, "test_fraction": test_fraction, "share": share, "min_weight": min_weight,
                  "interpretable_only": interpretable_only, "from_column": from_column}
        feats_tbl, long_tbl = _features_tables(to_column, fingerprint, labelled, None, params, "transfer",
                                               method="transfer",
                                               transfer_info={"source_representation": src, "r2": tr.r2_})
        names3 = _falcon_table_names(table)
        _replace_representation(store.conn, names3[0], feats_tbl, to_column,
                                {"fingerprint": fingerprint, "method": "transfer", "params": params,
                                 "r2_heldout": tr.r2_, "source_representation": src})
        _replace_representation(store.conn, names3[1], long_tbl, to_column)
        tables = list(names3[:2])
    return TransferResult(from_column=from_column, to_column=to_column, r2=tr.r2_, labels=tr.labels_,
                          n_images=int(keep.sum()), tables=tables)
