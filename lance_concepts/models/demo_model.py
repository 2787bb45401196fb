"""The project's own tiny demo CLIP: open_clip's ``CLIP`` architecture trained on the demo world.

No pretrained weights can be downloaded in offline settings (tests, ``make demo``), so the
project ships a small CLIP of its own, trained from scratch on :mod:`lance_concepts.demo.world`
images. It is a real open_clip model (a small ViT image tower, a small causal text transformer,
open_clip's default BPE tokenizer) registered under :data:`DEMO_MODEL_NAME`, so the usual call
works::

    import open_clip
    from lance_concepts.models.demo_model import DEMO_MODEL_NAME, demo_weights_path
    model, _, preprocess = open_clip.create_model_and_transforms(
        DEMO_MODEL_NAME, pretrained=str(demo_weights_path()))
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL_NAME)

(Importing this module registers the config when open_clip is already imported;
``demo_weights_path()`` and :func:`register_demo_model` register it in any case.) Preprocessing is open_clip's default:
resize to 64 x 64 and normalise with the OpenAI CLIP mean/std, which is what training used.

It knows only the demo world: 8 colours, 8 shapes and 7 backgrounds, a few synonyms of each
(e.g. "crimson", "lawn", "ocean"), and some common words it has only seen as negatives.
Training captions include raw single words ("red", "circle", "grass") and partial captions
("a red shape", "a circle on grass"), so un-templated concept strings land near the images that
contain them, as SpLiCE needs.

Its training recipe lives outside the package, in ``tools/train_demo_model.py``.
"""
from __future__ import annotations

import json
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np

DEMO_MODEL_NAME = "lance-concepts-demo"
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
WEIGHTS_FILE = "demo_clip.pt"
VOCAB_FILE = "demo_vocab.txt"
CONFIG_FILE = f"{DEMO_MODEL_NAME}.json"
IMAGE_MEAN_FILE = "demo_mean.npy"

#: open_clip model config (the same dict is shipped as ``data/lance-concepts-demo.json``).
DEMO_MODEL_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "layers": 4,
        "width": 64,
        "head_width": 32,
        "mlp_ratio": 3.0,
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 48,
        "heads": 4,
        "layers": 3,
        "mlp_ratio": 3.0,
    },
}

#: Related words the model is taught as weaker aliases of the world's words.
SYNONYMS: dict[str, list[str]] = {
    "red": ["crimson", "scarlet"],
    "orange": ["tangerine", "amber"],
    "yellow": ["golden", "lemon"],
    "green": ["emerald", "lime"],
    "blue": ["azure", "cobalt"],
    "purple": ["violet", "lilac"],
    "white": ["ivory", "pale"],
    "black": ["ebony", "dark"],
    "circle": ["round", "disc", "dot"],
    "square": ["box", "block"],
    "triangle": ["triangular", "pyramid"],
    "star": ["starry", "pentagram"],
    "cross": ["plus", "plus sign"],
    "diamond": ["rhombus", "lozenge"],
    "hexagon": ["hexagonal", "honeycomb"],
    "heart": ["love", "valentine"],
    "grass": ["lawn", "meadow", "field"],
    "sand": ["beach", "desert", "dune"],
    "water": ["sea", "ocean", "lake", "waves"],
    "snow": ["ice", "winter", "frost"],
    "sky": ["clouds", "cloud", "air"],
    "wood": ["wooden", "timber", "plank"],
    "stone": ["rock", "granite", "pebbles"],
}

#: Natural colour of each background (for phrases like "green grass", "blue sky").
BACKGROUND_ADJECTIVE = {"grass": "green", "sand": "yellow", "water": "blue", "snow": "white",
                        "sky": "blue", "wood": "brown", "stone": "grey"}

#: Words the model only ever sees as captions that match no image (so they stay away from images).
NEGATIVE_WORDS: list[str] = [
    "dog", "cat", "car", "person", "man", "woman", "child", "tree", "house", "building", "city", "street",
    "food", "pizza", "book", "computer", "phone", "music", "guitar", "flower", "bird", "horse", "boat",
    "chair", "table", "mountain", "bicycle", "train", "airplane", "shoe", "shirt", "dress", "glasses",
    "face", "hand", "text", "logo", "baby", "kitchen", "bedroom", "office", "window", "door", "road",
    "bridge", "fish", "cow", "sheep", "elephant", "camel", "kangaroo", "swimsuit", "bamboo", "forest",
    "convertible", "truck", "clock", "lamp", "bottle", "cup", "apple", "banana", "cake", "sunset",
    "night", "fire", "smoke", "metal", "glass", "plastic", "paper", "fabric", "leather", "brick",
    "pink", "brown", "grey", "gray", "gold", "silver", "oval", "rectangle", "pentagon", "octagon",
    "arrow", "moon", "spiral", "line", "zebra", "tiger", "lion", "bear", "snake", "robot", "painting",
    "cartoon", "vintage", "portrait", "landscape", "sports", "football", "wedding", "beach ball",
    "red car", "blue car", "green tree", "white house", "black cat", "yellow flower",
]


# ----------------------------------------------------------------------------------------------
# Registration with open_clip, package data
# ----------------------------------------------------------------------------------------------

def register_demo_model() -> str:
    """Register :data:`DEMO_MODEL_NAME` with open_clip (idempotent); returns the name."""
    import open_clip
    from open_clip import factory

    if DEMO_MODEL_NAME not in factory._MODEL_CONFIGS:
        cfg_path = demo_config_path()
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        else:  # pragma: no cover - source checkout without the json
            cfg = deepcopy(DEMO_MODEL_CONFIG)
        try:
            factory._MODEL_CONFIGS[DEMO_MODEL_NAME] = cfg
        except Exception:  # pragma: no cover - a future open_clip without the private registry
            open_clip.add_model_config(cfg_path)
    return DEMO_MODEL_NAME


def demo_config_path() -> Path:
    """Path of the packaged open_clip config ``data/lance-concepts-demo.json``."""
    return DATA_DIR / CONFIG_FILE


def demo_weights_path() -> Path:
    """Path of the packaged demo weights (``data/demo_clip.pt``). Also registers the config."""
    try:
        register_demo_model()
    except ImportError:  # pragma: no cover - open_clip missing: the caller will fail later anyway
        pass
    return DATA_DIR / WEIGHTS_FILE


def demo_vocabulary() -> list[str]:
    """The demo concept vocabulary (``data/demo_vocab.txt``): one concept a line, in file order."""
    lines = (DATA_DIR / VOCAB_FILE).read_text(encoding="utf-8").splitlines()
    out, seen = [], set()
    for line in lines:
        word = line.strip()
        if word and not word.startswith("#") and word not in seen:
            seen.add(word)
            out.append(word)
    return out


if "open_clip" in sys.modules:  # cheap here: register as soon as this module is imported
    try:
        register_demo_model()
    except Exception:  # pragma: no cover - a broken open_clip install fails later, with its own error
        pass


def demo_image_mean() -> np.ndarray:
    """Reference image mean for SpLiCE with the demo model (``data/demo_mean.npy``, float32 (64,)):
    the mean of L2-normalised embeddings of 2,000 uniformly random demo scenes (seed 0), NOT
    renormalised, playing the role the MSCOCO mean plays for real CLIP models. Rebuild with
    ``python -m tools.train_demo_model image-mean`` after retraining."""
    return np.load(DATA_DIR / IMAGE_MEAN_FILE).astype(np.float32)


def create_demo_model(weights=None, device="cpu"):
    """``(model, preprocess, tokenizer)`` for the demo model (packaged weights unless ``weights``)."""
    import open_clip

    path = demo_weights_path() if weights is None else Path(weights)
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL_NAME, pretrained=str(path),
                                                                 device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(DEMO_MODEL_NAME)
