"""GradCAM evidence for FALCON: where in an image a target model's features fire, as crops CLIP can embed.

FALCON explains a representation better from the image regions that drive a feature than from whole
images; these helpers find the last convolutional block of a torchvision-style model, compute GradCAM
maps, cut the strongest region and load target models by name.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError

# ----------------------------------------------------------------------------------------------
# Torch models: pre-classifier features and GradCAM crops
# ----------------------------------------------------------------------------------------------

def _resolve_module(model, layer):
    if layer is None or not isinstance(layer, str):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise InputError(f"model has no layer {layer!r}; layers: {', '.join(names[-15:])}") from None


def find_last_conv_block(model):
    """GradCAM's target: ``model.layer4`` (ResNet-style) when present, else the last ``Conv2d``
    together with the normalisation / activation modules registered right after it (so that the
    map is taken after the block's non-linearity, as for ResNet's ``layer4``)."""
    import torch.nn as nn

    if isinstance(getattr(model, "layer4", None), nn.Module):
        return model.layer4
    mods = list(model.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError("the model has no Conv2d layer: pass target_layer= for GradCAM")
    after = (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardswish,
             nn.ELU, nn.Mish)
    i = convs[-1]
    while i + 1 < len(mods) and isinstance(mods[i + 1], after) and mods[i + 1] not in mods[:convs[-1]]:
        i += 1
    return mods[i]


def _last_linear(model):
    import torch.nn as nn

    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not lins:
        raise InputError("the model has no Linear classifier: pass features_layer= (whose output are the features)")
    return lins[-1]


def default_transform(size: int = 224):
    """Resize the WHOLE image to ``size x size`` (no crop, so GradCAM boxes map back), ImageNet normalisation."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


class GradCAM:
    """GradCAM of a ``torch.nn.Module`` with the target = sum of chosen pre-classifier features.

    ``features_layer``: the module whose INPUT (default: the last ``nn.Linear``, i.e. the
    classifier) or, when given explicitly, whose OUTPUT (flattened) are the features.
    ``target_layer``: the last convolutional block by default (:func:`find_last_conv_block`).
    """

    def __init__(self, model, target_layer=None, features_layer=None, device: str = "cpu"):
        import torch

        self.model = model.to(device).eval()
        self.device = device
        self.target = _resolve_module(model, target_layer) or find_last_conv_block(model)
        explicit = features_layer is not None
        self.feat_module = _resolve_module(model, features_layer) if explicit else _last_linear(model)
        self._store = {}
        self._hooks = [self.target.register_forward_hook(self._save_act)]
        if explicit:
            self._hooks.append(self.feat_module.register_forward_hook(
                lambda m, i, o: self._store.__setitem__("feat", o)))
        else:
            self._hooks.append(self.feat_module.register_forward_pre_hook(
                lambda m, i: self._store.__setitem__("feat", i[0])))
        self._torch = torch

    def _save_act(self, module, inputs, output):
        self._store["act"] = output

    def remove(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def features(self, x) -> np.ndarray:
        """Pre-classifier features ``(n, m)`` of a batch tensor."""
        with self._torch.no_grad():
            self.model(x.to(self.device))
        return self._store["feat"].flatten(1).float().cpu().numpy()

    def __call__(self, x, features: Sequence[int]) -> np.ndarray:
        """Maps ``(n, H, W)`` in [0, 1] (max-normalised per image) at the input resolution."""
        torch = self._torch
        F = torch.nn.functional
        x = x.to(self.device)
        with torch.enable_grad():
            self.model.zero_grad(set_to_none=True)
            self.model(x)
            act = self._store["act"]
            feat = self._store["feat"].flatten(1)
            y = feat[:, list(features)].sum()
            grad = torch.autograd.grad(y, act)[0]
        with torch.no_grad():
            w = grad.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((w * act).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
            peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)
            cam = cam / peak[:, None, None]
        return cam.cpu().numpy()


def largest_box(cam: np.ndarray, threshold: float = 0.6) -> tuple[float, float, float, float] | None:
    """Relative ``(x0, y0, x1, y1)`` of the largest connected region of ``cam >= threshold``; None if empty."""
    from scipy import ndimage

    mask = cam >= threshold
    if not mask.any():
        return None
    lab, k = ndimage.label(mask)
    sizes = np.bincount(lab.ravel())[1:]
    ys, xs = np.nonzero(lab == (int(np.argmax(sizes)) + 1))
    h, w = cam.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def crop_to_box(image, box, size: int):
    """Crop a PIL image to a relative box and resize it to ``size x size`` (the CLIP input size)."""
    from PIL import Image

    if box is None:
        return image.resize((size, size), Image.BICUBIC)
    W, H = image.size
    x0, y0, x1, y1 = box
    l, t = int(math.floor(x0 * W)), int(math.floor(y0 * H))
    r, b = max(int(math.ceil(x1 * W)), l + 1), max(int(math.ceil(y1 * H)), t + 1)
    return image.crop((l, t, r, b)).resize((size, size), Image.BICUBIC)


def model_features(model, images, transform=None, *, batch_size: int = 64, features_layer=None,
                   device: str = "cpu") -> np.ndarray:
    """Pre-classifier features of PIL ``images`` (or a callable ``rows -> PIL list`` with ``n``)."""
    import torch

    transform = transform or default_transform()
    model = model.to(device).eval()
    store = {}
    if features_layer is not None:
        mod = _resolve_module(model, features_layer)
        hook = mod.register_forward_hook(lambda m, i, o: store.__setitem__("f", o))
    else:
        hook = _last_linear(model).register_forward_pre_hook(lambda m, i: store.__setitem__("f", i[0]))
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                x = torch.stack([transform(im.convert("RGB")) for im in images[s:s + batch_size]]).to(device)
                model(x)
                out.append(store["f"].flatten(1).float().cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def gradcam_crop_embedder(model, load_images: Callable[[np.ndarray], list], encoder, transform=None, *,
                          target_layer=None, features_layer=None, threshold: float = 0.6,
                          batch_size: int = 32, device: str = "cpu"):
    """A ``crop_embedder`` for :meth:`FalconExplainer.fit`: GradCAM (target = sum of the group's
    features) on the last convolutional block, binarised at ``threshold``, largest box, crop,
    resize to the CLIP input size, CLIP-encode."""
    import torch

    transform = transform or default_transform()
    cam = GradCAM(model, target_layer=target_layer, features_layer=features_layer, device=device)
    size = int(getattr(encoder, "image_size", 224))

    def embed(features, rows):
        out = []
        for s in range(0, len(rows), batch_size):
            ims = [im.convert("RGB") for im in load_images(np.asarray(rows[s:s + batch_size]))]
            x = torch.stack([transform(im) for im in ims])
            maps = cam(x, features)
            crops = [crop_to_box(im, largest_box(m, threshold), size) for im, m in zip(ims, maps)]
            out.append(encoder.encode_images(crops))
        return np.concatenate(out)

    embed.gradcam = cam
    return embed


def load_target_model(arch: str, weights=None, *, num_classes: int | None = None):
    """A torchvision (``resnet18``) or timm (``timm:convnext_tiny``) architecture with a local weights
    file (a state dict, possibly under a ``state_dict`` / ``model`` key). ``num_classes`` is read from
    the weights when not given."""
    import os

    import torch

    state = None
    if weights is not None:
        if not os.path.isfile(os.path.expanduser(str(weights))):
            raise InputError(f"target model weights file {weights!r} does not exist")
        try:
            state = torch.load(os.path.expanduser(str(weights)), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"could not read weights {weights!r} as a state dict: {exc}") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise InputError(f"{weights!r} does not hold a state dict")
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        if num_classes is None:
            mats = [(k, v) for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
            if mats:
                num_classes = int(mats[-1][1].shape[0])
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if arch.startswith("timm:"):
            import timm

            model = timm.create_model(arch[5:], pretrained=False, **kwargs)
        else:
            import torchvision

            model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"unknown or unbuildable target architecture {arch!r}: {exc}") from None
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(f"weights {weights!r} do not fit architecture {arch!r}: {str(exc)[:500]}") from None
    return model.eval()
