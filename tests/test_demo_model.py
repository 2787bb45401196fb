"""The packaged demo CLIP: loads through open_clip, and knows the demo world's words.

Quality is measured on freshly rendered images (a seed never used in training) with the
committed weights; nothing is trained here except a two-step smoke run.
"""
from __future__ import annotations

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from lance_concepts.models.demo_model import DEMO_MODEL_CONFIG, DEMO_MODEL_NAME, demo_image_mean, demo_vocabulary, demo_weights_path, register_demo_model
from tools.train_demo_model import roc_auc, to_tensor, evaluate_crops, random_crop, sample_caption, splice_recovery, train, train_recipe
from lance_concepts.demo import world as w
from lance_concepts.models.encoder import encode_tokens_truncated

N_EVAL = 320
EVAL_SEED = 987654


def _auc(scores, positive):
    return roc_auc(np.asarray(scores), np.asarray(positive))


@pytest.fixture(scope="module")
def loaded():
    path = demo_weights_path()
    if not path.is_file():
        pytest.fail(f"demo weights missing at {path}")
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL_NAME, pretrained=str(path))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(DEMO_MODEL_NAME)


@pytest.fixture(scope="module")
def held_out(loaded):
    model, preprocess, _ = loaded
    rng = np.random.default_rng(EVAL_SEED)
    scenes = [w.random_scene(rng) for _ in range(N_EVAL)]
    images = [w.render(s, c, b, rng=rng) for s, c, b in scenes]
    with torch.no_grad():
        x = torch.stack([preprocess(im) for im in images])
        emb = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    truth = {"shape": np.array([s for s, _, _ in scenes]), "colour": np.array([c for _, c, _ in scenes]),
             "background": np.array([b for _, _, b in scenes])}
    return emb, truth


def _text(loaded, texts):
    model, _, tokenizer = loaded
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()


def test_config_is_registered_and_small():
    register_demo_model()
    assert DEMO_MODEL_NAME in open_clip.list_models()
    cfg = open_clip.get_model_config(DEMO_MODEL_NAME)
    assert cfg == DEMO_MODEL_CONFIG
    assert demo_weights_path().stat().st_size < 8 * 1024 * 1024


def test_loads_with_the_plain_open_clip_call(loaded):
    model, preprocess, tokenizer = loaded
    assert type(model).__name__ == "CLIP"
    sd = torch.load(demo_weights_path(), weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    for k, v in model.state_dict().items():  # every weight came from the file (no random init left)
        assert torch.equal(v, sd[k].to(v.dtype)), k
    img = w.render("star", "red", "grass", size=96, rng=0)
    x = preprocess(img)
    assert tuple(x.shape) == (3, 64, 64)
    # preprocessing = open_clip's default: resize to 64 and OpenAI mean/std, as in training
    small = w.render("star", "red", "grass", rng=0)
    ref = to_tensor([small], open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)[0]
    assert torch.allclose(preprocess(small), ref, atol=1e-6)
    assert tokenizer(["red"]).shape == (1, DEMO_MODEL_CONFIG["text_cfg"]["context_length"])


def test_truncated_text_encoding_is_exact(loaded):
    model, _, tokenizer = loaded
    tok = tokenizer(["red", "a photo of a red circle on grass", "plus sign", "a b c d e f g h i j k l m n"])
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tok), encode_tokens_truncated(model, tok), atol=1e-5)


def test_demo_vocabulary():
    vocab = demo_vocabulary()
    assert 150 <= len(vocab) <= 300
    assert len(set(vocab)) == len(vocab)
    assert set(w.COLOURS + w.SHAPES + w.BACKGROUNDS) <= set(vocab)
    assert any(" " in v for v in vocab)  # a few bigrams
    assert all(v == v.strip() and v for v in vocab)


@pytest.mark.parametrize("attr,words", [("colour", w.COLOURS), ("shape", w.SHAPES)])
def test_zero_shot_accuracy(loaded, held_out, attr, words):
    emb, truth = held_out
    prompts = _text(loaded, [f"a photo of a {x} shape" for x in words])
    pred = np.array(words)[(emb @ prompts.T).argmax(1)]
    acc = (pred == truth[attr]).mean()
    assert acc >= 0.9, f"{attr} zero-shot accuracy {acc:.3f}"


def test_zero_shot_background_accuracy(loaded, held_out):
    emb, truth = held_out
    prompts = _text(loaded, [f"a photo of something {w.BACKGROUND_PHRASES[b]}" for b in w.BACKGROUNDS])
    acc = (np.array(w.BACKGROUNDS)[(emb @ prompts.T).argmax(1)] == truth["background"]).mean()
    assert acc >= 0.9, f"background zero-shot accuracy {acc:.3f}"


@pytest.mark.parametrize("attr,words", [("colour", w.COLOURS), ("shape", w.SHAPES), ("background", w.BACKGROUNDS)])
def test_raw_single_words_rank_their_images_first(loaded, held_out, attr, words):
    emb, truth = held_out
    sims = emb @ _text(loaded, words).T  # RAW words, no template, as SpLiCE encodes concepts
    aucs = {x: _auc(sims[:, k], truth[attr] == x) for k, x in enumerate(words)}
    bad = {x: round(a, 3) for x, a in aucs.items() if not a >= 0.9}
    assert not bad, f"raw-word AUC below 0.9: {bad}"


def test_raw_word_is_the_nearest_of_its_kind(loaded, held_out):
    # For each image, among the raw colour words the right one is usually the most similar.
    emb, truth = held_out
    for attr, words in (("colour", w.COLOURS), ("shape", w.SHAPES), ("background", w.BACKGROUNDS)):
        pred = np.array(words)[(emb @ _text(loaded, words).T).argmax(1)]
        assert (pred == truth[attr]).mean() >= 0.8, attr


def test_unrelated_words_stay_away_from_images(loaded, held_out):
    emb, _ = held_out
    world_words = _text(loaded, w.COLOURS + w.SHAPES + w.BACKGROUNDS)
    others = _text(loaded, ["dog", "car", "person", "pizza", "guitar", "umbrella", "volcano"])
    assert (emb @ others.T).mean() < (emb @ world_words.T).max(1).mean()


def test_splice_reference_recovers_the_scene_words(loaded, held_out):
    # SpLiCE as the authors run it (sklearn Lasso, raw un-templated concepts, demo vocabulary):
    # the true colour, shape and background words are among each image's top-5 concepts.
    pytest.importorskip("sklearn")
    emb, truth = held_out
    vocab = demo_vocabulary()
    text = _text(loaded, vocab)
    r = splice_recovery(emb, text, vocab, {k: list(v) for k, v in truth.items()}, l1_penalty=0.25, top_k=5)
    assert r["hit"]["colour"] >= 0.9 and r["hit"]["background"] >= 0.9, r
    assert r["hit"]["shape"] >= 0.75, r
    assert 3 <= r["l0"] <= 30 and r["cosine"] > 0.5, r


def test_packaged_image_mean_matches_fresh_images(held_out):
    emb, _ = held_out
    mean = demo_image_mean()
    assert mean.shape == (DEMO_MODEL_CONFIG["embed_dim"],) and mean.dtype == np.float32
    assert 0.2 < np.linalg.norm(mean) < 0.95  # a mean of unit vectors, not renormalised
    fresh = emb.mean(0)
    cos = fresh @ mean / (np.linalg.norm(fresh) * np.linalg.norm(mean))
    assert cos > 0.98 and abs(np.linalg.norm(fresh) - np.linalg.norm(mean)) < 0.05


def test_training_smoke_is_deterministic(tmp_path):
    kw = dict(seed=3, steps=2, batch_size=6, captions_per_image=2, n_negatives=4, warmup=1, verbose=False,
              composition_weight=1.0)
    a = train(tmp_path / "a.pt", **kw)
    b = train(tmp_path / "b.pt", **kw)
    fa = torch.load(tmp_path / "a.pt", weights_only=True)
    fb = torch.load(tmp_path / "b.pt", weights_only=True)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    model, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL_NAME, pretrained=str(tmp_path / "a.pt"))
    assert model is not None
    # the staged recipe continues from the previous stage in memory
    c = train_recipe(None, stages=[dict(steps=1, lr=1e-3, warmup=1), dict(steps=1, lr=1e-4, warmup=1)],
                        batch_size=6, verbose=False)
    assert c is not None


def test_sample_caption_truth_matches_text():
    rng = np.random.default_rng(0)
    for _ in range(300):
        s, c, b = w.random_scene(rng)
        text, truth = sample_caption(rng, s, c, b, p_syn=0.0)
        assert truth and set(truth) <= {"colour", "shape", "background"}
        for attr, value in truth.items():
            assert value in text
        assert truth == {k: v for k, v in {"colour": c, "shape": s, "background": b}.items() if k in truth}


def test_random_crop_captions_only_what_the_crop_shows():
    rng = np.random.default_rng(0)
    img, mask = w.render_with_mask("square", "blue", "grass", rng=2)
    ys, xs = np.nonzero(mask)
    # a crop well inside the shape shows its colour only; the whole image shows everything
    for _ in range(50):
        crop, vis = random_crop(rng, img, mask, area=(0.01, 0.02), p_on_shape=1.0)
        assert crop.size == img.size
        if vis == ("colour",):
            break
    else:
        pytest.fail("no colour-only crop inside a large square")
    _, vis = random_crop(rng, img, mask, area=(1.0, 1.0), ratio=(1.0, 1.0))
    assert vis == ("colour", "shape", "background")
    for _ in range(200):
        text, truth = sample_caption(rng, "square", "blue", "grass", p_syn=0.0, visible=("colour",))
        assert truth == {"colour": "blue"} and "blue" in text and "square" not in text and "grass" not in text


def test_crop_training_smoke_is_deterministic():
    kw = dict(seed=1, steps=2, batch_size=6, captions_per_image=2, n_negatives=4, warmup=1, verbose=False,
              composition_weight=1.0, crop_p=0.7)
    sa, sb = train(None, **kw).state_dict(), train(None, **kw).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_shape_centred_crops_keep_their_colour():
    # FALCON's GradCAM crops of a CNN's colour units are boxes on the shape: the packaged model
    # (stage 4 of the recipe trains on crops) must still name their colour
    r = evaluate_crops(n=240, seed=EVAL_SEED)
    assert r["accuracy"]["colour"] >= 0.95, r
    assert r["coherence"]["colour"] > r["coherence"]["none"] + 0.2, r


def test_encoder_loads_the_demo_model(held_out):
    from lance_concepts.models.encoder import load_encoder

    enc = load_encoder("demo")
    emb = enc.encode_images([w.render("circle", "red", "grass", rng=1)])
    assert emb.shape == (1, DEMO_MODEL_CONFIG["embed_dim"])
