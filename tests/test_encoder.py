"""The CLIP encoder: truncated text path equals open_clip's plain path, fingerprints, offline errors."""
import numpy as np
import pytest
import torch

from lance_concepts.models.encoder import ClipEncoder, load_encoder
from lance_concepts.errors import WeightsUnavailableError

CONCEPTS = ["dog", "traffic light", "ice cream", "red", "a", "über café", "o'neil", "sand dune",
            "x" * 60, "photo of a very long description of many things in a single concept string"]


@pytest.fixture(scope="module")
def vit_random():
    """The default architecture with random weights: the fast path must be exact for it too."""
    return ClipEncoder("ViT-B-32", pretrained=None, batch_size=8)


def test_truncated_text_matches_full_context_vit_b32(vit_random):
    fast = vit_random.encode_text(CONCEPTS)
    plain = vit_random.encode_text(CONCEPTS, truncate=False)
    assert fast.dtype == np.float32 and fast.shape == (len(CONCEPTS), 512)
    assert np.abs(fast - plain).max() < 1e-5


def test_truncated_text_matches_open_clip_directly(demo_encoder):
    """Compare with open_clip's own encode_text, not with our flag, so a shared bug cannot hide."""
    texts = ["red", "circle", "red circle on grass", "a photo of a blue star on sand"]
    with torch.inference_mode():
        ref = demo_encoder.model.encode_text(demo_encoder.tokenizer(texts)).numpy()
    assert np.abs(demo_encoder.encode_text(texts) - ref).max() < 1e-5


def test_text_order_is_preserved_across_length_sorted_batches(demo_encoder):
    texts = ["a photo of a red circle on grass", "red", "blue star", "green"] * 7
    together = demo_encoder.encode_text(texts)
    one_by_one = np.stack([demo_encoder.encode_text([t])[0] for t in texts])
    assert np.abs(together - one_by_one).max() < 1e-5


def test_empty_text_batch(demo_encoder):
    assert demo_encoder.encode_text([]).shape == (0, demo_encoder.embed_dim)


def test_image_encoding_shapes_and_batching(demo_encoder):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(5)]
    small_batches = ClipEncoder("demo", batch_size=2)
    a = demo_encoder.encode_images(images)
    b = small_batches.encode_images(images)
    assert a.shape == (5, demo_encoder.embed_dim) and a.dtype == np.float32
    assert np.allclose(a, b, atol=1e-5)
    tensor = demo_encoder.preprocess_images(images)
    assert np.allclose(demo_encoder.encode_images(tensor), a, atol=1e-5)


def test_fingerprint_is_stable_and_tracks_weights(demo_encoder, tmp_path):
    again = ClipEncoder("demo")
    assert again.fingerprint == demo_encoder.fingerprint
    # the same weights loaded from a local file give the same fingerprint
    from lance_concepts.models.demo_model import DEMO_MODEL_NAME

    path = tmp_path / "weights.pt"
    torch.save(demo_encoder.model.state_dict(), path)
    from_file = ClipEncoder(DEMO_MODEL_NAME, pretrained=str(path))
    assert from_file.fingerprint == demo_encoder.fingerprint
    # perturbed weights give a different fingerprint
    state = demo_encoder.model.state_dict()
    state = {k: (v + 1e-3 if k.endswith("ln_final.weight") else v) for k, v in state.items()}
    torch.save(state, path)
    assert ClipEncoder(DEMO_MODEL_NAME, pretrained=str(path)).fingerprint != demo_encoder.fingerprint


def test_offline_default_model_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        ClipEncoder(cache_dir=str(tmp_path))  # ViT-B-32 / laion2b_s34b_b79k, not in this empty cache
    msg = str(info.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in msg


def test_missing_weights_file_and_unknown_tag_are_clear_errors():
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        ClipEncoder("ViT-B-32", pretrained="/no/such/open_clip_pytorch_model.bin")
    with pytest.raises(WeightsUnavailableError, match="laion2b_s34b_b79k"):
        ClipEncoder("ViT-B-32", pretrained="not-a-tag")


def test_load_encoder_is_memoised():
    assert load_encoder("demo") is load_encoder("demo")
