"""The project's one thread-pool policy.

Why this module exists
----------------------
A lance-concepts process holds (at least) two native thread pools that know nothing of each other:

* numpy's BLAS (OpenBLAS in the numpy wheels; a pthreads pool sized to every core), used by
  ``np.linalg.solve``, ``np.matmul`` on stacks of small matrices, ``@`` on dense arrays;
* torch's intra-op pool (OpenMP in the CPU wheels, which also drives torch's own MKL), used by the
  dictionary GEMMs, the model forward passes and most tensor operations.

Each pool assumes the whole machine. When one runs while the other's workers are still spinning
(OpenMP workers busy-wait for a while after every parallel region), or when both run at once, the
threads oversubscribe the cores: on the 2-core development machine SpLiCE's batched small solves ran
10x slower (issue 17: 3.6 instead of 57 images/s at ``l1 = 0.05``) with identical results.

The policy (applied with :func:`hot_path` and :func:`worker_threads`)
-------------------------------------------------------------------
1. **One parallel library at a time, and it is torch.** Large dense work (dictionary GEMMs, model
   forward passes) goes through torch, which keeps ``torch_threads`` threads (default: what torch
   already uses, i.e. the cores this process may run on).
2. **numpy's BLAS is held to one thread inside hot paths.** Its work there is many small problems
   (batched small solves, per-image Grams, statistics on modest arrays), where a thread pool buys
   nothing per call and fights torch's pool. The limit is set on entry and restored on exit, so
   code outside the hot paths (a user's own numpy) is left as the user configured it.
3. **Worker processes and worker tasks use one thread for everything** (torch, BLAS, OpenMP): the
   parallelism is the number of workers. :func:`worker_threads` is the initializer for them; it also
   sets ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` to 1 for processes the
   worker starts itself (these variables are read only when a library loads).
4. Users override the defaults with ``LANCE_CONCEPTS_BLAS_THREADS`` (numpy BLAS inside hot paths)
   and ``LANCE_CONCEPTS_TORCH_THREADS`` (torch inside hot paths); both default to "leave to the
   policy" (1 and torch's current count).

:func:`hot_path` is a context manager and a decorator; nesting is safe (each level restores what it
found). :func:`describe` reports the pools as they are now (for benchmarks and bug reports).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

__all__ = ["hot_path", "worker_threads", "describe", "blas_threads", "available_cores"]

_ENV_BLAS = "LANCE_CONCEPTS_BLAS_THREADS"
_ENV_TORCH = "LANCE_CONCEPTS_TORCH_THREADS"
_WORKER_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def blas_threads() -> int | None:
    """Threads numpy's own BLAS uses now (other BLAS copies other packages load are not counted,
    some cannot be limited), None if unknown."""
    from threadpoolctl import threadpool_info

    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    mine = [p["num_threads"] for p in blas if "numpy" in str(p.get("filepath", ""))]
    counts = mine or [p["num_threads"] for p in blas]
    return max(counts) if counts else None


class hot_path(contextlib.ContextDecorator):
    """Run a block (or a function, as a decorator) under the policy: BLAS 1 thread, torch as set.

    ``blas`` / ``torch_threads`` default to the environment overrides, else 1 / unchanged. The
    previous limits are restored on exit, also on error."""

    def __init__(self, blas: int | None = None, torch_threads: int | None = None):
        self.blas = blas
        self.torch_threads = torch_threads
        self._stack: list = []

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        blas = self.blas if self.blas is not None else (_env_int(_ENV_BLAS) or 1)
        limiter = threadpool_limits(limits=int(blas), user_api="blas")
        torch_before = None
        wanted = self.torch_threads if self.torch_threads is not None else _env_int(_ENV_TORCH)
        if wanted is not None and "torch" in sys.modules:
            torch = sys.modules["torch"]
            torch_before = torch.get_num_threads()
            if torch_before != int(wanted):
                torch.set_num_threads(int(wanted))
        self._stack.append((limiter, torch_before))
        return self

    def __exit__(self, *exc):
        limiter, torch_before = self._stack.pop()
        limiter.restore_original_limits()
        if torch_before is not None and sys.modules["torch"].get_num_threads() != torch_before:
            sys.modules["torch"].set_num_threads(torch_before)
        return False

    def __call__(self, func):
        # a fresh instance per call keeps a decorated function re-entrant and thread-safe
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with hot_path(self.blas, self.torch_threads):
                return func(*args, **kwargs)

        return wrapper


def worker_threads() -> None:
    """Initializer for worker processes / tasks: one thread for torch, BLAS and OpenMP.

    Meant for ``ProcessPoolExecutor(initializer=...)`` and Ray tasks, whose parallelism is the number
    of workers. Also sets the environment for any process the worker starts."""
    for name in _WORKER_ENV:
        os.environ[name] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # every loaded BLAS and OpenMP runtime, for the life of the worker
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def describe() -> dict:
    """The process's thread pools as they are now: cores, torch threads, each native pool."""
    from threadpoolctl import threadpool_info

    info = {"cores": available_cores(), "pools": [
        {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "prefix", "version")}
        for p in threadpool_info()]}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info
