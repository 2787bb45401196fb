"""CLIP image and text encoders (open_clip), loaded by name and weights, with a stable fingerprint.

Everything the project computes from a model (embeddings, concept weights, feature labels) records
the model's *fingerprint*, so that results from different weights or preprocessing are never mixed
silently.

Why the text path is not open_clip's plain ``encode_text``: concept vocabularies are thousands of
one- and two-word strings, which tokenize to 3-5 tokens, but open_clip pads every string to the full
context (77 tokens). The text tower is causal, so the output at the end-of-text token depends only on
the tokens before it: truncating the batch to its longest sequence gives the same embeddings at a
fraction of the cost. Batches are formed from length-sorted strings so that padding stays small.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError, WeightsUnavailableError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEMO = "demo"

__all__ = [
    "ClipEncoder",
    "load_encoder",
    "WeightsUnavailableError",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
]


def resolve_device(device) -> str:
    """"auto" -> cuda when available, else cpu; an explicit cuda device without CUDA is a clear error."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but CUDA is not available on this machine")
    return device


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick DNS/TCP probe, so that an offline machine fails in seconds instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_message(model: str, pretrained: str, tried: str) -> str:
    return (
        f"Could not load weights for open_clip model {model!r} with pretrained={pretrained!r}: {tried}.\n"
        "To use this model offline, either\n"
        f"  - pass a local weights file: --pretrained /path/to/open_clip_pytorch_model.bin "
        f"(Python: load_encoder({model!r}, pretrained='/path/to/open_clip_pytorch_model.bin')), or\n"
        "  - download it once on a connected machine into the Hugging Face hub cache "
        "(HF_HOME, default ~/.cache/huggingface) and copy that cache here, or\n"
        "  - use the project's offline demo model: --model demo."
    )


def _resolve_checkpoint(model: str, pretrained: str | None, cache_dir: str | None) -> tuple[str | None, dict]:
    """Return (local checkpoint path or None for random init, pretrained config of the tag or {})."""
    from open_clip.pretrained import (
        download_pretrained,
        get_pretrained_cfg,
        list_pretrained_tags_by_model,
    )

    if pretrained in (None, "", "none", "random"):
        return None, {}
    if os.path.isfile(os.path.expanduser(str(pretrained))):
        return os.path.expanduser(str(pretrained)), {}
    cfg = get_pretrained_cfg(model, pretrained)
    if not cfg:
        looks_like_path = os.sep in str(pretrained) or str(pretrained).endswith((".bin", ".pt", ".pth", ".safetensors"))
        if looks_like_path:
            raise WeightsUnavailableError(f"weights file {pretrained!r} does not exist")
        tags = list_pretrained_tags_by_model(model)
        raise WeightsUnavailableError(
            f"{pretrained!r} is neither a known pretrained tag of {model!r} nor an existing file. "
            f"Known tags: {', '.join(tags) if tags else '(none)'}"
        )
    hub = cfg.get("hf_hub", "")
    if hub:  # a cached copy works offline
        from huggingface_hub import hf_hub_download

        model_id, filename = os.path.split(hub)
        for name in ("open_clip_model.safetensors", filename or "open_clip_pytorch_model.bin"):
            try:
                return hf_hub_download(model_id, name, cache_dir=cache_dir, local_files_only=True), cfg
            except Exception:  # not in the cache under this name
                pass
    if not _hub_reachable():
        raise WeightsUnavailableError(
            _offline_message(model, pretrained, "they are not in the local hub cache and the hub is unreachable")
        )
    try:
        return download_pretrained(cfg, cache_dir=cache_dir), cfg
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise WeightsUnavailableError(_offline_message(model, pretrained, f"download failed ({exc})")) from None


def encode_tokens_truncated(model, tokens: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """open_clip's ``CLIP.encode_text`` on tokens cut to the batch's longest sequence.

    Exact for the causal text tower: the output at a sequence's end-of-text token never sees the
    padding after it. Gradients flow as usual (the demo model's training uses it too).
    """
    from open_clip.transformer import text_global_pool

    length = max(int((tokens != 0).sum(dim=1).max().item()), 1)
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast)
    x = x + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return x


def digest_state_dict(state_dict) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ClipEncoder:
    """An open_clip CLIP model with its preprocessing and tokenizer, producing float32 numpy embeddings.

    ``model`` is an open_clip architecture name (``open_clip.list_models()``) or ``"demo"`` for the
    project's tiny offline demo model; ``pretrained`` is an open_clip tag, a local weights file, or
    ``None`` for random weights (useful for timing only). Embeddings are returned RAW (not
    L2-normalised): SpLiCE and FALCON apply their own normalisation.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str = "auto",
        batch_size: int = 64,
        cache_dir: str | None = None,
        seed: int = 0,
    ):
        import open_clip
        import torch

        if batch_size < 1:
            raise InputError("batch_size must be a positive integer")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        if model == DEMO:
            from . import demo_model

            arch = demo_model.DEMO_MODEL_NAME
            checkpoint, tag_cfg = str(demo_model.demo_weights_path()), {}
            pretrained = None
            if not os.path.isfile(checkpoint):
                raise WeightsUnavailableError(
                    f"the demo model's weights are missing from the package ({checkpoint}); "
                    "reinstall lance-concepts or retrain them with `python -m tools.train_demo_model train`"
                )
        else:
            arch = model
            if arch.startswith("lance-concepts-demo"):
                from . import demo_model
            if open_clip.get_model_config(arch) is None and not arch.startswith(("hf-hub:", "local-dir:")):
                raise InputError(
                    f"unknown open_clip model {model!r}; see open_clip.list_models() (or use 'demo')"
                )
            checkpoint, tag_cfg = _resolve_checkpoint(arch, pretrained, cache_dir)
        self.model_name = model
        self.pretrained = pretrained
        torch.manual_seed(seed)  # only matters for random-init models: keeps their fingerprint stable
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=checkpoint,
                device=self.device,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
                cache_dir=cache_dir,
            )
        except (RuntimeError, OSError, KeyError) as exc:
            if checkpoint is None:
                raise
            raise WeightsUnavailableError(
                f"the weights in {checkpoint!r} could not be loaded into {arch!r}: {exc}"
            ) from None
        net.eval()
        self.model = net
        self.preprocess: Callable = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        visual = net.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.inference_mode():
            probe = self.tokenizer(["a"]).to(self.device)
            self.embed_dim = int(net.encode_text(probe).shape[-1])
        self.preprocess_config = dict(getattr(visual, "preprocess_cfg", {}) or {})
        self.preprocess_config.setdefault("image_size", self.image_size)
        self.fingerprint = self._fingerprint(arch)

    # -- identity -------------------------------------------------------------------------------
    def _fingerprint(self, arch: str) -> str:
        h = hashlib.sha256()
        h.update(arch.encode())
        h.update(digest_state_dict(self.model.state_dict()).encode())
        h.update(json.dumps(self.preprocess_config, sort_keys=True, default=str).encode())
        h.update(repr(self.preprocess).encode())
        h.update(str(getattr(self.tokenizer, "context_length", "")).encode())
        return h.hexdigest()[:20]

    def describe(self) -> dict:
        """What to record next to anything computed with this encoder."""
        return {
            "model_name": self.model_name,
            "pretrained": None if self.pretrained is None else str(self.pretrained),
            "model_fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
        }

    def __repr__(self) -> str:
        return (f"ClipEncoder(model={self.model_name!r}, pretrained={self.pretrained!r}, "
                f"device={self.device!r}, fingerprint={self.fingerprint!r})")

    # -- images ---------------------------------------------------------------------------------
    def preprocess_images(self, images: Iterable) -> "torch.Tensor":  # noqa: F821
        """PIL images -> one preprocessed batch tensor (the step ingest workers run in parallel)."""
        import torch

        return torch.stack([self.preprocess(im) for im in images])

    def encode_images(self, images) -> np.ndarray:
        """Encode PIL images or an already-preprocessed ``(n, 3, H, W)`` tensor; returns ``(n, d)`` float32."""
        import torch

        if isinstance(images, torch.Tensor):
            batches = [images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size)]
            tensors = iter(batches)
        else:
            images = list(images)
            tensors = (self.preprocess_images(images[i:i + self.batch_size])
                       for i in range(0, len(images), self.batch_size))
        out = [np.zeros((0, self.embed_dim), dtype=np.float32)]
        with torch.inference_mode():
            for batch in tensors:
                feats = self.model.encode_image(batch.to(self.device, dtype=torch.float32))
                out.append(feats.float().cpu().numpy())
        return np.concatenate(out, axis=0)

    # -- text -----------------------------------------------------------------------------------
    def _supports_truncation(self) -> bool:
        from open_clip.model import CLIP

        return isinstance(self.model, CLIP) and getattr(self.model, "attn_mask", None) is not None

    def _encode_tokens_truncated(self, tokens: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        return encode_tokens_truncated(self.model, tokens)

    def encode_text(self, texts: Sequence[str], *, truncate: bool = True) -> np.ndarray:
        """Encode strings; returns ``(n, d)`` float32 in input order.

        ``truncate=False`` runs open_clip's plain ``encode_text`` on full-length token sequences (the
        reference the fast path is tested and benchmarked against).
        """
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        tokens = self.tokenizer(texts)
        fast = truncate and self._supports_truncation()
        order = np.argsort((tokens != 0).sum(dim=1).numpy(), kind="stable") if fast else np.arange(len(texts))
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        bs = self.batch_size * 4 if fast else self.batch_size
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                idx = order[i:i + bs]
                batch = tokens[torch.as_tensor(idx)].to(self.device)
                feats = self._encode_tokens_truncated(batch) if fast else self.model.encode_text(batch)
                out[idx] = feats.float().cpu().numpy()
        return out


@functools.lru_cache(maxsize=4)
def _cached_encoder(model, pretrained, device, batch_size, cache_dir) -> ClipEncoder:
    return ClipEncoder(model, pretrained, device=device, batch_size=batch_size, cache_dir=cache_dir)


def load_encoder(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str = "auto",
    batch_size: int = 64,
    cache_dir: str | None = None,
) -> ClipEncoder:
    """Load (once per process) an encoder. ``model="demo"`` is the offline demo model."""
    if model == DEMO:
        pretrained = None
    if pretrained is not None and os.path.isfile(os.path.expanduser(str(pretrained))):
        pretrained = str(Path(pretrained).expanduser().resolve())
    return _cached_encoder(model, pretrained, resolve_device(device), int(batch_size), cache_dir)
