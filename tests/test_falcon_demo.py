"""FALCON end to end on the demo world with the demo CLIP model (skipped without its weights).

* a planted representation over rendered images: feature 0 fires on red images, feature 1 on stars,
  feature 2 on red-and-sand, plus noise; 'grass' is on 80% of the red images and on half of the
  others, so the contrastive step must remove it from feature 0's labels;
* a small CNN trained for a few seconds on colour and shape classification, explained with GradCAM
  crops through the LanceDB layer (the images are ingested with the demo model);
* transfer of labels to a linear transform (plus noise) of the CNN's features.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from lance_concepts import demo_world as dw
from lance_concepts.falcon import FalconExplainer, FalconTransfer, encoder_temperature

torch = pytest.importorskip("torch")
nn = torch.nn


def _demo_available() -> bool:
    try:
        from lance_concepts.demo_model import demo_weights_path

        return demo_weights_path().is_file()
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _demo_available(), reason="the demo model's weights are not built yet")


def _synonyms(word):
    from lance_concepts import demo_model

    return {word, *getattr(demo_model, "SYNONYMS", {}).get(word, ())}


@pytest.fixture(scope="module")
def demo():
    from lance_concepts.encoder import load_encoder
    from lance_concepts.vocabulary import load_vocabulary

    enc = load_encoder("demo")
    vocab = load_vocabulary("demo")
    return enc, vocab, vocab.embed(enc)


def test_planted_representation_on_demo_images(demo):
    enc, vocab, C = demo
    rng = np.random.default_rng(0)
    n = 500
    colour = rng.choice(dw.COLOURS, size=n, p=[0.3] + [0.1] * 7)
    shape = rng.choice(dw.SHAPES, size=n)
    red = colour == "red"
    others = [b for b in dw.BACKGROUNDS if b != "grass"]
    bg = rng.choice(others, size=n)
    reds, rest = np.flatnonzero(red), rng.permutation(np.flatnonzero(~red))
    reds = rng.permutation(reds)
    k = int(round(0.8 * len(reds)))
    bg[reds[:k]] = "grass"                                   # exactly 80% of the red images on grass
    bg[reds[k:]] = np.where(rng.random(len(reds) - k) < 0.7, "sand", bg[reds[k:]])
    bg[rest[:len(rest) // 2]] = "grass"                      # and half of the others
    ims = [dw.render(s, c, b, size=64, rng=rng) for s, c, b in zip(shape, colour, bg)]
    emb = enc.encode_images(ims)
    star, sand, grass = shape == "star", bg == "sand", bg == "grass"
    acts = np.concatenate([
        np.stack([4 * red, 4 * star, 4 * (red & sand)], 1) + np.abs(rng.normal(scale=0.1, size=(n, 3))),
        1 + rng.normal(scale=0.1, size=(n, 5)) + 0.5 * grass[:, None],
        np.abs(rng.normal(scale=0.3, size=(n, 120))),
    ], axis=1).astype(np.float32)
    fx = FalconExplainer(temperature=encoder_temperature(enc)).fit(acts, emb, C, vocab.concepts)
    g0, g1 = fx.group_of(0), fx.group_of(1)
    assert g0.concepts[0][0] in _synonyms("red")
    high0 = fx.high_[:, 0].nonzero()[0]
    assert 0.75 < np.mean(bg[high0] == "grass") < 0.85
    assert np.mean(bg[g0.low] == "grass") >= 0.5
    assert "grass" in {t for t, _, _ in g0.spurious}
    assert not (_synonyms("grass") & {t for t, _ in g0.concepts[:3]})
    g02 = fx.group_of((0, 2))
    assert g02 is not None and {t for t, _ in g02.concepts[:3]} & _synonyms("sand")
    assert {t for t, _ in g02.concepts[:3]} & _synonyms("red")
    # FALCON can only name what the CLIP model sees: check that the demo model tells stars apart
    Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
    shape_words = [vocab.index(s) for s in dw.SHAPES]
    seen = np.array(dw.SHAPES)[np.argmax(emb[star] @ Cn[shape_words].T, axis=1)]
    if np.mean(seen == "star") < 0.5:
        pytest.xfail(f"the demo CLIP model recognises only {np.mean(seen == 'star'):.0%} of the star images "
                     "zero-shot (provisional weights); FALCON cannot name feature 1 'star' with it")
    assert g1.concepts[0][0] in _synonyms("star")


# ------------------------------------------------------------------------------------------ small CNN
def _to_tensor(im):
    im = im.convert("RGB").resize((32, 32))
    return torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)


def _train_cnn(scenes, images, seconds=5.0, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 256, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 16))
    X = torch.stack([_to_tensor(i) for i in images])
    yc = torch.tensor([dw.COLOURS.index(c) for s, c, b in scenes])
    ys = torch.tensor([dw.SHAPES.index(s) for s, c, b in scenes])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(len(X), (64,), generator=g)
        out = net(X[idx])
        loss = nn.functional.cross_entropy(out[:, :8], yc[idx]) + nn.functional.cross_entropy(out[:, 8:], ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = net(X)
    return net, float((out[:, :8].argmax(1) == yc).float().mean())


@pytest.fixture(scope="module")
def cnn_db(tmp_path_factory, demo):
    from lance_concepts.ingest import ingest

    root = tmp_path_factory.mktemp("falcon-demo")
    manifest = dw.generate_dataset(root / "data", n=600, seed=5)
    db = str(root / "demo.lancedb")
    ingest(str(manifest), db, model="demo", vocab="demo", quiet=True, workers=1, worker_type="thread")
    rows = dw.read_manifest(manifest)
    scenes = [(r["shape"], r["colour"], r["background"]) for r in rows]
    from PIL import Image

    images = [Image.open(root / "data" / r["uri"]).convert("RGB") for r in rows]
    net, colour_acc = _train_cnn(scenes, images)
    return db, net, colour_acc, {r["id"]: r for r in rows}


def test_small_cnn_with_gradcam_crops_end_to_end(cnn_db):
    from lance_concepts.falcon import falcon

    db, net, colour_acc, truth = cnn_db
    assert colour_acc > 0.5                         # it learnt colours in a few seconds
    # the small dense 256-d layer never reaches the faithful mean + 5 std: 3 std, a documented parameter
    res = falcon(db, "cnn", model=net, transform=_to_tensor, high_std=3.0)
    assert any("computed the model's pre-classifier features" in n for n in res.notes)
    assert any("GradCAM" in n for n in res.notes)
    assert res.records and all(r["used_crops"] for r in res.records)
    words = set().union(*(_synonyms(w) for w in dw.COLOURS + dw.SHAPES))
    interp = [r for r in res.records if r["interpretable"]]
    assert interp, [r["coherence"] for r in res.records]
    hits = [bool(set((r["concepts"] + r["bigrams"])[:3]) & words) for r in interp]
    assert np.mean(hits) >= 0.5
    # the groups' labels agree with what their images show
    for r in interp:
        colours = [truth[i]["colour"] for i in r["high_ids"]]
        top = max(set(colours), key=colours.count)
        if colours.count(top) / len(colours) > 0.9 and r["concepts"][0] in set().union(
                *(_synonyms(c) for c in dw.COLOURS)):
            assert r["concepts"][0] in _synonyms(top)


def test_transfer_to_a_linear_transform_of_the_cnn_features(cnn_db, demo):
    from lance_concepts.falcon import falcon

    db, net, _, _ = cnn_db
    enc, vocab, C = demo
    import lancedb

    tbl = lancedb.connect(db).open_table("images").to_arrow()
    if "cnn" not in tbl.schema.names:
        falcon(db, "cnn", model=net, transform=_to_tensor, high_std=3.0, write=False)
        tbl = lancedb.connect(db).open_table("images").to_arrow()
    ok = np.asarray([s == "ok" for s in tbl.column("status").to_pylist()])
    A = np.stack(tbl.column("cnn").to_numpy(zero_copy_only=False)[ok]).astype(np.float32)
    emb = np.stack(tbl.column("embedding").to_numpy(zero_copy_only=False)[ok]).astype(np.float32)
    rng = np.random.default_rng(3)
    m = A.shape[1]
    M = np.eye(m)[:, rng.permutation(m)] * rng.uniform(0.8, 1.25, size=m) + rng.normal(scale=0.02 / np.sqrt(m),
                                                                                       size=(m, m))
    B = (A @ M + rng.normal(scale=0.01 * A.std(), size=A.shape)).astype(np.float32)
    fa = FalconExplainer(high_std=3.0).fit(A, emb, C, vocab.concepts)
    fb = FalconExplainer(high_std=3.0).fit(B, emb, C, vocab.concepts)
    tr = FalconTransfer().fit(A, B, fa)
    assert tr.r2_ > 0.9
    direct = {g.features[0]: g.concepts[0][0] for g in fb.groups_ if len(g.features) == 1 and g.concepts}
    assert len(direct) >= 3
    carried = {lab["feature"]: (lab["concepts"] or [None])[0] for lab in tr.labels_}
    assert np.mean([carried.get(j) == t for j, t in direct.items()]) >= 0.9
