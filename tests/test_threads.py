"""The thread-pool policy (lance_concepts.threads) and its use in the SpLiCE solver."""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from lance_concepts import threads
from lance_concepts.concepts.splice import SpliceDecomposer, prepare_dictionary

from .splice_problems import clip_like_images, coherent_dictionary, image_mean


def test_hot_path_limits_blas_and_restores():
    with threadpool_limits(limits=2, user_api="blas"):
        assert threads.blas_threads() == 2
        with threads.hot_path():
            assert threads.blas_threads() == 1
            with threads.hot_path(blas=2):  # nesting restores level by level
                assert threads.blas_threads() == 2
            assert threads.blas_threads() == 1
        assert threads.blas_threads() == 2


def test_hot_path_decorator_and_torch_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()

    @threads.hot_path(torch_threads=1)
    def probe():
        return threads.blas_threads(), torch.get_num_threads()

    assert probe() == (1, 1)
    assert torch.get_num_threads() == before


def test_environment_override(monkeypatch):
    monkeypatch.setenv("LANCE_CONCEPTS_BLAS_THREADS", "2")
    with threads.hot_path():
        assert threads.blas_threads() == 2
    monkeypatch.setenv("LANCE_CONCEPTS_BLAS_THREADS", "zero")
    with pytest.raises(ValueError, match="LANCE_CONCEPTS_BLAS_THREADS"):
        with threads.hot_path():
            pass


def test_describe_lists_the_pools():
    info = threads.describe()
    assert info["cores"] >= 1
    assert any(p["user_api"] == "blas" for p in info["pools"])


def test_solver_runs_under_the_policy(monkeypatch):
    from lance_concepts.concepts import splice

    seen = []
    real = splice._bpp

    def spy(*args, **kwargs):
        seen.append(threads.blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(splice, "_bpp", spy)
    E = coherent_dictionary(400, 64, seed=50)
    mean = image_mean(64, seed=51)
    X = clip_like_images(prepare_dictionary(E), 8, mean, seed=52)
    with threadpool_limits(limits=2, user_api="blas"):
        SpliceDecomposer(E, mean, 0.1).decompose(X)
    assert seen and set(seen) == {1}


@pytest.mark.slow
@pytest.mark.skipif(threads.available_cores() < 2, reason="oversubscription needs two cores to show")
def test_both_pools_active_is_not_slower_than_single_threaded_blas():
    """Issue 17: numpy's BLAS pool and torch's OpenMP pool together made the solver 10x slower.
    With both pools left at full size by the caller the policy must keep it within 3x of a run with
    single-threaded BLAS (a margin far above timing noise; medians of 3)."""
    torch = pytest.importorskip("torch")
    E = coherent_dictionary(3000, 128, seed=53)
    mean = image_mean(128, seed=54)
    X = clip_like_images(prepare_dictionary(E), 256, mean, seed=55)
    dec = SpliceDecomposer(E, mean, 0.05).fit()
    dec.decompose(X[:16])
    cores = threads.available_cores()

    def timed(blas):
        with threadpool_limits(limits=blas, user_api="blas"):
            t0 = time.perf_counter()
            dec.decompose(X)
            return time.perf_counter() - t0

    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        both, single = [], []
        for _ in range(3):
            both.append(timed(cores))
            single.append(timed(1))
    finally:
        torch.set_num_threads(before)
    assert statistics.median(both) <= 3.0 * statistics.median(single)


def test_worker_threads_sets_the_environment(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        with threadpool_limits(limits=None):  # restores every pool on exit
            threads.worker_threads()
            assert os.environ["OMP_NUM_THREADS"] == "1"
            assert threads.blas_threads() == 1
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
