"""The SpLiCE solver where it is hard: small l1 (over-complete working sets), near-duplicate concepts,
tests that fail for known broken variants of the solver, parameter errors and the l1 search."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from lance_concepts.errors import InputError
from lance_concepts.concepts.splice import (
    MIN_MEAN_ROWS,
    SpliceConvergenceWarning,
    SpliceDecomposer,
    SpliceMeanWarning,
    decompose,
    estimate_image_mean,
    kkt_violation,
    l1_for_target_l0,
    lasso_objective,
    prepare_dictionary,
)

from .splice_problems import clip_like_images, coherent_dictionary, image_mean, random_dictionary
from .test_splice import sklearn_lasso


def rel_gap(dec, X, W, ref):
    V = dec.transform_input(X)
    lam = dec.l1_penalty
    o, o_ref = lasso_objective(dec.dictionary_, V, W, lam), lasso_objective(dec.dictionary_, V, ref, lam)
    return (o - o_ref) / o_ref


# ---------------------------------------------------------------------------- broken-solver detectors

def test_exact_polish_gives_the_optimum_not_a_descent_point():
    """Fails if the final block-pivoting polish is skipped: coordinate descent alone does not reach
    the optimum of a coherent problem to 1e-9 within the round budget."""
    E = coherent_dictionary(800, 64, seed=31)
    mean = image_mean(64, seed=32)
    X = clip_like_images(prepare_dictionary(E), 6, mean, seed=33)
    dec = SpliceDecomposer(E, mean, 0.1, kkt_tol=1e-5, max_rounds=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpliceConvergenceWarning)
        W = dec.decompose(X)
    ref = sklearn_lasso(dec.dictionary_, dec.transform_input(X), 0.1, tol=1e-12, max_iter=1_000_000)
    assert np.abs(rel_gap(dec, X, W, ref)).max() <= 1e-9
    assert dec.kkt_violation(X, W).max() <= dec.kkt_threshold_ + 1e-6


def test_support_coordinates_are_part_of_the_stopping_rule():
    """Fails if only the zero coordinates are checked: with every concept in the first working set,
    nothing outside it can violate, so only the support's own optimality stops a bad answer."""
    E = coherent_dictionary(24, 32, seed=34)
    mean = image_mean(32, seed=35)
    X = clip_like_images(prepare_dictionary(E), 8, mean, k=4, seed=36)
    dec = SpliceDecomposer(E, mean, 0.02, kkt_tol=1e-4, working_set=32, cd_sweeps=1)
    W = dec.decompose(X)
    assert dec.kkt_violation(X, W).max() <= dec.kkt_threshold_ + 1e-6
    ref = sklearn_lasso(dec.dictionary_, dec.transform_input(X), 0.02, tol=1e-12, max_iter=1_000_000)
    assert np.abs(rel_gap(dec, X, W, ref)).max() <= 1e-7


# ---------------------------------------------------------------------------- small l1, over-complete

def test_small_l1_over_complete_is_certified_and_optimal():
    """At l1 = 1e-3 the working sets outgrow the dimension (singular Grams); every row must still be
    certified and as good as scikit-learn's tight solution."""
    E = coherent_dictionary(600, 48, seed=37)
    mean = image_mean(48, seed=38)
    X = clip_like_images(prepare_dictionary(E), 4, mean, seed=39)
    lam = 1e-3
    dec = SpliceDecomposer(E, mean, lam)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpliceConvergenceWarning)
        W = dec.decompose(X)
    assert dec.kkt_threshold_ <= 1e-6  # relative to l1, not an absolute 1e-4
    assert dec.kkt_violation(X, W).max() <= dec.kkt_threshold_ + 1e-7
    ref = sklearn_lasso(dec.dictionary_, dec.transform_input(X), lam, tol=1e-10, max_iter=200_000)
    assert rel_gap(dec, X, W, ref).max() <= 1e-6
    assert (W.getnnz(1) <= 48).all()  # a Lasso solution needs at most d concepts


def test_near_duplicate_concepts():
    E = random_dictionary(200, 48, seed=40)
    rng = np.random.default_rng(41)
    twins = E[:60] + 3e-4 * rng.standard_normal((60, 48)).astype(np.float32)  # cosine ~0.9999999
    Ed = np.vstack([E, twins])
    mean = image_mean(48, seed=42)
    X = clip_like_images(prepare_dictionary(Ed), 5, mean, seed=43)
    # with twins the optimum is flat along their difference and the float32 dictionary's round-off
    # (1e-7) is their whole difference: the two solvers agree to ~1e-6 either way (each is sometimes
    # the lower), so the bound is 1e-5; the certificate (KKT on the full dictionary) is the real test
    for lam, gap in ((1e-3, 1e-5), (0.05, 1e-5)):
        dec = SpliceDecomposer(Ed, mean, lam)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SpliceConvergenceWarning)
            W = dec.decompose(X)
        assert dec.kkt_violation(X, W).max() <= dec.kkt_threshold_ + 1e-7
        ref = sklearn_lasso(dec.dictionary_, dec.transform_input(X), lam, tol=1e-10, max_iter=200_000)
        assert rel_gap(dec, X, W, ref).max() <= gap


# ---------------------------------------------------------------------------- clear errors

@pytest.fixture(scope="module")
def problem():
    E = coherent_dictionary(300, 64, seed=44)
    mean = image_mean(64, seed=45)
    X = clip_like_images(prepare_dictionary(E), 5, mean, seed=46)
    return E, mean, X


def test_mean_from_one_row_is_refused(problem):
    E, mean, X = problem
    with pytest.raises(InputError, match="cannot estimate an image mean from 1 embedding"):
        decompose(X[:1], E)
    with pytest.raises(InputError, match="cannot estimate"):
        decompose(X[0], E)  # a 1-d row is one row, and still one row is too few
    with pytest.warns(SpliceMeanWarning, match=f"fewer than {MIN_MEAN_ROWS}"):
        decompose(X, E)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpliceMeanWarning)
        estimate_image_mean(np.repeat(X, MIN_MEAN_ROWS // len(X) + 1, axis=0))


def test_one_dimensional_row_with_a_mean(problem):
    E, mean, X = problem
    assert (decompose(X[0], E, mean) != decompose(X[:1], E, mean)).nnz == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"l1_penalty": True}, "l1_penalty"),
    ({"l1_penalty": 0.0}, "l1_penalty"),
    ({"l1_penalty": float("nan")}, "l1_penalty"),
    ({"min_add": 0, "grow": 1.0}, "min_add"),
    ({"grow": 0.5}, "grow"),
    ({"kkt_tol": -1.0}, "kkt_tol"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"working_set": True}, "working_set"),
])
def test_bad_parameters(problem, kwargs, match):
    E, mean, X = problem
    with pytest.raises(InputError, match=match):
        SpliceDecomposer(E, mean, **kwargs).decompose(X)


def test_growth_one_still_terminates(problem):
    E, mean, X = problem
    dec = SpliceDecomposer(E, mean, 0.1, min_add=1, grow=1.0, max_rounds=400)
    W = dec.decompose(X)
    assert dec.kkt_violation(X, W).max() <= dec.kkt_threshold_ + 1e-6


# ---------------------------------------------------------------------------- l1 for a target l0

@pytest.mark.parametrize("target", [5, 15])
def test_l1_for_target_l0(problem, target):
    E, mean, _ = problem
    X = clip_like_images(prepare_dictionary(E), 40, mean, seed=47)
    lam = l1_for_target_l0(X, E, target, mean)
    l0 = SpliceDecomposer(E, mean, lam).decompose(X).getnnz(1)
    assert abs(np.median(l0) - target) <= 1
    # monotone: a smaller penalty never gives a sparser median
    assert np.median(SpliceDecomposer(E, mean, lam / 2).decompose(X).getnnz(1)) >= np.median(l0)


def test_l1_for_target_l0_refuses_impossible_targets(problem):
    E, mean, X = problem
    with pytest.raises(InputError, match="exceeds the embedding dimension"):
        l1_for_target_l0(X, E, 65, mean)
    with pytest.raises(InputError, match="target"):
        l1_for_target_l0(X, E, 0, mean)
