"""Ingest images into LanceDB: sources, decode workers, the encode/decompose/write pipeline.

``ingest(source, db)`` turns a directory of images, a manifest (CSV / Parquet / JSONL with a
``uri`` or ``path`` column and any metadata columns) or an existing Lance table (image bytes or a
uri column) into rows of the ``images`` table (see :mod:`lance_concepts.lake.store` for the schema):
a CLIP embedding, SpLiCE concept weights, ``l0``, ``splice_cosine``, and ``status``/``error``.

How it runs
    Decoding and preprocessing run in a pool of worker processes (``workers``) while the main
    process encodes batches with the model; a writer thread decomposes and commits finished batches.
    Every batch is committed as a merge on ``id``: re-running the same command skips what is
    already there, and a run killed at any point (even SIGKILL) and re-run ends with every image
    exactly once.

Bad input never stops the job: each unreadable, corrupt, truncated, empty, oversized (Pillow's
decompression-bomb limit) or missing image becomes a row with ``status='error'`` and a message in
``error``; the summary counts ok / error / skipped rows. :attr:`IngestSummary.exit_code` is 0 when
any image was ingested (or there was nothing new to do) and 1 when every attempted image failed.

``decompose_table(db, vocab, l1)`` recomputes the concept columns from the stored embeddings (new
vocabulary or l1) without touching the images, as a new concept-column version.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..models.demo_model import demo_image_mean
from ..models.encoder import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .batch import WorkItem
from .decode import PILLOW_MAX_PIXELS, Decoder
from .decompose import decompose_table
from .engines.local import LocalPipeline, default_workers
from .engines.ray import drive_ray_ingest, require_ray
from .rollup import refresh_rollup
from .settings import (
    encoder_metadata,
    load_mean,
    package_version,
    resolve_encoder,
    resolve_vocabulary,
    vocabulary_metadata,
)
from .sources import open_source, uri_id
from .store import ImageStore, check_compatible, compact_fragments, companion_tables, images_schema
from .summary import IngestSummary


def ingest(
    source,
    db,
    table: str = "images",
    model=None,
    pretrained: str | None = None,
    vocab="auto",
    l1: float | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    limit: int | None = None,
    id_column: str | None = None,
    quiet: bool = False,
    *,
    uri_column: str | None = None,
    image_column: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    device: str = "auto",
    prompt_template: str | None = None,
    image_mean=None,
    mean_sample: int = 1024,
    retry_errors: bool = False,
    new_concept_version: bool = False,
    max_pixels: int | None = None,
    draft: bool = False,
    worker_type: str = "process",
    start_method: str | None = None,
    index_min_rows: int = 10_000,
    progress_file=None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    ray_gpus_per_actor: float | None = None,
    commit_every: int = 100_000,
    encoder_threads: int | None = None,
    rollup: bool | str = "auto",
    label_from: str | None = "parent",
) -> IngestSummary:
    """Ingest ``source`` into table ``table`` of the LanceDB database ``db``; returns an :class:`IngestSummary`.

    Parameters
    ----------
    source : directory (recursive), manifest (.csv/.tsv/.parquet/.jsonl with a ``uri``/``path`` column
        relative to the manifest, any metadata columns), Lance dataset directory, or ``DB::TABLE``.
    db : LanceDB URI (local directory, ``s3://...``, ...); ``storage_options`` are passed to LanceDB.
    model, pretrained, vocab, l1, prompt_template : left unset (None; ``vocab="auto"``), an existing table's
        own settings, else the product defaults (ViT-B-32 / laion2b_s34b_b79k, the "default" vocabulary,
        l1 0.25, no template); an explicit value that differs from the table's is refused.
    label_from : folder sources: ``"parent"`` records the parent folder as ``label`` (the ImageFolder
        convention; a top folder named train/val/test gives ``split``), None turns it off. Every folder
        file also gets ``modified_at`` (mtime, UTC) and ``taken_at`` (EXIF DateTimeOriginal, UTC when
        the photo records its offset).
    model, pretrained : open_clip architecture and weights (tag or local file), ``model="demo"`` for the
        offline demo model, or an encoder object with the :class:`~lance_concepts.models.encoder.ClipEncoder` API.
    vocab : vocabulary spec (``"default"``, ``"demo"``, a file, a Vocabulary) or ``None`` for embeddings only.
    l1 : SpLiCE l1 penalty. ``prompt_template`` optionally wraps concepts (``"a photo of {}"``).
    batch_size : images per encoder batch and per commit. ``workers``: decode processes (default:
        the CPU count, at most 8; 0 decodes inline). ``worker_type``: "process" or "thread";
        ``start_method`` of the processes (default fork on Linux, spawn elsewhere).
    limit : only the first ``limit`` source rows. ``id_column``: manifest column with stable ids
        (default ``id`` when present, else the SHA-256 of the file content).
    image_mean : SpLiCE image mean: None (the table's recorded mean; else the demo model's packaged
        reference mean for ``model="demo"``, or the mean of the first ``mean_sample`` images of the
        first run; recorded), a vector, or a ``.npy`` path.
    retry_errors : re-attempt rows that are in the table with status 'error'.
    new_concept_version : if the table was decomposed with another vocabulary / l1 / template, first
        recompute its concept columns with this run's settings (see :func:`decompose_table`).
    max_pixels : decompression-bomb limit (default Pillow's, about 89.5 megapixels).
    draft : let large images decode at reduced resolution (JPEG DCT scaling / box reduction, shorter side
        kept >= 2x the model input) before the model's own resize; faster on large photos, embeddings
        differ slightly from full decoding.
    index_min_rows : build / refresh the scalar indexes (LABEL_LIST on concept_ids, BTREE on id,
        BITMAP on the postings' concept_id) once the table has this many rows (None: never; small
        tables are scanned faster than indexed). ``lance-concepts index`` builds them on demand.
    engine : ``"local"`` (this machine: decode processes, one encoder) or ``"ray"``: the same per-batch
        work as Ray Data ``map_batches`` on an actor pool (one model per actor, GPU actors when the
        cluster has GPUs), rows written with lance-ray, one commit per ``commit_every`` rows (see
        :mod:`lance_concepts.lake.engines.ray`). ``ray_address``: the cluster (``"auto"``, ``"ray://head:10001"``;
        default: the session already initialised in this process, else a local one). ``ray_actors``:
        actor count (default: one per GPU, else one per CPU); ``ray_gpus_per_actor`` (default 1 when the
        cluster has GPUs, else 0). ``workers`` and ``worker_type`` are local-engine settings.
    encoder_threads : torch intra-op threads for the encoder during this run (default: torch's, one per
        core). The decode processes share the cores with them: when decoding is the bottleneck (a
        tiny model such as the demo model on full-size photos), 1 is faster (+25% measured on 2
        cores, BENCHMARKS.md "Ingest throughput"); with a large model on the CPU keep the default.
    rollup : rebuild the report aggregates at the end (:mod:`lance_concepts.lake.rollup`): ``"auto"`` (when the
        table has at most 2M rows or this run wrote at least 5% of it; else the summary says to run
        ``lance-concepts rollup``), ``True`` (always) or ``False``.
    """
    t_start = time.perf_counter()
    check_writable_db(db)
    model, pretrained, vocab, l1, prompt_template = table_defaults(
        ImageStore(db, table, storage_options), model, pretrained, vocab, l1, prompt_template)
    batch_size = _check_options(engine=engine, retry_errors=retry_errors, commit_every=commit_every,
                                batch_size=batch_size, limit=limit, worker_type=worker_type, l1=l1,
                                encoder_threads=encoder_threads)
    max_pixels = int(max_pixels) if max_pixels else PILLOW_MAX_PIXELS
    src = open_source(source, id_column=id_column, uri_column=uri_column, image_column=image_column,
                      storage_options=storage_options, label_from=label_from)
    n_total = len(src) if limit is None else min(len(src), int(limit))
    enc = resolve_encoder(model, pretrained, device, batch_size)
    voc = resolve_vocabulary(vocab)
    meta = _new_table_metadata(enc, voc, l1, prompt_template, src, table, id_column)
    summary = IngestSummary(db=str(db), table=table, source=src.location, total=n_total,
                            model=meta["model_name"] + (f" ({meta['pretrained']})" if meta.get("pretrained") else ""),
                            vocabulary=None if voc is None else f"{voc.name} ({len(voc)} concepts)")
    store = ImageStore(db, table, storage_options)
    _open_table(store, src, meta, summary, new_concept_version=new_concept_version,
                redecompose=lambda: decompose_table(
                    db, voc, l1, table=table, storage_options=storage_options, encoder=enc,
                    prompt_template=prompt_template, image_mean=image_mean, quiet=quiet, engine=engine,
                    ray_address=ray_address, ray_actors=ray_actors))
    if src.skipped_files:
        summary.notes.append(f"{src.skipped_files} files without an image extension skipped")
    items = _pending_items(store, src, n_total, retry_errors, summary, by_content=meta["id_source"].startswith("sha256"))
    mean = _settle_image_mean(store, meta, model, image_mean)
    if not items:  # an interrupted run may have committed every row but not rebuilt the aggregates
        note = refresh_rollup(store, None, rollup, quiet) if store.exists() else None
        if note:
            summary.notes.append(note)
        return _finish(store, summary, t_start, nothing_to_do=True)
    text = _concept_dictionary(voc, enc, prompt_template, int(meta["embed_dim"]))
    decoder = Decoder(enc.preprocess, src.root, max_pixels, (2 * int(getattr(enc, "image_size", 224))) if draft
                      else None, need_hash=True,
                      input_size=int(getattr(enc, "image_size", 224)))
    with _pillow_pixel_limit(max_pixels):
        if engine == "ray":
            recovering = drive_ray_ingest(
                src, store, enc, items, decoder, model=model, pretrained=pretrained, device=device,
                batch_size=batch_size, voc=voc, text=text, l1=l1, meta=meta, mean=mean, mean_sample=mean_sample,
                summary=summary, ray_address=ray_address, ray_actors=ray_actors,
                ray_gpus_per_actor=ray_gpus_per_actor, commit_every=int(commit_every), quiet=quiet)
        else:
            recovering = False
            pipeline = LocalPipeline(src, store, enc, voc, text, l1, meta, mean, mean_sample, batch_size, summary,
                                     retry_errors)
            pipeline.start_method = start_method
            n_workers = default_workers() if workers is None else max(0, int(workers))
            with _progress_bar(len(items), quiet, progress_file) as bar, _torch_threads(encoder_threads):
                pipeline.bar = bar
                pipeline.run(items, decoder, n_workers, worker_type)
    _record_source(store, meta, src, summary)
    _tidy_table(store, summary, engine=engine, recovering=recovering, index_min_rows=index_min_rows)
    note = refresh_rollup(store, summary.ok + summary.errors + summary.duplicates, rollup, quiet)
    if note:
        summary.notes.append(note)
    return _finish(store, summary, t_start)


ID_FROM_URI = "uri (lance_concepts.lake.sources.uri_id)"
CONTENT_FIELD = pa.field("content_sha256", pa.string())  # hex SHA-256 of the file bytes: SQL finds duplicates


def check_writable_db(db) -> None:
    """Refuse a local database that cannot be written before any model is loaded (one-line InputError)."""
    s = os.fspath(db) if isinstance(db, (str, os.PathLike)) else None
    if s is None or "://" in s:
        return  # a connection object or an object store: LanceDB reports its own errors
    p = Path(s).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"db {s!r} is a file, not a LanceDB directory")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"db {s!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"db {s!r} is not writable ({str(probe)!r}: permission denied)")


def table_defaults(store: ImageStore, model, pretrained, vocab, l1, prompt_template):
    """Unset settings (None, ``vocab="auto"``) -> the existing table's, else the product defaults."""
    old = store.metadata() if store.exists() else {}
    has = bool(old) and store.count() > 0
    if model is None:
        model = old.get("model_name") if has and old.get("model_name") else DEFAULT_MODEL
        if pretrained is None:
            pretrained = old.get("pretrained") if has else DEFAULT_PRETRAINED
    elif pretrained is None and has and model == old.get("model_name"):
        pretrained = old.get("pretrained")
    elif pretrained is None and model == DEFAULT_MODEL:
        pretrained = DEFAULT_PRETRAINED
    if vocab == "auto":
        vocab = _recorded_vocabulary(old) if has else "default"
    if l1 is None:
        l1 = float(old["l1_penalty"]) if has and old.get("l1_penalty") is not None else 0.25
    if prompt_template is None and has:
        prompt_template = old.get("prompt_template")
    return model, pretrained, vocab, l1, prompt_template


def _recorded_vocabulary(meta: dict):
    """The vocabulary spec a table was decomposed with (its file when it came from one)."""
    src = str(meta.get("vocabulary_source") or "")
    if src.startswith("file:") and os.path.exists(src[5:]):
        return src[5:]
    return meta.get("vocabulary")


def _check_options(*, engine, retry_errors, commit_every, batch_size, limit, worker_type, l1, encoder_threads) -> int:
    """Refuse bad settings before anything is loaded or written; returns the batch size as an int."""
    if encoder_threads is not None and (not isinstance(encoder_threads, int) or encoder_threads < 1):
        raise InputError(f"encoder_threads must be a positive integer, got {encoder_threads!r}")
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        require_ray()
        if retry_errors:
            raise InputError("retry_errors runs on the local engine only (it replaces rows in place)")
        if commit_every is None or int(commit_every) < 1:
            raise InputError("commit_every must be a positive integer")
    if batch_size is None or int(batch_size) < 1:
        raise InputError("batch_size must be a positive integer")
    if limit is not None and int(limit) < 0:
        raise InputError("limit must be >= 0")
    if worker_type not in ("process", "thread"):
        raise InputError("worker_type must be 'process' or 'thread'")
    if l1 is not None and not (isinstance(l1, (int, float)) and not isinstance(l1, bool)
                               and math.isfinite(l1) and l1 > 0):
        raise InputError(f"l1 must be a positive number, got {l1!r}")
    return int(batch_size)


def _new_table_metadata(enc, voc, l1, prompt_template, src, table, id_column) -> dict:
    """The settings this run would record on a new table (an existing table's own settings win later)."""
    ctab, ptab = companion_tables(table)
    return {
        **encoder_metadata(enc),
        **vocabulary_metadata(voc, l1, prompt_template),
        "package_version": package_version(),
        "concepts_table": ctab,
        "postings_table": ptab,
        "image_mean": None,
        "concept_version": 1 if voc is not None else 0,
        "id_source": f"source column {id_column or 'id'}" if src.id_column else ID_FROM_URI,
    }


def _open_table(store: ImageStore, src, meta: dict, summary: IngestSummary, *, new_concept_version: bool,
                redecompose) -> None:
    """Create the table, or check that appending to it keeps its rows comparable; ``meta`` then holds
    the settings every row of this run is computed with (the table's own, for an existing table)."""
    dim = int(meta["embed_dim"])
    if not store.exists():
        meta["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.create_or_open(images_schema(dim, [*src.metadata_fields, CONTENT_FIELD], meta))
        store.postings  # noqa: B018  (create the postings table with the images table)
    else:
        store.create_or_open(images_schema(dim, src.metadata_fields))
    old = store.metadata()
    if old.get("created_at") != meta.get("created_at"):  # an existing table (or another process won the race)
        efield = store.schema.field("embedding") if "embedding" in store.schema.names else None
        if efield is not None and getattr(efield.type, "list_size", dim) != dim:
            raise InputError(f"table {store.name!r} holds {efield.type.list_size}-d embeddings; model "
                             f"{meta['model_name']!r} gives {dim}-d. Use another table (table=...).")
        if store.count() > 0 and old:
            verdict = check_compatible(old, meta, table=store.name,
                                       allow_new_concept_version=new_concept_version)
            if verdict == "new-concepts":
                done = redecompose()
                summary.notes.append(f"existing rows re-decomposed as concept version {done.concept_version}")
                old = store.metadata()
            for k in ("image_mean", "image_mean_source", "concept_version", "concept_history", "created_at",
                      "sources", "id_source"):
                if k in old:
                    meta[k] = old[k]
        elif old:  # an empty table (an earlier run died before its first commit): this run's settings win
            meta["created_at"] = old.get("created_at", meta.get("created_at"))
    summary.concept_version = meta.get("concept_version")


def _pending_items(store: ImageStore, src, n_total: int, retry_errors: bool, summary: IngestSummary,
                   by_content: bool = False) -> list[WorkItem]:
    """The source rows not in the table yet (re-runs skip what is there; ``retry_errors`` retries failures).

    Rows are keyed by the source's id column, else by uri (:func:`uri_id`; the k-th repeat of a uri in
    a manifest gets ``uri_id(uri + "#k")`` so that no manifest row is lost). ``by_content``: a table
    created before uri keys, whose ids are content hashes (set after reading; skipped by uri)."""
    have = store.existing(["id", "uri", "status"])
    have_ids = dict(zip(have.column("id").to_pylist(), have.column("status").to_pylist())) if have.num_rows else {}
    have_uris = {}
    if have.num_rows and by_content and not src.id_column:
        have_uris = dict(zip(have.column("uri").to_pylist(), have.column("status").to_pylist()))

    def already(status) -> bool:
        return status is not None and not (retry_errors and status == "error")

    items: list[WorkItem] = []
    seen_ids: set[str] = set()
    repeats: dict[str, int] = {}
    uris = src.table.column("uri").to_pylist()[:n_total]
    ids = src.table.column("id").to_pylist()[:n_total] if src.id_column else [None] * n_total
    for i, (u, ident) in enumerate(zip(uris, ids)):
        if src.id_column:
            # an empty id falls back to one derived from the uri (stable across runs)
            ident = _uri_key(u, repeats) if ident is None or str(ident).strip() == "" else str(ident)
            if already(have_ids.get(ident)):
                summary.skipped += 1
                continue
            if ident in seen_ids:
                summary.duplicates += 1
                continue
            seen_ids.add(ident)
        elif by_content:
            if already(have_uris.get(u)):
                summary.skipped += 1
                continue
        else:
            ident = _uri_key(u, repeats)
            if already(have_ids.get(ident)):
                summary.skipped += 1
                continue
        items.append(WorkItem(i, "" if u is None else str(u), ident))
    return items


def _uri_key(u, repeats: dict) -> str:
    """uri_id of a source uri; its k-th repeat in the same source gets uri_id(uri + "#k")."""
    key = "" if u is None else str(u)
    k = repeats[key] = repeats.get(key, -1) + 1
    return uri_id(key if k == 0 else f"{key}#{k}")


def _settle_image_mean(store: ImageStore, meta: dict, model, image_mean) -> np.ndarray | None:
    """The SpLiCE image mean of this run: the table's recorded one, the given one (only if it is the
    same for a table that has rows), or the demo model's reference mean; None means estimate it."""
    reference_mean = None
    if image_mean is None and model == "demo" and meta.get("image_mean") is None:
        # The demo model ships its reference mean (2,000 random scenes), like the authors' MSCOCO
        # means: a mean estimated from a drifting collection shrinks the drifting concept's weights.
        image_mean = reference_mean = demo_image_mean()
    mean = load_mean(image_mean, int(meta["embed_dim"]))
    if mean is not None and meta.get("image_mean") is not None and store.count() > 0 and \
            not np.allclose(mean, np.asarray(meta["image_mean"], np.float32), atol=1e-6):
        raise InputError(
            f"table {store.name!r} was decomposed with another image mean ({meta.get('image_mean_source')}); "
            "appending with this one would mix concept weights. Recompute the table first: decompose_table(..., "
            "image_mean=...) (CLI: lance-concepts decompose --image-mean FILE), or leave image_mean unset."
        )
    if mean is None and meta.get("image_mean") is not None:
        mean = np.asarray(meta["image_mean"], dtype=np.float32)
    if mean is not None and meta.get("image_mean") is None:
        meta["image_mean"] = mean.tolist()
        meta["image_mean_source"] = ("the demo model's reference mean" if reference_mean is not None else
                                     "given" if image_mean is not None else meta.get("image_mean_source"))
    return mean


def _concept_dictionary(voc, enc, prompt_template, dim: int) -> np.ndarray | None:
    """The vocabulary's text embeddings, before any image work (cached on disk by the vocabulary)."""
    if voc is None:
        return None
    text = np.asarray(voc.embed(enc, template=prompt_template), dtype=np.float32)
    if text.shape != (len(voc), dim):
        raise InputError(f"vocabulary embeddings have shape {text.shape}, expected {(len(voc), dim)}")
    return text


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int):
    """Pillow's decompression-bomb limit set to ours for the run (the decode workers fork from here)."""
    from PIL import Image

    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


@contextlib.contextmanager
def _progress_bar(total: int, quiet: bool, progress_file):
    if quiet:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc="ingest", dynamic_ncols=True, smoothing=0.1,
               file=progress_file or sys.stderr, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """The encoder's torch threads for the run only (None: leave torch's setting alone)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _record_source(store: ImageStore, meta: dict, src, summary: IngestSummary) -> None:
    """Append this run's source to the table's history (the last 50 are kept)."""
    final = store.metadata() or meta
    final = {**meta, **{k: v for k, v in final.items() if k in ("image_mean", "image_mean_source")}}
    hist = list(final.get("sources") or [])
    hist.append({"source": src.location, "kind": src.kind, "root": src.root,
                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "ok": summary.ok, "error": summary.errors})
    final["sources"] = hist[-50:]
    if src.root:
        final["image_root"] = src.root  # where relative uris of the latest source resolve (per source: "sources")
    store.write_metadata(final)


def _tidy_table(store: ImageStore, summary: IngestSummary, *, engine: str, recovering: bool,
                index_min_rows: int | None) -> None:
    """De-duplicate what concurrent or interrupted writers left, compact, and index large tables."""
    removed = store.dedupe(postings=store.lock_path is None or recovering)
    if removed and engine == "ray" and not (store.lock_path is None or recovering):
        store.dedupe(postings=True)  # the postings of the duplicate rows (content ids seen twice in the run)
    if removed:
        summary.duplicates += removed
        summary.notes.append(f"removed {removed} duplicate rows left by a concurrent writer"
                             if engine == "local" else f"removed {removed} rows whose content was already there")
    if recovering:
        summary.notes.append("an earlier Ray ingest was interrupted: its postings were de-duplicated")
    try:
        with store.write_lock():
            compact_fragments(store)
            if index_min_rows is not None and store.count() >= index_min_rows:
                store.ensure_indexes()
    except Exception as exc:  # indexes and compaction are optimisations: report, do not fail the run
        summary.notes.append(f"index/compaction step skipped ({str(exc)[:200]}); the data is complete, "
                             "the next run retries it")


def _finish(store: ImageStore, summary: IngestSummary, t_start: float, nothing_to_do: bool = False) -> IngestSummary:
    summary.seconds = time.perf_counter() - t_start
    summary.rows_in_table = store.count()
    if nothing_to_do and summary.total == 0:
        summary.notes.append("the source has no rows (limit 0?)")
    return summary


