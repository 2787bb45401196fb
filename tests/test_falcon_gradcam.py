"""GradCAM crops and torch-model features for FALCON, on hand-built models with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from lance_concepts.errors import InputError
from lance_concepts.concepts.gradcam import GradCAM, crop_to_box, find_last_conv_block, gradcam_crop_embedder, largest_box, load_target_model, model_features


def _colour_detector():
    """conv channel 0 responds to red pixels, channel 1 to blue; features = their spatial means."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 3))
    with torch.no_grad():
        conv = model[0]
        conv.weight.zero_()
        conv.bias.fill_(-0.3)
        conv.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])
        conv.weight[1, :, 1, 1] = torch.tensor([-1.0, -1.0, 1.0])
    return model.eval()


def _scene(red_box=(5, 30, 25, 55), blue_box=(40, 4, 60, 20), size=64):
    a = np.full((size, size, 3), 128, np.uint8)
    x0, y0, x1, y1 = red_box
    a[y0:y1, x0:x1] = (230, 20, 20)
    x0, y0, x1, y1 = blue_box
    a[y0:y1, x0:x1] = (20, 20, 230)
    return Image.fromarray(a)


def _to_tensor(im):
    return torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_gradcam_box_finds_the_region_that_drives_the_feature():
    model = _colour_detector()
    im = _scene()
    x = _to_tensor(im)[None]
    cam = GradCAM(model)
    assert cam.target is model[1]                  # the last convolution's block: after its ReLU
    maps = cam(x, [0])
    box = largest_box(maps[0], 0.6)
    got = [v * 64 for v in box]
    assert _iou(got, (5, 30, 25, 55)) > 0.7
    blue = [v * 64 for v in largest_box(cam(x, [1])[0], 0.6)]
    assert _iou(blue, (40, 4, 60, 20)) > 0.7
    # the target is the SUM of the group's features: both regions light up, the larger one is kept
    both = cam(x, [0, 1])[0]
    assert both[40, 15] > 0.6 and both[10, 50] > 0.6
    crop = crop_to_box(im, box, 32)
    assert crop.size == (32, 32) and np.asarray(crop)[16, 16, 0] > 200   # a red crop
    cam.remove()


def test_largest_box_keeps_the_largest_connected_region():
    m = np.zeros((20, 20))
    m[1:4, 1:4] = 1.0          # 9 pixels
    m[10:18, 5:15] = 0.9       # 80 pixels
    m[0, 19] = 0.7
    assert largest_box(m, 0.6) == (5 / 20, 10 / 20, 15 / 20, 18 / 20)
    assert largest_box(np.zeros((5, 5)), 0.6) is None
    im = Image.new("RGB", (40, 30))
    assert crop_to_box(im, None, 16).size == (16, 16)          # empty map: the whole image


def test_model_features_are_the_classifier_inputs():
    model = _colour_detector()
    ims = [_scene(), _scene(red_box=(0, 0, 64, 64))]
    feats = model_features(model, ims, _to_tensor)
    with torch.no_grad():
        want = model[:4](torch.stack([_to_tensor(i) for i in ims])).numpy()
    np.testing.assert_allclose(feats, want, rtol=1e-6)
    assert feats[1, 0] > feats[0, 0] > 0


def test_crop_embedder_encodes_the_crops():
    model = _colour_detector()
    ims = [_scene(red_box=(5 + k, 30, 25 + k, 55)) for k in range(3)]

    class MeanColourEncoder:   # "CLIP" = mean colour of the crop
        image_size = 16

        def encode_images(self, images):
            return np.stack([np.asarray(i, np.float32).reshape(-1, 3).mean(0) for i in images])

    embed = gradcam_crop_embedder(model, lambda rows: [ims[int(r)] for r in rows], MeanColourEncoder(),
                                  _to_tensor)
    out = embed((0,), np.arange(3))
    assert out.shape == (3, 3)
    assert np.all(out[:, 0] > 180) and np.all(out[:, 2] < 60)      # crops of the red patch, not the image
    embed.gradcam.remove()


def test_load_target_model_from_a_state_dict(tmp_path):
    import torchvision

    net = torchvision.models.mobilenet_v3_small(num_classes=7)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    model = load_target_model("mobilenet_v3_small", path)
    assert model.classifier[-1].out_features == 7                       # read from the weights
    block = find_last_conv_block(model)
    assert isinstance(block, nn.Hardswish) and block is model.features[-1][-1]
    with pytest.raises(InputError, match="does not exist"):
        load_target_model("mobilenet_v3_small", tmp_path / "missing.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_target_model("squeezenet1_1", path)
    with pytest.raises(InputError, match="unknown or unbuildable"):
        load_target_model("no_such_net", None)
