"""Ground truth for the quality detectors and duplicate groups: plant damaged copies of real photos.

    python benchmarks/quality_ground_truth.py --photos ../shared/datasets/imagenet-sample --n 300 --out /tmp/qgt

Copies ``n`` real photos, then for ``k`` of them each adds: a dark copy (pixels x 0.12), a blurred
copy (Gaussian, radius = 1.5% of the longer side), a tiny copy (shorter side 40 px), a greyscale copy,
a JPEG re-encoding at quality 60 (a near-duplicate) and a byte-exact copy. Ingests everything with
the demo CLIP model (offline), runs ``quality`` (default thresholds) and ``duplicates``, and prints
precision / recall of each detector. Originals that are dark or grey themselves count as false
positives: the numbers are what a user would see. The data is written under ``--out`` only.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

PLANTS = ("dark", "blurry", "tiny", "greyscale", "reencoded", "exact")


def plant(photos: Path, out: Path, n: int, k: int, seed: int = 0) -> list[dict]:
    """Write originals and damaged copies under ``out/imgs``; rows (id, uri, plant, source)."""
    files = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    rng = random.Random(seed)
    files = rng.sample(files, min(n, len(files)))
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, f in enumerate(files):
        uri = f"imgs/o{i:04d}{f.suffix.lower()}"
        shutil.copyfile(f, out / uri)
        rows.append({"id": f"o{i:04d}", "uri": uri, "plant": "original", "source": f"o{i:04d}"})
    for i in rng.sample(range(len(files)), min(k, len(files))):
        im = ImageOps.exif_transpose(Image.open(files[i])).convert("RGB")
        sid = f"o{i:04d}"
        made = {
            "dark": Image.eval(im, lambda v: int(v * 0.12)),
            "blurry": im.filter(ImageFilter.GaussianBlur(0.015 * max(im.size))),
            "tiny": ImageOps.contain(im, (40 * max(im.size) // min(im.size),) * 2),
            "greyscale": im.convert("L"),
        }
        for kind, cp in made.items():
            uri = f"imgs/{kind}_{i:04d}.png"
            cp.save(out / uri)
            rows.append({"id": f"{kind}_{i:04d}", "uri": uri, "plant": kind, "source": sid})
        im.save(out / f"imgs/reencoded_{i:04d}.jpg", quality=60)
        rows.append({"id": f"reencoded_{i:04d}", "uri": f"imgs/reencoded_{i:04d}.jpg", "plant": "reencoded",
                     "source": sid})
        shutil.copyfile(files[i], out / f"imgs/exact_{i:04d}{files[i].suffix.lower()}")
        rows.append({"id": f"exact_{i:04d}", "uri": f"imgs/exact_{i:04d}{files[i].suffix.lower()}",
                     "plant": "exact", "source": sid})
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "uri", "plant", "source"])
        w.writeheader()
        w.writerows(rows)
    return rows


def evaluate(db: str, rows: list[dict], threshold: float = 0.95) -> dict:
    """Precision / recall per detector and of the duplicate groups against the planted rows."""
    from lance_concepts.lake.backfill import backfill_quality
    from lance_concepts.query.quality import quality
    from lance_concepts.retrieval.duplicates import duplicates

    backfill_quality(db)  # content_sha256 where ingest did not write it
    res = quality(db, examples=10 ** 6)
    by_uri = {r["uri"]: r for r in rows}
    out = {}
    for r in res.records():
        if r["issue"] not in ("dark", "blurry", "tiny", "greyscale"):
            continue
        flagged = {by_uri[u]["id"] for u in r["examples"] if u in by_uri}
        truth = {x["id"] for x in rows if x["plant"] == r["issue"]}
        tp = len(flagged & truth)
        out[r["issue"]] = {"precision": tp / len(flagged) if flagged else float("nan"),
                           "recall": tp / len(truth) if truth else float("nan"), "flagged": len(flagged),
                           "planted": len(truth)}
    groups = duplicates(db, threshold).to_pylist()
    src = {x["uri"]: x["source"] for x in rows}
    for kind, plant_kind in (("exact", "exact"), ("near", "reencoded")):
        g = {}
        for r in groups:
            if r["kind"] == kind:
                g.setdefault(r["group_id"], set()).add(r["uri"])
        pairs = {(a, b) for m in g.values() for a in m for b in m if a < b}
        true_pairs = {p for p in pairs if src[p[0]] == src[p[1]]}
        planted = [x for x in rows if x["plant"] == plant_kind]
        orig = {x["source"]: x["uri"] for x in rows if x["plant"] == "original"}
        found = sum(1 for x in planted if tuple(sorted((x["uri"], orig[x["source"]]))) in pairs)
        out[f"duplicates_{kind}"] = {"precision": len(true_pairs) / len(pairs) if pairs else float("nan"),
                                     "recall": found / len(planted) if planted else float("nan"),
                                     "pairs": len(pairs), "planted": len(planted)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="../shared/datasets/imagenet-sample")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--k", type=int, default=40, help="originals that get damaged copies")
    ap.add_argument("--out", default="/tmp/quality-ground-truth")
    ap.add_argument("--threshold", type=float, default=0.95)
    a = ap.parse_args()
    from lance_concepts.lake.ingest import ingest

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = plant(Path(a.photos), out, a.n, a.k)
    db = str(out / "db.lancedb")
    ingest(str(out / "manifest.csv"), db, model="demo", vocab="demo", id_column="id", quiet=True, workers=0)
    print(json.dumps(evaluate(db, rows, a.threshold), indent=1))


if __name__ == "__main__":
    main()
