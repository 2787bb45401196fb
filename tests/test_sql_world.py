"""A small planted world written straight into LanceDB tables (the store.py schema), for the SQL and
report tests: no CLIP, concept weights drawn from the planted truth plus noise.

Each image is one coloured shape on a background (the demo world's vocabulary). Planted, as in
``demo_world.generate_dataset``: the share of red shapes rises linearly from 10% to 70% over 12
months (shapes and backgrounds fixed); 90% of circles and 10% of squares are on grass, other shapes
on every background uniformly. Extra, for the split test: triangles are on snow in 60% of the train
images but in 10% of the test images.

Weights: the image's own colour, shape and background concepts get U(0.10, 0.40); with probability
0.05 a wrong colour gets a small weight U(0.01, 0.08) (confusion); 4 to 8 noise concepts from the
rest of the vocabulary get Exp(0.03) weights. Error rows (null concepts) are mixed in.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart"]
BACKGROUNDS = ["grass", "sand", "water", "snow", "sky", "wood", "stone"]
ODD_NAMES = ["it's \"odd\"", "café crème", "sea view", "Ünïcödé ✓"]
NOISE = ["photo", "picture", "object", "texture", "drawing", "thing", "round", "shape", "dog", "tree", "lamp",
         "bottle", "cloud", "field", "metal", "paper", "circles", "red circle", "circle on grass", "green grass"]
VOCAB = COLOURS + SHAPES + BACKGROUNDS + NOISE + ODD_NAMES
N_MONTHS = 12


def red_share(month: int) -> float:
    return 0.10 + 0.60 * month / (N_MONTHS - 1)


def draw_world(n: int = 1200, seed: int = 0, n_errors: int = 7):
    """Rows of truth (dicts) and the sparse weights per row."""
    rng = np.random.default_rng(seed)
    rows = []
    start = datetime(2024, 1, 1)
    for i in range(n):
        m = i % N_MONTHS
        colour = "red" if rng.random() < red_share(m) else COLOURS[1 + int(rng.integers(len(COLOURS) - 1))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        split = "test" if rng.random() < 0.25 else "train"
        if shape == "circle":
            bg = "grass" if rng.random() < 0.9 else BACKGROUNDS[1 + int(rng.integers(len(BACKGROUNDS) - 1))]
        elif shape == "square":
            bg = "grass" if rng.random() < 0.1 else BACKGROUNDS[1 + int(rng.integers(len(BACKGROUNDS) - 1))]
        elif shape == "triangle":
            p_snow = 0.6 if split == "train" else 0.1
            bg = "snow" if rng.random() < p_snow else [b for b in BACKGROUNDS if b != "snow"][int(rng.integers(6))]
        else:
            bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        month_start = datetime(2024 + (m // 12), m % 12 + 1, 1)
        ts = month_start + timedelta(days=int(rng.integers(28)), hours=int(rng.integers(24)))
        w = {colour: rng.uniform(0.10, 0.40), shape: rng.uniform(0.10, 0.40), bg: rng.uniform(0.10, 0.40)}
        if rng.random() < 0.05:
            wrong = [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
            w[wrong] = rng.uniform(0.01, 0.08)
        for c in rng.choice(NOISE + ODD_NAMES, size=int(rng.integers(4, 9)), replace=False):
            w.setdefault(str(c), float(rng.exponential(0.03)) + 0.001)
        rows.append({"id": f"img{i:05d}", "uri": f"images/img{i:05d}.png", "label": shape, "colour": colour,
                     "background": bg, "split": split, "timestamp": ts, "weights": w})
    for j in range(n_errors):
        rows.append({"id": f"bad{j:02d}", "uri": f"images/bad{j:02d}.png", "label": SHAPES[j % len(SHAPES)],
                     "colour": None, "background": None, "split": "train",
                     "timestamp": start + timedelta(days=30 * (j % N_MONTHS)), "weights": None})
    return rows


def write_world(db, rows, *, postings: bool = True, dim: int = 16, seed: int = 0, metadata: dict | None = None,
                table: str = "images"):
    """Write images / concepts / image_concepts following the store.py schema. Returns ``db``."""
    import lancedb

    rng = np.random.default_rng(seed + 1)
    cid = {c: i for i, c in enumerate(VOCAB)}
    meta = {"model_name": None, "vocabulary": "test-world", "l1_penalty": 0.25}
    meta.update(metadata or {})
    md = {b"lance_concepts": json.dumps(meta).encode()}
    ids, wts, l0, status, err = [], [], [], [], []
    post = {"image_id": [], "concept_id": [], "weight": []}
    for r in rows:
        if r["weights"] is None:
            ids.append(None)
            wts.append(None)
            l0.append(None)
            status.append("error")
            err.append("cannot decode image")
            continue
        items = sorted(r["weights"].items(), key=lambda kv: -kv[1])
        ids.append([cid[c] for c, _ in items])
        wts.append([float(v) for _, v in items])
        l0.append(len(items))
        status.append("ok")
        err.append(None)
        for c, v in items:
            post["image_id"].append(r["id"])
            post["concept_id"].append(cid[c])
            post["weight"].append(float(v))
    emb = rng.standard_normal((len(rows), dim)).astype(np.float32)
    images = pa.table({
        "id": pa.array([r["id"] for r in rows]),
        "uri": pa.array([r["uri"] for r in rows]),
        "label": pa.array([r["label"] for r in rows]),
        "colour": pa.array([r["colour"] for r in rows], pa.string()),
        "background": pa.array([r["background"] for r in rows], pa.string()),
        "split": pa.array([r["split"] for r in rows]),
        "timestamp": pa.array([r["timestamp"] for r in rows], pa.timestamp("us")),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim),
        "concept_ids": pa.array(ids, pa.list_(pa.int32())),
        "concept_weights": pa.array(wts, pa.list_(pa.float32())),
        "l0": pa.array(l0, pa.int32()),
        "splice_cosine": pa.array(rng.uniform(0.4, 0.6, len(rows)).astype(np.float32)),
        "status": pa.array(status),
        "error": pa.array(err, pa.string()),
    }).replace_schema_metadata(md)
    cemb = rng.standard_normal((len(VOCAB), dim)).astype(np.float32)
    concepts = pa.table({
        "concept_id": pa.array(range(len(VOCAB)), pa.int32()),
        "concept": pa.array(VOCAB),
        "source": pa.array(["test"] * len(VOCAB)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(cemb.ravel()), dim),
    }).replace_schema_metadata(md)
    conn = lancedb.connect(str(db))
    ctab, ptab = ("concepts", "image_concepts") if table == "images" else (f"{table}_concepts",
                                                                           f"{table}_image_concepts")
    conn.create_table(table, images, mode="overwrite")
    conn.create_table(ctab, concepts, mode="overwrite")
    if postings:
        pt = pa.table({"image_id": pa.array(post["image_id"]), "concept_id": pa.array(post["concept_id"], pa.int32()),
                       "weight": pa.array(post["weight"], pa.float32())}).replace_schema_metadata(md)
        ptbl = conn.create_table(ptab, pt, mode="overwrite")
        from lance_concepts.lake.store import mark_postings_current

        # written together from the same rows: the postings describe this images table
        mark_postings_current(conn.open_table(table).to_lance(), ptbl.to_lance())
    return db


def test_world_is_planted_as_documented():
    rows = [r for r in draw_world(1200) if r["weights"] is not None]
    circles = [r for r in rows if r["label"] == "circle"]
    squares = [r for r in rows if r["label"] == "square"]
    assert 0.8 < np.mean([r["background"] == "grass" for r in circles]) <= 1.0
    assert np.mean([r["background"] == "grass" for r in squares]) < 0.2
    first = [r for r in rows if r["timestamp"].month == 1]
    last = [r for r in rows if r["timestamp"].month == 12]
    assert np.mean([r["colour"] == "red" for r in first]) < 0.25
    assert np.mean([r["colour"] == "red" for r in last]) > 0.55
