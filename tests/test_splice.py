"""SpLiCE decomposition: ground truth from scikit-learn's tightly converged Lasso and planted problems."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from lance_concepts.errors import InputError
from lance_concepts.concepts.splice import SpliceConvergenceWarning, SpliceDecomposer, center_embeddings, decompose, estimate_image_mean, kkt_violation, lasso_objective, prepare_dictionary

from .splice_problems import clip_like_images, coherent_dictionary, image_mean, planted_images, random_dictionary

LAMS = (0.1, 0.25, 0.4)
# every returned solution must satisfy KKT to the solver's tolerance, measured here in float64; the
# solver measures in float32, which adds a few 1e-6 at most
KKT_SLACK = 1e-5


def threshold(dec):
    return dec.kkt_threshold_ + KKT_SLACK


def sklearn_lasso(D, V, lam, tol=1e-8, max_iter=100_000):
    """The reference: Lasso(alpha=lam/(2d), positive=True, fit_intercept=False), one image at a time."""
    from sklearn.linear_model import Lasso

    d = D.shape[1]
    X = np.asarray(D, np.float64).T
    out = np.zeros((len(V), D.shape[0]))
    for i, v in enumerate(np.asarray(V, np.float64)):
        model = Lasso(alpha=lam / (2 * d), positive=True, fit_intercept=False, tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, v)
        out[i] = model.coef_
    return out


def jaccard(A, B):
    A, B = np.asarray(A) > 0, np.asarray(B) > 0
    union = (A | B).sum(1)
    return np.where(union == 0, 1.0, (A & B).sum(1) / np.maximum(union, 1))


def compare_with_sklearn(dictionary, X, mean, lam, **kw):
    dec = SpliceDecomposer(dictionary, mean, lam, **kw)
    W = dec.decompose(X)
    V = dec.transform_input(X)
    ref = sklearn_lasso(dec.dictionary_, V, lam)
    ours_obj = lasso_objective(dec.dictionary_, V, W, lam)
    ref_obj = lasso_objective(dec.dictionary_, V, ref, lam)
    rel = (ours_obj - ref_obj) / ref_obj
    kkt = kkt_violation(dec.dictionary_, V, W, lam)
    return dec, W, ref, rel, jaccard(W.toarray(), ref), kkt


def check_against_sklearn(dictionary, X, mean, lam):
    dec, W, ref, rel, jac, kkt = compare_with_sklearn(dictionary, X, mean, lam)
    assert rel.mean() <= 1e-4, rel  # ours may be lower
    assert jac.mean() >= 0.95, jac
    assert kkt.max() <= threshold(dec), kkt
    assert (W.data > 0).all()
    return dec, W, ref


# ---------------------------------------------------------------------------- agreement with sklearn

@pytest.mark.parametrize("lam", LAMS)
def test_random_dictionary_matches_sklearn(lam):
    E = random_dictionary(400, 64, seed=3)
    mean = image_mean(64)
    D = prepare_dictionary(E)
    X = clip_like_images(D, 6, mean, k=6, seed=4)
    check_against_sklearn(E, X, mean, lam)


@pytest.mark.parametrize("lam", LAMS)
def test_coherent_dictionary_matches_sklearn(lam):
    E = coherent_dictionary(1500, 256, seed=5)
    mean = image_mean(256, seed=6)
    D = prepare_dictionary(E)
    X = clip_like_images(D, 5, mean, seed=7)
    # the coherent rows make the working set grow over several rounds: the interesting case
    dec, W, ref = check_against_sklearn(E, X, mean, lam)
    assert dec.last_stats_["rounds"].max() >= 3


@pytest.fixture(scope="module")
def demo_problem():
    """Real text embeddings of the demo vocabulary and image embeddings of rendered demo scenes."""
    # no skip: the demo model and its vocabulary ship with the package, so any failure is a bug
    from lance_concepts.demo.world import render
    from lance_concepts.models.encoder import load_encoder
    from lance_concepts.concepts.vocabulary import load_vocabulary

    enc = load_encoder("demo")
    text = load_vocabulary("demo").embed(enc)
    from lance_concepts.demo.world import BACKGROUNDS, COLOURS, SHAPES

    rng = np.random.default_rng(0)
    images = [render(SHAPES[i % len(SHAPES)], COLOURS[(3 * i) % len(COLOURS)], BACKGROUNDS[(5 * i) % len(BACKGROUNDS)],
                     rng=rng) for i in range(8)]
    X = enc.encode_images(images)
    return text, X


@pytest.mark.parametrize("lam", LAMS)
def test_demo_model_matches_sklearn(lam, demo_problem):
    text, X = demo_problem
    mean = estimate_image_mean(X)
    check_against_sklearn(text, X, mean, lam)


# ---------------------------------------------------------------------------- planted structure

def test_recovers_planted_sparse_combinations():
    E = random_dictionary(500, 256, seed=8)
    D = prepare_dictionary(E)
    mean = image_mean(256, seed=9)
    rng = np.random.default_rng(10)
    n, k = 8, 5
    Wtrue = np.zeros((n, 500))
    for i in range(n):
        Wtrue[i, rng.choice(500, k, replace=False)] = rng.uniform(0.5, 1.5, k)
    X = planted_images(D, Wtrue, mean)
    dec = SpliceDecomposer(E, mean, 0.02)
    W = dec.decompose(X).toarray()
    assert ((W > 0) == (Wtrue > 0)).all()
    # the Lasso shrinks, but the proportions survive (incoherent dictionary, small penalty)
    cos = (W * Wtrue).sum(1) / np.linalg.norm(W, axis=1) / np.linalg.norm(Wtrue, axis=1)
    assert cos.min() > 0.999
    assert dec.cosine(X, W).min() > 0.99


def test_embedding_equal_to_a_dictionary_row():
    E = coherent_dictionary(300, 64, seed=11)
    D = prepare_dictionary(E)
    mean = image_mean(64, seed=12)
    j = 17
    w = np.zeros((1, 300))
    w[0, j] = 1.0
    X = planted_images(D, w, mean)  # centred embedding == D[j]
    lam = 0.25
    dec = SpliceDecomposer(E, mean, lam)
    W = dec.decompose(X)
    # min (w - 1)^2 + lam w  ->  w = 1 - lam/2 on concept j, nothing else (rows are not duplicated)
    assert W.nnz == 1 and W.indices[0] == j
    assert W.data[0] == pytest.approx(1 - lam / 2, abs=1e-5)
    # a raw image embedding equal to a raw concept embedding: different centring, still optimal
    W2 = dec.decompose(E[j])
    assert dec.kkt_violation(E[j], W2).max() <= threshold(dec)


# ---------------------------------------------------------------------------- optimality helper

def test_kkt_violation_helper():
    E = coherent_dictionary(400, 64, seed=13)
    mean = image_mean(64, seed=14)
    lam = 0.25
    dec = SpliceDecomposer(E, mean, lam, kkt_tol=1e-6)
    D = dec.fit().dictionary_
    X = clip_like_images(D, 4, mean, seed=15)
    W = dec.decompose(X)
    V = dec.transform_input(X)
    kkt = kkt_violation(D, V, W, lam)
    assert kkt.max() <= 1e-6 + KKT_SLACK
    assert np.allclose(dec.kkt_violation(X, W), kkt)
    # a brute-force reading of the definition on one image
    w = W[0].toarray()[0]
    g = lam - 2 * D.astype(np.float64) @ (V[0].astype(np.float64) - w @ D.astype(np.float64))
    brute = max(np.abs(g[w > 0]).max(initial=0), np.maximum(-g[w == 0], 0).max(initial=0))
    assert kkt[0] == pytest.approx(brute, abs=1e-12)
    # non-optimal points are flagged: shrunk weights, a dropped support concept, the zero vector
    assert (kkt_violation(D, V, W * 0.5, lam) > 1e-3).all()
    dropped = W.toarray()
    dropped[np.arange(4), np.argmax(dropped, 1)] = 0
    assert (kkt_violation(D, V, dropped, lam) > 1e-3).all()
    assert (kkt_violation(D, V, np.zeros((4, 400)), lam) > 1e-3).all()
    negative = W.toarray()
    negative[0, 0] = -0.5
    assert kkt_violation(D, V, negative, lam)[0] >= 0.5
    # against scikit-learn: its objective is ours / (2 d), its tight solution has no violation by
    # our measure and its early-stopped one has a large one
    from sklearn.linear_model import Lasso

    d = D.shape[1]
    for tol, max_iter, optimal in ((1e-12, 100_000, True), (1e-1, 3, False)):
        m = Lasso(alpha=lam / (2 * d), positive=True, fit_intercept=False, tol=tol, max_iter=max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(D.T.astype(np.float64), V[0].astype(np.float64))
        r = V[0].astype(np.float64) - D.T.astype(np.float64) @ m.coef_
        sk_obj = 0.5 / d * (r @ r) + m.alpha * np.abs(m.coef_).sum()
        assert lasso_objective(D, V[:1], m.coef_[None], lam)[0] / (2 * d) == pytest.approx(sk_obj, rel=1e-12)
        viol = kkt_violation(D, V[:1], m.coef_[None], lam)[0]
        assert viol < 1e-6 if optimal else viol > 1e-2


def test_kkt_tolerance_is_the_stopping_rule():
    E = coherent_dictionary(1500, 128, seed=16)
    mean = image_mean(128, seed=17)
    X = clip_like_images(prepare_dictionary(E), 6, mean, seed=18)
    loose = SpliceDecomposer(E, mean, 0.25, kkt_tol=5e-2)
    tight = SpliceDecomposer(E, mean, 0.25, kkt_tol=1e-6)
    Wl, Wt = loose.decompose(X), tight.decompose(X)
    assert loose.kkt_threshold_ == pytest.approx(5e-2 * 0.25)  # relative to l1
    assert loose.last_stats_["kkt"].max() <= loose.kkt_threshold_
    assert tight.kkt_violation(X, Wt).max() <= threshold(tight)
    assert loose.last_stats_["rounds"].sum() <= tight.last_stats_["rounds"].sum()
    assert (tight.objective(X, Wt) <= loose.objective(X, Wl) + 1e-12).all()


def test_round_limit_warns_and_stays_feasible():
    E = coherent_dictionary(1500, 128, seed=19)
    mean = image_mean(128, seed=20)
    X = clip_like_images(prepare_dictionary(E), 4, mean, seed=21)
    dec = SpliceDecomposer(E, mean, 0.1, max_rounds=1, working_set=4)
    with pytest.warns(SpliceConvergenceWarning):
        W = dec.decompose(X)
    assert dec.last_stats_["unconverged"] > 0
    assert (W.data > 0).all()
    assert (dec.objective(X, W) < dec.objective(X, np.zeros((4, 1500)))).all()


# ---------------------------------------------------------------------------- edge cases

@pytest.fixture(scope="module")
def small():
    E = coherent_dictionary(300, 64, seed=22)
    mean = image_mean(64, seed=23)
    X = clip_like_images(prepare_dictionary(E), 5, mean, seed=24)
    return E, mean, X


def test_zero_length_batch(small):
    E, mean, X = small
    dec = SpliceDecomposer(E, mean)
    W = dec.decompose(np.zeros((0, 64), np.float32))
    assert sp.isspmatrix_csr(W) and W.shape == (0, 300) and W.dtype == np.float32
    assert dec.recompose(W).shape == (0, 64)
    assert dec.cosine(np.zeros((0, 64)), W).shape == (0,)
    # an image mean to be estimated is not needed for nothing, and is not estimated from nothing
    lazy = SpliceDecomposer(E)
    assert lazy.decompose(np.zeros((0, 64))).shape == (0, 300)
    assert lazy.image_mean_ is None
    assert decompose(np.zeros((0, 64)), E).shape == (0, 300)


def test_one_image(small):
    E, mean, X = small
    dec = SpliceDecomposer(E, mean)
    W1 = dec.decompose(X[2])  # a 1-d vector is one image
    W2 = dec.decompose(X[2:3])
    Wall = dec.decompose(X)
    assert W1.shape == (1, 300)
    assert (W1 != W2).nnz == 0
    assert np.abs(W1.toarray() - Wall[2].toarray()).max() < 1e-5


def test_all_zero_solution(small):
    E, mean, X = small
    dec = SpliceDecomposer(E, mean, l1_penalty=5.0)  # lam/2 above every |d_j . v| <= 1
    W = dec.decompose(X)
    assert W.nnz == 0 and W.shape == (5, 300)
    assert (dec.last_stats_["rounds"] == 1).all()
    Zh = dec.recompose(W)
    assert np.allclose(Zh, mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(dec.kkt_violation(X, W), 0)


def test_duplicate_dictionary_rows(small):
    E, mean, X = small
    dup = np.vstack([E, E[[3, 10, 3]]])  # rows 300, 302 repeat 3; 301 repeats 10
    a = SpliceDecomposer(E, mean, 0.25)
    b = SpliceDecomposer(dup, mean, 0.25)
    Wa, Wb = a.decompose(X), b.decompose(X)
    assert b.n_duplicates_ == 3
    assert Wb[:, 300:].nnz == 0  # the first occurrence carries the weight
    # the concept mean changes with the duplicates, so compare each with sklearn on its own dictionary
    Vb = b.transform_input(X)
    ref = sklearn_lasso(b.dictionary_, Vb, 0.25)
    rel = (b.objective(X, Wb) - lasso_objective(b.dictionary_, Vb, ref, 0.25)) / lasso_objective(b.dictionary_, Vb, ref, 0.25)
    assert rel.mean() <= 1e-4
    assert b.kkt_violation(X, Wb).max() <= threshold(b)
    assert Wa.shape == (5, 300)


def test_degenerate_dictionaries(small):
    E, mean, X = small
    for dictionary in (E[:1], np.repeat(E[:1], 4, axis=0)):  # centred, every row is zero
        dec = SpliceDecomposer(dictionary, mean)
        W = dec.decompose(X)
        assert W.shape == (5, len(dictionary)) and W.nnz == 0
        assert np.allclose(dec.kkt_violation(X, W), 0)
    two = SpliceDecomposer(E[:2], mean).decompose(X)  # two concepts: +-u after centring
    assert two.shape == (5, 2) and (two.getnnz(1) <= 1).all()


@pytest.mark.parametrize("where", ["embeddings-nan", "embeddings-inf", "dictionary", "mean"])
def test_non_finite_input_is_rejected(small, where):
    E, mean, X = small
    E, mean, X = E.copy(), mean.copy(), X.copy()
    if where == "embeddings-nan":
        X[1, 5] = np.nan
    elif where == "embeddings-inf":
        X[0, 0] = np.inf
    elif where == "dictionary":
        E[7, 3] = np.nan
    else:
        mean[2] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        SpliceDecomposer(E, mean).decompose(X)


def test_malformed_input_is_rejected(small):
    E, mean, X = small
    dec = SpliceDecomposer(E, mean)
    with pytest.raises(InputError, match="dimension"):
        dec.decompose(X[:, :10])
    with pytest.raises(InputError, match="zero norm"):
        dec.decompose(np.zeros((1, 64)))
    with pytest.raises(InputError, match="dimension"):
        SpliceDecomposer(E, mean[:10]).decompose(X)
    with pytest.raises(InputError, match="positive"):
        SpliceDecomposer(E, mean, l1_penalty=-1).decompose(X)
    with pytest.raises(InputError):
        SpliceDecomposer(E[:0], mean).decompose(X)
    with pytest.raises(InputError, match="not found"):
        SpliceDecomposer(E, "/nonexistent/mean.npy").decompose(X)
    with pytest.raises(InputError, match="columns"):
        dec.recompose(np.zeros((2, 5)))


# ---------------------------------------------------------------------------- API semantics

def test_image_mean_options(small, tmp_path):
    E, mean, X = small
    path = tmp_path / "mean.npy"
    np.save(path, mean)
    Wv = SpliceDecomposer(E, mean).decompose(X)
    Wp = SpliceDecomposer(E, str(path)).decompose(X)
    assert (Wv != Wp).nnz == 0
    # estimated: mean of the normalised embeddings; from fit(), else from the first decompose()
    est = SpliceDecomposer(E).fit(X)
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert np.allclose(est.image_mean_, Z.mean(0), atol=1e-6)
    lazy = SpliceDecomposer(E, "estimate")
    lazy.decompose(X)
    assert np.allclose(lazy.image_mean_, est.image_mean_)
    lazy.decompose(X[:2])  # kept, not re-estimated
    assert np.allclose(lazy.image_mean_, est.image_mean_)
    Wm = decompose(X, E, None, 0.25)
    assert (Wm != est.decompose(X)).nnz == 0


def test_torch_inputs_and_dtypes(small):
    torch = pytest.importorskip("torch")
    E, mean, X = small
    ref = SpliceDecomposer(E, mean).decompose(X)
    got = SpliceDecomposer(torch.from_numpy(E), torch.from_numpy(mean)).decompose(torch.from_numpy(X))
    assert (ref != got).nnz == 0
    got64 = SpliceDecomposer(E.astype(np.float64), mean).decompose(X.astype(np.float64))
    assert np.abs((ref - got64).toarray()).max() < 1e-5
    assert got.dtype == np.float32


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(small):  # pragma: no cover - only where a GPU is present
    import torch

    E, mean, X = small
    cpu = SpliceDecomposer(E, mean, device="cpu")
    gpu = SpliceDecomposer(E, mean, device="cuda")
    Wc, Wg = cpu.decompose(X), gpu.decompose(torch.from_numpy(X).cuda())
    assert (jaccard(Wc.toarray(), Wg.toarray()) == 1).all()
    assert np.abs((Wc - Wg).toarray()).max() < 1e-4
    assert gpu.kkt_violation(X, Wg).max() <= threshold(gpu)


def test_torch_code_path_matches(small):
    """The gathers and sparse products the CUDA path uses (torch), exercised on the CPU."""
    E, mean, X = small
    ref = SpliceDecomposer(E, mean).decompose(X)
    dec = SpliceDecomposer(E, mean, device="cpu")
    dec._torch_only = True
    got = dec.decompose(X)
    assert (jaccard(ref.toarray(), got.toarray()) == 1).all()
    assert np.abs((ref - got).toarray()).max() < 1e-5


def test_deterministic_and_batch_independent(small):
    E, mean, X = small
    a = SpliceDecomposer(E, mean).decompose(X)
    b = SpliceDecomposer(E, mean).decompose(X)
    assert (a != b).nnz == 0 and np.array_equal(a.data, b.data)
    c = SpliceDecomposer(E, mean, batch_size=2).decompose(X)
    assert (jaccard(a.toarray(), c.toarray()) == 1).all()
    assert np.abs((a - c).toarray()).max() < 1e-5


def test_recompose_cosine_intervene(small):
    E, mean, X = small
    names = [f"concept{i}" for i in range(300)]
    dec = SpliceDecomposer(E, mean, 0.25, concepts=names)
    W = dec.decompose(X)
    D = dec.dictionary_.astype(np.float64)
    s = W.toarray() @ D
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    zh = s + mean
    zh /= np.linalg.norm(zh, axis=1, keepdims=True)
    assert np.allclose(dec.recompose(W), zh, atol=1e-6)
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = dec.cosine(X, W)
    assert np.allclose(cos, (zh * Z).sum(1), atol=1e-6)
    assert cos.dtype == np.float32 and (cos > 0).all()
    # intervene: remove the top concept of image 0, by index and by name
    top = int(W[0].indices[np.argmax(W[0].data)])
    Wi = dec.intervene(W, [top])
    assert Wi[:, top].nnz == 0
    assert (Wi != dec.intervene(W, names[top])).nnz == 0
    kept = W.toarray()
    kept[:, top] = 0
    assert np.allclose(Wi.toarray(), kept)
    assert np.allclose(dec.recompose(Wi), dec.recompose(kept), atol=1e-6)
    assert W[0, top] > 0  # the input is untouched
    with pytest.raises(InputError, match="unknown concept"):
        dec.intervene(W, ["no such concept"])
    with pytest.raises(InputError, match="out of range"):
        dec.intervene(W, [300])


def test_centring_is_the_authors(small):
    E, mean, X = small
    D = prepare_dictionary(E)
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    Dc = En - En.mean(0)
    assert np.allclose(D, Dc / np.linalg.norm(Dc, axis=1, keepdims=True), atol=1e-6)
    V = center_embeddings(X, mean)
    Z = X / np.linalg.norm(X, axis=1, keepdims=True) - mean
    assert np.allclose(V, Z / np.linalg.norm(Z, axis=1, keepdims=True), atol=1e-6)
    # sklearn's alpha = lam / (2d) is the same problem: its objective is ours / (2d)
    dec = SpliceDecomposer(E, mean, 0.25)
    W = dec.decompose(X[:1])
    from sklearn.linear_model import Lasso

    m = Lasso(alpha=0.25 / (2 * 64), positive=True, fit_intercept=False, tol=1e-10, max_iter=100_000)
    m.fit(D.T.astype(np.float64), V[0].astype(np.float64))
    assert np.allclose(W.toarray()[0], m.coef_, atol=1e-4)
