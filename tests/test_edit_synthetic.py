"""edit() on a planted synthetic world (no CLIP model): colour and shape live in orthogonal concept
directions, so removing the colour concepts must take colour zero-shot accuracy to chance and leave
shape accuracy where it was."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star", "heart"]
DISTRACTORS = ["tree", "car", "boat", "lamp"]
D = 48


class FakeEncoder:
    """Text 'encoder' for the prompts: the planted concept direction of the label in the prompt."""

    def __init__(self, directions: dict, fingerprint: str):
        self.directions = directions
        self.fingerprint = fingerprint

    def encode_text(self, texts):
        return np.stack([self.directions[t.split()[-1]] for t in texts]).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import lancedb

    from lance_concepts.concepts.splice import SpliceDecomposer
    from lance_concepts.lake.store import conform, concepts_schema, images_schema

    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(D, D)))
    names = COLOURS + SHAPES + DISTRACTORS
    E = basis[: len(names)]  # orthonormal concept directions
    mean_dir = basis[len(names)]
    n = 400
    colour = rng.integers(0, 4, n)
    shape = rng.integers(0, 4, n)
    X = 0.8 * mean_dir + E[colour] + E[4 + shape] + 0.15 * rng.normal(size=(n, D))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)) * rng.uniform(5, 10, (n, 1))
    image_mean = (X / np.linalg.norm(X, axis=1, keepdims=True)).mean(0)
    dec = SpliceDecomposer(E, image_mean=image_mean, l1_penalty=0.1).fit()
    W = dec.decompose(X).tocsr()
    ids, ws = [], []
    for i in range(n):
        row = W.getrow(i)
        order = np.argsort(-row.data)
        ids.append(row.indices[order].astype(np.int32).tolist())
        ws.append(row.data[order].astype(np.float32).tolist())
    meta = {"model_name": "fake", "pretrained": None, "model_fingerprint": "fake-fingerprint", "embed_dim": D,
            "l1_penalty": 0.1, "image_mean": image_mean.tolist(), "vocabulary": "planted"}
    schema = images_schema(D, [pa.field("colour", pa.string()), pa.field("shape", pa.string())], meta)
    table = conform(pa.table({
        "id": [f"i{i}" for i in range(n)], "uri": [f"{i}.png" for i in range(n)],
        "colour": [COLOURS[c] for c in colour], "shape": [SHAPES[s] for s in shape],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).ravel()), D),
        "concept_ids": pa.array(ids, pa.list_(pa.int32())), "concept_weights": pa.array(ws, pa.list_(pa.float32())),
        "l0": pa.array([len(x) for x in ids], pa.int32()), "splice_cosine": pa.array(np.zeros(n), pa.float32()),
        "status": ["ok"] * n, "error": pa.nulls(n, pa.string()),
    }), schema).replace_schema_metadata(schema.metadata)
    path = str(tmp_path_factory.mktemp("edit-synth") / "db.lancedb")
    db = lancedb.connect(path)
    db.create_table("images", table)
    db.create_table("concepts", pa.table({
        "concept_id": pa.array(np.arange(len(names), dtype=np.int32)), "concept": names, "source": ["planted"] * len(names),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(E.astype(np.float32).ravel()), D),
    }).cast(concepts_schema(D)))
    encoder = FakeEncoder({nm: E[i] for i, nm in enumerate(names)}, "fake-fingerprint")
    return path, encoder, dec, W


def test_removing_planted_colour_concepts(world):
    from lance_concepts.retrieval.edit import edit

    path, encoder, _, _ = world
    report = edit(path, COLOURS, "no_colour", labels_columns=["colour", "shape"], prompts="a photo of a {}",
                  encoder=encoder)
    colour, shape = report.accuracy["colour"], report.accuracy["shape"]
    assert colour["classes"] == 4 and colour["chance"] == 0.25
    assert colour["clip"] > 0.95 and colour["before"] > 0.95 and shape["before"] > 0.95
    assert colour["after"] <= colour["majority"] + 0.02  # nothing left to tell colours apart
    assert abs(shape["after"] - shape["before"]) <= 0.01
    assert report.rows == 400 and report.rows_touched >= 390


def test_edited_column_is_the_splice_recomposition(world):
    import lancedb

    from lance_concepts.retrieval.edit import edit

    path, encoder, dec, W = world
    edit(path, ["red", "circle"], "no_red_circle", encoder=encoder)
    t = lancedb.connect(path).open_table("images").to_lance().to_table(columns=["no_red_circle"])
    got = t["no_red_circle"].combine_chunks().values.to_numpy().reshape(-1, D)
    want = dec.recompose(dec.intervene(W, [0, 4]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # overwrite replaces the column (and only it)
    edit(path, ["blue"], "no_red_circle", encoder=encoder, overwrite=True)
    tbl = lancedb.connect(path).open_table("images")
    assert tbl.schema.names.count("no_red_circle") == 1 and "embedding" in tbl.schema.names
    got = tbl.to_lance().to_table(columns=["no_red_circle"])["no_red_circle"].combine_chunks().values.to_numpy()
    np.testing.assert_allclose(got.reshape(-1, D), dec.recompose(dec.intervene(W, [2])), atol=1e-5)


def test_edit_checks_the_encoder_fingerprint(world):
    from lance_concepts.errors import InputError
    from lance_concepts.retrieval.edit import edit

    path, encoder, _, _ = world
    other = FakeEncoder(encoder.directions, "another-model")
    with pytest.raises(InputError, match="fingerprint"):
        edit(path, ["red"], "x", labels_columns=["colour"], encoder=other)
