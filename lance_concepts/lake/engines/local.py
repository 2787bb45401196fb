"""The local engine: decode worker processes feeding one encoder, a writer committing finished batches.

Decoding is CPU-bound and parallel, encoding wants one model in one process, and commits must be
ordered and exactly-once; the pipeline keeps all three busy on one machine.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import warnings

import numpy as np

from ...threads import worker_threads
from ..batch import (
    ConceptStep,
    WorkItem,
    build_rows,
    decode_tasks,
    encode_batch,
    error_kind,
    estimate_mean,
    split_decoded,
)
from ..decode import Decoder
from ..settings import concepts_table_matches
from ..sources import Source, error_id
from ..store import ImageStore
from ..summary import IngestSummary

_WORKER_DECODER = None  # the decode worker's Decoder (set once per worker process)


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this worker when the ingest process is gone, however it died (kill -9 included): a daemon
    thread polls the parent pid (portable; os.getppid() changes when a process is orphaned)."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="lance-concepts-parent-watch", daemon=True).start()


def worker_init(decoder: Decoder, parent_pid: int | None = None):
    global _WORKER_DECODER
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    worker_threads()  # one thread for torch, BLAS and OpenMP: the parallelism is the number of workers
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(decoder.max_pixels, 1)
    _WORKER_DECODER = decoder


def _noop():
    return None


def worker_run(tasks):
    return _WORKER_DECODER(tasks)


def default_start_method() -> str:
    """fork on Linux: workers start in milliseconds and a script calling ingest() needs no
    ``if __name__ == "__main__"`` guard (spawn and forkserver re-import the main module). Workers set
    torch to one thread, the pattern of torch's own DataLoader. spawn elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def default_workers() -> int:
    n = os.cpu_count() or 1
    return max(1, min(8, n))


class LocalPipeline:
    """decode (pool) -> encode (this thread) -> decompose + commit (writer thread)."""

    def __init__(self, src: Source, store: ImageStore, enc, voc, text, l1, meta: dict, mean, mean_sample: int,
                 batch_size: int, summary: IngestSummary, retry_errors: bool):
        self.src, self.store, self.enc, self.voc, self.text = src, store, enc, voc, text
        self.l1, self.meta = l1, meta
        self.mean = mean
        self.mean_sample = int(mean_sample)
        self.batch_size = batch_size
        self.summary = summary
        self.retry_errors = retry_errors
        self.bar = None
        self.start_method = None
        self.concepts: ConceptStep | None = None
        self._held: list = []  # encoded batches waiting for the image mean
        self._held_n = 0
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._writer_exc: BaseException | None = None
        self._meta_written = False
        self._meta_cols = [f.name for f in src.metadata_fields]
        self._src_meta = src.table.select(self._meta_cols) if self._meta_cols else None

    # ---------------------------------------------------------------- decode side
    def _tasks(self, items: list[WorkItem]):
        return decode_tasks(self.src, items)

    def run(self, items: list[WorkItem], decoder: Decoder, n_workers: int, worker_type: str):
        writer = threading.Thread(target=self._writer, name="lance-concepts-writer", daemon=True)
        writer.start()
        chunk = max(1, min(16, self.batch_size // max(1, 2 * max(n_workers, 1))))
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        pool = None
        try:
            if n_workers > 0:
                pool = self._make_pool(decoder, n_workers, worker_type)
            pending: collections.deque = collections.deque()
            it = iter(chunks)
            max_inflight = max(2, 3 * max(n_workers, 1))

            def submit():
                try:
                    ch = next(it)
                except StopIteration:
                    return False
                tasks = self._tasks(ch)
                if pool is None:
                    pending.append((ch, tasks, None))
                else:
                    fn = worker_run if worker_type == "process" else decoder
                    pending.append((ch, tasks, pool.submit(fn, tasks)))
                return True

            for _ in range(max_inflight):
                if not submit():
                    break
            buf_items, buf_x = [], []
            errs: list = []
            while pending:
                ch, tasks, fut = pending.popleft()
                if fut is None:
                    results = decoder(tasks)
                else:
                    try:
                        results = fut.result()
                    except Exception as exc:  # a worker died (e.g. a crash inside a decoder library)
                        pool = self._recover(pool, decoder, n_workers, worker_type, exc)
                        results, pool = self._retry_singly(pool, decoder, tasks, worker_type, n_workers)
                        pending = collections.deque(
                            (c, t, pool.submit(worker_run if worker_type == "process" else decoder, t))
                            for c, t, _ in pending)
                submit()
                ok, xs, bad = split_decoded(ch, results)
                buf_items += ok
                buf_x += xs
                errs += bad
                while len(buf_items) >= self.batch_size:
                    self._encode_and_send(buf_items[:self.batch_size], buf_x[:self.batch_size], errs)
                    buf_items, buf_x, errs = buf_items[self.batch_size:], buf_x[self.batch_size:], []
                if len(errs) >= self.batch_size:
                    self._encode_and_send([], [], errs)
                    errs = []
                self._check_writer()
            if buf_items or errs:
                self._encode_and_send(buf_items, buf_x, errs)
            self._flush_held(final=True)
        finally:
            self._q.put(None)
            writer.join()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._check_writer()

    def _make_pool(self, decoder, n_workers, worker_type):
        if worker_type == "thread":
            return cf.ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="lance-concepts-decode")
        method = self.start_method or default_start_method()
        pool = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context(method),
                                      initializer=worker_init, initargs=(decoder, os.getpid()))
        with warnings.catch_warnings():
            # pylance and lancedb warn on every fork. The workers only decode images and never touch
            # lance; forks happen when no lance operation is in flight (at start, and after the
            # writer has drained when a crashed pool is replaced).
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            warnings.filterwarnings("ignore", message="lancedb fork support")
            pool.submit(_noop).result()  # start the workers now, inside this filter
        return pool

    def _recover(self, pool, decoder, n_workers, worker_type, exc):
        try:
            pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
        if worker_type == "process":
            self._q.join()  # no lance operation in flight while we fork the new workers
        return self._make_pool(decoder, n_workers, worker_type)

    def _retry_singly(self, pool, decoder, tasks, worker_type, n_workers):
        """Re-run a chunk whose worker died one image at a time: only the culprit becomes an error row."""
        out = []
        for t in tasks:
            fn = worker_run if worker_type == "process" else decoder
            try:
                out.extend(pool.submit(fn, [t]).result())
            except Exception as exc:
                out.append((t[0], None, None, f"decoder crashed on this image ({type(exc).__name__}: the "
                                              "worker process died while decoding it)"))
                pool = self._recover(pool, decoder, n_workers, worker_type, exc)
        return out, pool

    # ---------------------------------------------------------------- encode side
    def _encode_and_send(self, ok_items, xs, errs):
        ok_items, emb, errs2, dups = encode_batch(self.enc, ok_items, xs, errs, int(self.meta["embed_dim"]))
        self.summary.duplicates += dups
        work = (ok_items, emb, errs2)
        if self.voc is not None and self.mean is None:
            self._held.append(work)
            self._held_n += len(ok_items)
            if self._held_n >= self.mean_sample:
                self._flush_held()
            return
        self._send(work)

    def _flush_held(self, final: bool = False):
        if not self._held:
            return
        if self.mean is None:
            embs = [w[1] for w in self._held if w[1] is not None]
            if embs:
                allemb = np.concatenate(embs)
                self.mean = estimate_mean(allemb)
                self.meta["image_mean"] = self.mean.tolist()
                self.meta["image_mean_source"] = f"estimated from the first {len(allemb)} images ingested"
            elif not final:
                return
        held, self._held, self._held_n = self._held, [], 0
        for w in held:
            self._send(w)

    def _send(self, work):
        while True:
            self._check_writer()
            try:
                self._q.put(work, timeout=0.5)
                return
            except queue.Full:
                continue

    def _check_writer(self):
        if self._writer_exc is not None:
            exc = self._writer_exc
            raise exc

    # ---------------------------------------------------------------- writer thread
    def _writer(self):
        try:
            while True:
                work = self._q.get()
                try:
                    if work is None:
                        return
                    if self._writer_exc is None:
                        self._write(*work)
                finally:
                    self._q.task_done()
        except BaseException as exc:  # handed to the main thread
            self._writer_exc = exc
            while True:  # drain so the producer never blocks
                try:
                    item = self._q.get(timeout=0.1)
                    self._q.task_done()
                    if item is None:
                        return
                except queue.Empty:
                    continue

    def _ensure_meta(self):
        if self._meta_written:
            return
        cur = self.store.metadata()
        want = {k: self.meta.get(k) for k in ("image_mean", "vocabulary_digest", "model_fingerprint", "l1_penalty")}
        have = {k: cur.get(k) for k in want}
        if have != want:
            self.store.write_metadata({**cur, **self.meta})
        self._meta_written = True

    def _write(self, ok_items, emb, errs):
        self._ensure_meta()
        if str(self.meta.get("id_source", "")).startswith("sha256") and (ok_items or errs):
            # a table keyed by content (before uri keys): the same file may be there under another uri
            present = self.store.ids_present([i for _, i in ok_items] + [e[1] for e in errs])
            if present:
                keep = [j for j, (_, i) in enumerate(ok_items) if i not in present]
                self.summary.duplicates += len(ok_items) - len(keep)
                if not self.retry_errors:
                    self.summary.duplicates += sum(1 for e in errs if e[1] in present)
                if emb is not None:
                    emb = emb[keep]
                ok_items = [ok_items[j] for j in keep]
                if not self.retry_errors:  # (with retry_errors an error row is replaced by the new attempt)
                    errs = [e for e in errs if e[1] not in present]
                if not ok_items:
                    emb = None
        if self.voc is not None and self.concepts is None and ok_items:
            self.concepts = ConceptStep(self.text, self.voc, self.l1, self.mean)
            if not concepts_table_matches(self.store, self.voc.digest):
                self.store.write_concepts(list(self.voc), self.text, self.voc.name, self.meta)
        batch, postings = build_rows(ok_items, emb, errs, self.concepts if self.voc is not None else None,
                                     self._src_meta, int(self.meta["embed_dim"]))
        n_ok, n_err = len(ok_items), len(errs)
        n = n_ok + n_err
        res = self.store.write_batch(batch, postings, retry_errors=self.retry_errors)
        shortfall = n - (res["inserted"] + res["updated"])
        if shortfall > 0:  # another writer committed some of these ids first: they count as duplicates
            self.summary.duplicates += shortfall
        ok_w = max(0, n_ok - max(0, shortfall))
        err_w = max(0, n - max(0, shortfall) - ok_w)
        self.summary.ok += ok_w
        self.summary.errors += err_w
        err_written = errs[:err_w]
        if self.retry_errors and str(self.meta.get("id_source", "")).startswith("sha256") and n_ok:
            # content ids: a retried file that now decodes replaces its uri-keyed error row
            stale = [error_id(it.uri) for it, _ in ok_items]
            lits = ",".join("'" + s.replace("'", "''") + "'" for s in stale)
            self.store.delete(f"status = 'error' AND id IN ({lits})")
        for item, _, msg in err_written:
            kind = error_kind(msg)
            self.summary.error_kinds[kind] = self.summary.error_kinds.get(kind, 0) + 1
            if len(self.summary.error_examples) < 20:
                self.summary.error_examples.append((item.uri, msg))
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(ok=self.summary.ok, error=self.summary.errors, refresh=False)
