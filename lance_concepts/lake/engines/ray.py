"""The Ray engine: ``ingest`` and ``decompose_table`` with ``engine="ray"`` (Ray Data + lance-ray).

Only the image work moves: the driver resolves the source, the model's identity, the vocabulary's
text embeddings, the SpLiCE image mean, what is already in the table and the table's schema and
metadata exactly as the local engine does (``lance_concepts.lake.ingest``, ``lance_concepts.lake.store``); Ray
runs the per-batch function of the local pipeline (:func:`lance_concepts.lake.batch.process_batch`:
decode, encode, decompose) as Ray Data ``map_batches`` on an actor pool, one model per actor (GPU
actors when the cluster has GPUs), and lance-ray writes the rows.

Ingest
    The rows to do are cut into *waves* of ``commit_every`` rows. Per wave: the actors produce the
    image rows (materialised in Ray's object store), then lance-ray appends the wave's postings and
    then its image rows, each as ONE Lance commit of the fragments that the write tasks produced
    (``lance_ray`` datasink: fragments are written by the tasks, committed by the driver). A task
    that dies after writing its fragment files and is retried leaves those files unreferenced: only
    the fragments of successful attempts are committed, so no row is written twice (tested by
    killing a write task and a map actor, ``tests/test_distributed.py``). A run that dies between
    waves keeps the committed waves; the re-run skips them like the local engine does. Postings go
    first (as in the local engine: never images without postings); the postings of a wave whose image
    commit never happened are duplicated by the re-run, which therefore de-duplicates the postings
    once at its end (it finds the ``ingest_in_progress`` marker the dead run left in the metadata).
Decompose
    Every fragment of the images table is a task: an actor reads the fragment's ids and embeddings,
    decomposes them and rewrites only the four concept columns of that fragment
    (``LanceFragment.update_columns``: a new data file for those columns, the embeddings untouched);
    the driver commits all fragments in one ``Update`` (rewrite-columns) commit. The schema, column
    order and metadata stay those of the local engine. (lance-ray's ``add_columns`` adds *new*
    columns; the concept columns already exist in every images table, so a backfill is an update.)

The module imports ray lazily: ``import lance_concepts`` and the local engine never need it.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ...errors import InputError, LanceConceptsError
from ..batch import WorkItem, decode_tasks, encode_batch, estimate_mean, split_decoded
from ..decode import Decoder
from ..settings import concepts_table_matches
from ..sources import Source
from ..store import ImageStore, utc_now
from ..summary import IngestSummary


def _driver_mean(src: Source, enc, items: Sequence[WorkItem], decoder: Decoder, mean_sample: int, batch_size: int,
                 dim: int):
    """The SpLiCE image mean from the first images, as the local pipeline estimates it (the first
    ``mean_sample`` ok images, rounded up to whole batches), computed on the driver. -> (mean, n)"""
    want = -(-int(mean_sample) // batch_size) * batch_size
    ok, xs = [], []
    for i in range(0, len(items), batch_size):
        ch = items[i:i + batch_size]
        o, x, _ = split_decoded(ch, decoder(decode_tasks(src, ch)))
        ok += o
        xs += x
        if len(ok) >= want:
            break
    ok, xs = ok[:want], xs[:want]
    embs = []
    for i in range(0, len(ok), batch_size):
        _, emb, _, _ = encode_batch(enc, ok[i:i + batch_size], xs[i:i + batch_size], [], dim)
        if emb is not None:
            embs.append(emb)
    if not embs:
        return None, 0
    allemb = np.concatenate(embs)
    return estimate_mean(allemb), len(allemb)


def drive_ray_ingest(src: Source, store: ImageStore, enc, items: list[WorkItem], decoder: Decoder, *, model, pretrained,
                device, batch_size, voc, text, l1, meta, mean, mean_sample, summary: IngestSummary, ray_address,
                ray_actors, ray_gpus_per_actor, commit_every, quiet) -> bool:
    """The driver side of ``engine="ray"``: the image mean, metadata, concepts table and schema as the
    local engine writes them, then the image work on Ray. Returns whether an interrupted Ray ingest
    was found (its postings need de-duplicating)."""
    dim = int(meta["embed_dim"])
    if voc is not None and mean is None:
        mean, n = _driver_mean(src, enc, items, decoder, mean_sample, batch_size, dim)
        if mean is not None:
            meta["image_mean"] = mean.tolist()
            meta["image_mean_source"] = f"estimated from the first {n} images ingested"
    old = store.metadata()
    recovering = bool(old.get("ingest_in_progress"))
    store.write_metadata({**old, **meta, "ingest_in_progress": {"engine": "ray", "started": utc_now()}})
    if voc is not None and mean is not None and not concepts_table_matches(store, voc.digest):
        store.write_concepts(list(voc), text, voc.name, meta)
    meta_cols = [f.name for f in src.metadata_fields]
    if meta_cols:  # metadata columns this table does not have yet (added as in the local engine)
        store.align(src.table.select(meta_cols).slice(0, 0))
    encoder_spec = {"model": model if isinstance(model, str) else None,
                    "encoder": None if isinstance(model, str) else enc, "pretrained": pretrained, "device": device,
                    "batch_size": batch_size, "fingerprint": getattr(enc, "fingerprint", None), "dim": dim}
    decoder_spec = {"root": decoder.root, "max_pixels": decoder.max_pixels, "draft": decoder.draft,
                    "need_hash": decoder.need_hash}
    use_concepts = voc is not None and mean is not None
    with ray_session(ray_address):
        res = ingest_on_ray(
            items, src, store, encoder_spec=encoder_spec, text=text if use_concepts else None, vocab=voc, l1=l1,
            mean=mean, decoder_spec=decoder_spec, batch_size=batch_size, commit_every=commit_every,
            actors=ray_actors, gpus_per_actor=ray_gpus_per_actor, quiet=quiet)
    summary.ok += res.ok
    summary.errors += res.errors
    summary.duplicates += max(0, len(items) - res.ok - res.errors)  # the same id twice in one batch
    for k, v in res.error_kinds.items():
        summary.error_kinds[k] = summary.error_kinds.get(k, 0) + v
    summary.error_examples += res.error_examples[:max(0, 20 - len(summary.error_examples))]
    summary.notes.append(f"engine ray: {res.waves} commit(s) of at most {commit_every} rows")
    return recovering


__all__ = ["ray_session", "init_local", "ingest_on_ray", "decompose_on_ray", "RAY_REQUIREMENTS"]

#: The versions tested together (pyproject's ``ray`` extra pins the same).
RAY_REQUIREMENTS = ("ray[data]==2.60.0", "lance-ray==0.5.0")
_PKG_PARENT = os.fspath(Path(__file__).resolve().parents[3])  # the folder that holds lance_concepts/


def require_ray():
    try:
        import lance_ray  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"engine='ray' needs Ray and lance-ray ({exc.name} is not installed): "
            f"pip install 'lance-concepts[ray]' (pins {', '.join(RAY_REQUIREMENTS)})"
        ) from None


def _runtime_env() -> dict:
    """Workers of a local session import this very copy of the package (a source checkout too)."""
    path = os.environ.get("PYTHONPATH", "")
    return {"env_vars": {"PYTHONPATH": _PKG_PARENT + (os.pathsep + path if path else "")}}


def init_local(num_cpus: int | None = None, **kwargs):
    """Start a local Ray instance whose workers import this copy of lance_concepts (tests, laptops)."""
    require_ray()
    import warnings

    import ray

    with warnings.catch_warnings():  # Ray starts its processes with fork+exec, lance and lancedb warn on fork
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        warnings.filterwarnings("ignore", message="lancedb fork support")
        return ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=_runtime_env(),
                        logging_level="WARNING", **kwargs)


@contextlib.contextmanager
def ray_session(address: str | None = None):
    """Use the Ray session already initialised in this process, else connect to ``address``
    (``"auto"``, ``"ray://head:10001"``, ...), else start a local one; shut down only what we started."""
    require_ray()
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            init_local()
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot start or reach Ray{f' at {address!r}' if address else ''}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _data_context(quiet: bool):
    from ray.data import DataContext

    if quiet:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.print_on_execution_start = False
    with contextlib.suppress(AttributeError):
        ctx.enable_operator_progress_bars = not quiet
    return ctx


def _cluster_plan(actors: int | None, gpus_per_actor: float | None) -> tuple[int, float, int]:
    """(actors, GPUs per actor, CPUs per actor) for the cluster Ray is connected to."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), float(res.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else cpus
    actors = max(1, int(actors))
    cpus_per_actor = max(1, cpus // actors) if not gpus_per_actor else 1
    return actors, float(gpus_per_actor), cpus_per_actor


# ------------------------------------------------------------------------------------------ faults
#: Test hook, never set in normal use: ``{"stages": ["map", "write", "commit", "decompose"], "dir": marker
#: directory, "kill": bool}`` makes the first call of each named stage fail (tests/test_distributed.py).
FAULTS: Mapping[str, Any] | None = None


def _maybe_fail(faults: Mapping[str, Any] | None, stage: str) -> None:
    """Test hook: ``faults = {"stages": [...], "dir": marker directory, "kill": bool}``. The first call
    of a listed stage (across processes: a marker file) kills its worker process (``kill``, like a lost
    node; the default) or raises. Stages: "map" (an ingest actor), "write" (an images write task,
    after its fragment files are written), "commit" (the driver, after a wave's postings commit and
    before its images commit), "decompose" (a decompose actor)."""
    if not faults or stage not in faults.get("stages", ()):
        return
    marker = os.path.join(faults["dir"], f"{stage}.failed")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if faults.get("kill", True):
        os._exit(1)
    raise RuntimeError(f"injected failure in {stage}")


# ------------------------------------------------------------------------------------------ actors
def _load_encoder(spec: Mapping[str, Any]):
    import torch

    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    if spec.get("encoder") is not None:  # an encoder object shipped from the driver
        enc = spec["encoder"]
    else:
        from ...models.encoder import load_encoder

        enc = load_encoder(spec["model"], spec["pretrained"], device=spec["device"], batch_size=spec["batch_size"])
    want = spec.get("fingerprint")
    got = getattr(enc, "fingerprint", None)
    if want and got != want:  # another copy of the weights on this node
        raise LanceConceptsError(f"the model loaded on this Ray worker has fingerprint {got}; the table's is "
                                 f"{want}: every node must load the same weights")
    return enc


def _concepts(spec: Mapping[str, Any]):
    if spec.get("text") is None:
        return None
    from ..batch import ConceptStep

    return ConceptStep(spec["text"], spec["vocab"], spec["l1"], spec["mean"])


class _IngestActor:
    """One per Ray actor: the model, the decoder and the SpLiCE dictionary, loaded once."""

    def __init__(self, spec: Mapping[str, Any]):
        from PIL import Image

        from ..decode import Decoder

        self.spec = spec
        self.enc = _load_encoder(spec)
        Image.MAX_IMAGE_PIXELS = max(int(spec["max_pixels"]), 1)
        self.decoder = Decoder(self.enc.preprocess, spec["root"], spec["max_pixels"], spec["draft"],
                                need_hash=spec["need_hash"], input_size=int(getattr(self.enc, "image_size", 224)))
        self.concepts = _concepts(spec)
        self.bytes_ds = None
        if spec.get("bytes_source"):
            import lance

            uri, version, so = spec["bytes_source"][:3]
            self.bytes_ds = lance.dataset(uri, version=version, storage_options=so)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..batch import WorkItem, process_batch
        from ..store import conform

        _maybe_fail(self.spec.get("faults"), "map")
        uris = batch.column("_lc_uri").to_pylist()
        ids = batch.column("_lc_id").to_pylist()
        items = [WorkItem(k, u or "", i) for k, (u, i) in enumerate(zip(uris, ids))]
        if self.bytes_ds is not None:
            offs = batch.column("_lc_take").to_pylist()
            blobs = self.bytes_ds.take(offs, columns=[self.spec["bytes_source"][3]]).column(0).to_pylist()
            tasks = [(k, it.uri, b if b is not None else b"") for k, (it, b) in enumerate(zip(items, blobs))]
        else:
            tasks = [(k, it.uri, None) for k, it in enumerate(items)]
        meta = batch.select(self.spec["meta_cols"]) if self.spec["meta_cols"] else None
        rows, _, _ = process_batch(items, tasks, self.decoder, self.enc, self.concepts, meta, self.spec["dim"])
        return conform(rows, self.spec["schema"])


def _postings_of(batch: pa.Table) -> pa.Table:
    from ..batch import postings_from_rows
    from ..store import postings_schema

    ok = batch.filter(pa.compute.equal(batch.column("status"), "ok"))
    ok = ok.filter(pa.compute.is_valid(ok.column("concept_ids")))
    return postings_from_rows(ok).cast(postings_schema())


def _stats_of(batch: pa.Table) -> pa.Table:
    """One row per batch: ok count, error kinds (counts) and up to 20 (uri, message) examples."""
    from ..batch import error_kind

    status = batch.column("status")
    err = batch.filter(pa.compute.equal(status, "error"))
    kinds: dict = {}
    for msg in err.column("error").to_pylist():
        kinds[error_kind(msg)] = kinds.get(error_kind(msg), 0) + 1
    examples = list(zip(err.column("uri").to_pylist()[:20], err.column("error").to_pylist()[:20]))
    return pa.table({"ok": [int(pa.compute.sum(pa.compute.equal(status, "ok")).as_py() or 0)],
                     "errors": [err.num_rows], "kinds": [json.dumps(kinds)], "examples": [json.dumps(examples)]})


def _images_sink(uri: str, schema: pa.Schema, storage_options, faults):
    """lance-ray's datasink (tasks write fragments, the driver commits them once), with the fault hook
    between writing the fragment files and returning them."""
    from lance_ray.datasink import LanceDatasink

    class _Sink(LanceDatasink):
        def write(self, blocks, ctx):
            out = super().write(blocks, ctx)
            _maybe_fail(faults, "write")
            return out

    return _Sink(uri, schema=schema, mode="append", storage_options=storage_options)


@dataclass
class RayIngestResult:
    ok: int = 0
    errors: int = 0
    error_kinds: dict = field(default_factory=dict)
    error_examples: list = field(default_factory=list)  # (uri, message)
    waves: int = 0


def ingest_on_ray(items: Sequence, src, store, *, encoder_spec: Mapping[str, Any], text, vocab, l1: float,
                  mean, decoder_spec: Mapping[str, Any], batch_size: int, commit_every: int = 100_000,
                  actors: int | None = None, gpus_per_actor: float | None = None, quiet: bool = False,
                  ) -> RayIngestResult:
    """Run the per-batch work of ``items`` (``lance_concepts.lake.batch.WorkItem``) on Ray and append the rows
    to ``store``'s images and postings tables (already created with their schema and metadata)."""
    faults = FAULTS  # read at call time: tests set it, workers get it in their spec
    import lance_ray as lr
    import ray

    from ..store import postings_schema

    _data_context(quiet)
    n_actors, gpus, cpus = _cluster_plan(actors, gpus_per_actor)
    images_uri = store.table.to_lance().uri
    postings_uri = store.postings.to_lance().uri
    so = dict(store.storage_options) or None
    schema = store.table.schema
    meta_cols = [f.name for f in src.metadata_fields]
    spec = {**encoder_spec, **decoder_spec, "threads": cpus, "text": text, "vocab": vocab, "l1": l1,
            "mean": mean, "meta_cols": meta_cols, "dim": int(encoder_spec["dim"]),
            "schema": pa.schema(list(schema)), "faults": faults}
    if gpus:
        spec["device"] = "cuda" if spec.get("device", "auto") in ("auto", "cpu") else spec["device"]
    if src.bytes_dataset is not None:
        ds = src.bytes_dataset
        spec["bytes_source"] = (ds.uri, ds.version, so, src.bytes_column)
    from ray.data import ActorPoolStrategy

    result = RayIngestResult()
    take = src.table.column("_row") if src.bytes_dataset is not None else None
    for start in range(0, len(items), max(1, int(commit_every))):
        wave = items[start:start + int(commit_every)]
        rows = pa.array([it.row for it in wave], pa.int64())
        cols = {"_lc_uri": pa.array([it.uri for it in wave], pa.string()),
                "_lc_id": pa.array([it.id for it in wave], pa.string())}
        if take is not None:
            cols["_lc_take"] = take.take(rows)
        if meta_cols:
            sub = src.table.select(meta_cols).take(rows)
            for name in meta_cols:
                cols[name] = sub.column(name)
        blocks = max(1, min(len(wave) // max(1, batch_size), 4 * n_actors) or 1)
        todo = ray.data.from_arrow(pa.table(cols)).repartition(blocks)
        done = todo.map_batches(
            _IngestActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size, batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=1, max_size=n_actors), num_cpus=cpus, num_gpus=gpus or None,
        ).materialize()
        if text is not None:
            post = done.select_columns(["id", "status", "concept_ids", "concept_weights"]).map_batches(
                _postings_of, batch_format="pyarrow")
            lr.write_lance(post, postings_uri, mode="append", schema=postings_schema(), storage_options=so)
        if faults and "commit" in faults.get("stages", ()):
            _maybe_fail({**faults, "kill": False}, "commit")  # the driver dies between the two commits
        done.write_datasink(_images_sink(images_uri, schema, so, faults))
        for r in done.select_columns(["uri", "status", "error"]).map_batches(
                _stats_of, batch_format="pyarrow").take_all():
            result.ok += int(r["ok"])
            result.errors += int(r["errors"])
            for k, v in json.loads(r["kinds"]).items():
                result.error_kinds[k] = result.error_kinds.get(k, 0) + int(v)
            room = max(0, 20 - len(result.error_examples))
            result.error_examples += [tuple(e) for e in json.loads(r["examples"])[:room]]
        result.waves += 1
        store.refresh()
    return result


# ------------------------------------------------------------------------------------------ decompose
class _DecomposeActor:
    """One per Ray actor: the SpLiCE dictionary; per fragment a rewrite of its concept columns."""

    def __init__(self, spec: Mapping[str, Any]):
        import torch

        torch.set_num_threads(max(1, int(spec.get("threads", 1))))
        self.spec = spec
        self.concepts = _concepts(spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import lance

        from ..batch import concept_columns

        sp = self.spec
        _maybe_fail(sp.get("faults"), "decompose")
        ds = lance.dataset(sp["uri"], version=sp["version"], storage_options=sp["storage_options"])
        out = {"fragment": [], "fields": [], "rows": [], "l0": [], "cos": []}
        for fid in batch.column("fragment_id").to_pylist():
            frag = ds.get_fragment(int(fid))
            parts = []
            for b in frag.to_batches(columns=["id", "embedding"], filter="status = 'ok'",
                                     batch_size=sp["batch_size"]):
                if b.num_rows == 0:
                    continue
                parts.append(concept_columns(self.concepts, b, sp["dim"]))
            if not parts:
                continue
            upd = pa.concat_tables(parts).cast(sp["update_schema"])
            md, fields = frag.update_columns(upd, left_on="id", right_on="id")
            out["fragment"].append(pickle.dumps(md))
            out["fields"].append(json.dumps([int(f) for f in fields]))
            out["rows"].append(upd.num_rows)
            out["l0"].append(float(pa.compute.sum(upd.column("l0")).as_py() or 0))
            out["cos"].append(float(pa.compute.sum(upd.column("splice_cosine")).as_py() or 0))
        return pa.table({"fragment": pa.array(out["fragment"], pa.binary()),
                         "fields": pa.array(out["fields"], pa.string()),
                         "rows": pa.array(out["rows"], pa.int64()), "l0": pa.array(out["l0"], pa.float64()),
                         "cos": pa.array(out["cos"], pa.float64())})


def decompose_on_ray(store, ds, *, text, vocab, l1: float, mean, dim: int, batch_size: int,
                     actors: int | None = None, quiet: bool = False,
                     ) -> dict:
    """Rewrite the concept columns of every fragment of ``ds`` (the images table at a version) on Ray,
    one commit; then the postings table from the new columns (lance-ray). -> {"rows", "l0", "cos", "postings"}"""
    faults = FAULTS  # read at call time: tests set it, workers get it in their spec
    import lance
    import lance_ray as lr
    import ray
    from ray.data import ActorPoolStrategy

    from ..store import postings_schema, with_retries

    _data_context(quiet)
    n_actors, _, cpus = _cluster_plan(actors, 0.0)
    so = dict(store.storage_options) or None
    schema = ds.schema
    frags = [f.fragment_id for f in ds.get_fragments()]
    spec = {"uri": ds.uri, "version": ds.version, "storage_options": so, "text": text, "vocab": vocab, "l1": l1,
            "mean": mean, "dim": int(dim), "batch_size": int(batch_size), "threads": cpus, "faults": faults,
            "update_schema": pa.schema([schema.field(n) for n in
                                        ("id", "concept_ids", "concept_weights", "l0", "splice_cosine")])}
    stats = {"rows": 0, "l0": 0.0, "cos": 0.0, "postings": 0}
    if frags:
        todo = ray.data.from_items([{"fragment_id": f} for f in frags], override_num_blocks=len(frags))
        res = todo.map_batches(_DecomposeActor, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                               batch_format="pyarrow", compute=ActorPoolStrategy(min_size=1, max_size=n_actors),
                               num_cpus=cpus).take_all()
        mds = [pickle.loads(r["fragment"]) for r in res]
        fields = sorted({f for r in res for f in json.loads(r["fields"])})
        stats["rows"] = sum(int(r["rows"]) for r in res)
        stats["l0"] = sum(float(r["l0"]) for r in res)
        stats["cos"] = sum(float(r["cos"]) for r in res)
        if mds:
            op = lance.LanceOperation.Update(updated_fragments=mds, fields_modified=fields,
                                             update_mode="rewrite_columns")
            with store.write_lock():
                with_retries(lambda: lance.LanceDataset.commit(ds.uri, op, read_version=ds.version,
                                                               storage_options=so), f"concept columns of {store.name}")
    store.refresh()
    # the postings, from the committed concept columns (filtered here, not by the reader)
    src = lr.read_lance(ds.uri, columns=["id", "status", "concept_ids", "concept_weights"], storage_options=so)
    post = src.map_batches(_postings_of, batch_format="pyarrow")
    before = store.postings.to_lance().version
    lr.write_lance(post, store.postings.to_lance().uri, mode="overwrite", schema=postings_schema(),
                   storage_options=so)
    store.refresh()
    if store.postings.to_lance().version == before:  # no posting at all: lance-ray wrote nothing
        store.replace_postings([])
    stats["postings"] = int(store.postings.count_rows())
    return stats
