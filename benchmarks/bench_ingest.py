"""Ingest throughput vs pure model encoding on already-decoded tensors, side by side.

For each model, on the same images:
  encode   ClipEncoder.encode_images on tensors that were decoded and preprocessed beforehand
           (the ceiling: nothing but the model), in batches of --batch-size;
  ingest   lance_concepts.ingest.ingest() from the image directory into a fresh LanceDB table:
           reading, hashing, decoding and preprocessing in worker processes, encoding, SpLiCE
           (with --vocab), commits, index build; wall time of the whole call;
  decode   reading + decoding + the model's preprocessing alone, no model, in as many forked
           processes as ingest uses: the rate ingest could reach if encoding cost nothing;
and, for reference, decode+preprocess alone on one core. Runs alternate (encode, ingest, decode, ...)
so that the machine's load drifts into all alike; ratios are taken per repeat and their medians
reported: ingest / encode (the issue's target) and ingest / min(encode, decode), how much of the
attainable rate the pipeline delivers when decoding, not the model, is the slower side.

    .venv/bin/python benchmarks/bench_ingest.py                       # ViT-B-32 (random weights) + demo model
    .venv/bin/python benchmarks/bench_ingest.py --models demo --repeats 5 --n 1000
    .venv/bin/python benchmarks/bench_ingest.py --vocab default       # include SpLiCE over the 10k vocabulary

Random weights (pretrained=None) are fine for timing: the architecture, not the weights, sets the cost.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


warnings.filterwarnings("ignore")
os.environ.setdefault("LANCEDB_LOG", "error")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "imagenet-sample"
MODELS = {
    "vit-b-32": ("ViT-B-32", None),  # random weights
    "demo": ("demo", None),
}


def _files(data: Path, n: int) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".JPEG"}
    files = sorted(p for p in data.iterdir() if p.suffix in exts or p.suffix.lower() in exts)
    return files[:n]


_PRE = {}


def _decode_one(path: str):
    """Worker: read + decode + the model's preprocessing, the CPU work ingest does per image."""
    from lance_concepts.lake.decode import decode_image

    pre, draft = _PRE["pre"], _PRE["draft"]
    with open(path, "rb") as f:
        return tuple(pre(decode_image(f.read(), draft=draft)).shape)


def _one_thread():
    import torch

    torch.set_num_threads(1)  # as ingest's workers: a forked child must not use the parent's OpenMP pool


def _decode_pool_seconds(files: list[Path], preprocess, draft, workers: int) -> float:
    """Wall time to decode + preprocess every image with ``workers`` forked processes and no model:
    the most ingest could reach if encoding cost nothing."""
    import concurrent.futures as cf
    import multiprocessing as mp

    _PRE.update(pre=preprocess, draft=draft)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_one_thread) as ex:
        list(ex.map(_decode_one, [str(files[0])] * workers))  # start-up outside the timing
        t = time.perf_counter()
        list(ex.map(_decode_one, [str(p) for p in files], chunksize=8))
        return time.perf_counter() - t


def bench_model(key: str, files: list[Path], args) -> dict:
    import torch

    from lance_concepts.models.encoder import load_encoder
    from lance_concepts.errors import LanceConceptsError
    from lance_concepts.lake.decode import decode_image
    from lance_concepts.lake.ingest import ingest

    name, pretrained = MODELS[key]
    try:
        enc = load_encoder(name, pretrained, batch_size=args.batch_size)
    except LanceConceptsError as exc:
        print(f"[{key}] skipped: {exc}")
        return {"model": key, "skipped": str(exc)}
    if args.vocab == "auto":
        vocab = "demo" if key == "demo" else None
    else:
        vocab = None if args.vocab in (None, "none") else args.vocab

    # the input of the "encode" side: every image decoded and preprocessed beforehand (timed on one core)
    t0 = time.perf_counter()
    tensors = torch.stack([enc.preprocess(decode_image(p.read_bytes())) for p in files])
    prep_s = time.perf_counter() - t0
    n = len(files)
    draft_diff = None
    if args.fast_jpeg:  # how far reduced-resolution decoding moves the model input (normalised units)
        fast = torch.stack([enc.preprocess(decode_image(p.read_bytes(), draft=2 * enc.image_size)) for p in files])
        d = (fast - tensors).abs()
        draft_diff = {"mean_abs": float(d.mean()), "p99_abs": float(d.flatten().kthvalue(
            max(1, int(0.99 * d.numel()))).values), "input_std": float(tensors.std())}
        del fast, d
    work = Path(tempfile.mkdtemp(prefix=f"bench_ingest_{key}_"))
    src = work / "images"
    src.mkdir()
    for p in files:  # a directory holding exactly these images (symlinks: no copy)
        (src / p.name).symlink_to(p.resolve())

    def encode_all():
        with torch.inference_mode():
            for i in range(0, n, args.batch_size):
                enc.encode_images(tensors[i:i + args.batch_size])

    runs = {"encode": [], "ingest": [], "decode": []}
    from lance_concepts.lake.engines.local import default_workers

    n_workers = args.workers if args.workers is not None else default_workers()
    draft = 2 * enc.image_size if args.fast_jpeg else None

    def ingest_once(tag):
        db = work / f"{tag}.lancedb"
        shutil.rmtree(db, ignore_errors=True)
        t = time.perf_counter()
        s = ingest(src, db, model=enc, vocab=vocab, batch_size=args.batch_size, workers=args.workers, quiet=True,
                   draft=args.fast_jpeg, encoder_threads=args.encoder_threads)
        dt = time.perf_counter() - t
        assert s.ok == n, str(s)
        shutil.rmtree(db, ignore_errors=True)
        return dt

    # warm-up: model kernels, worker start-up paths, the vocabulary's text-embedding cache
    encode_all() if n <= 2 * args.batch_size else enc.encode_images(tensors[:args.batch_size])
    shutil.rmtree(work / "warm.lancedb", ignore_errors=True)
    ingest(src, work / "warm.lancedb", model=enc, vocab=vocab, batch_size=args.batch_size, workers=args.workers,
           quiet=True, limit=min(n, 2 * args.batch_size), draft=args.fast_jpeg)
    for r in range(args.repeats):
        t = time.perf_counter()
        encode_all()
        runs["encode"].append(time.perf_counter() - t)
        runs["ingest"].append(ingest_once(f"run{r}"))
        runs["decode"].append(_decode_pool_seconds(files, enc.preprocess, draft, max(n_workers, 1)))
        print(f"[{key}] repeat {r + 1}: encode {n / runs['encode'][-1]:.1f} img/s, "
              f"ingest {n / runs['ingest'][-1]:.1f} img/s, decode alone ({max(n_workers, 1)} processes) "
              f"{n / runs['decode'][-1]:.1f} img/s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    enc_rate = [n / s for s in runs["encode"]]
    ing_rate = [n / s for s in runs["ingest"]]
    dec_rate = [n / s for s in runs["decode"]]
    ratios = [b / a for a, b in zip(enc_rate, ing_rate)]
    # the attainable rate: neither faster than the model alone nor than decoding alone
    of_ceiling = [b / min(a, c) for a, b, c in zip(enc_rate, ing_rate, dec_rate)]
    return {
        "model": key, "arch": name, "n": n, "batch_size": args.batch_size, "workers": args.workers,
        "vocab": vocab, "fast_jpeg": args.fast_jpeg, "image_size": enc.image_size,
        "encoder_threads": args.encoder_threads,
        "encode_img_s": statistics.median(enc_rate), "ingest_img_s": statistics.median(ing_rate),
        "ratio_median": statistics.median(ratios), "ratios": ratios,
        "decode_pool_img_s": statistics.median(dec_rate), "decode_workers": max(n_workers, 1),
        "of_ceiling_median": statistics.median(of_ceiling), "of_ceiling": of_ceiling,
        "decode_preprocess_img_s_one_core": n / prep_s, "torch_threads": torch.get_num_threads(),
        "draft_input_difference": draft_diff,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--models", default="vit-b-32,demo")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: ingest's default)")
    ap.add_argument("--vocab", default="none", help="'none' (embeddings only), 'auto' (demo vocab for the demo "
                                                    "model), or a vocabulary spec for every model")
    ap.add_argument("--fast-jpeg", action="store_true", help="ingest with draft (reduced-scale) JPEG decoding")
    ap.add_argument("--encoder-threads", type=int, default=None, help="ingest(encoder_threads=...) (encode-only "
                    "keeps torch's default: the ceiling stays the model at full speed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"no data at {data}: this benchmark needs the shared ImageNet sample")
        return 1
    files = _files(data, args.n)
    print(f"{len(files)} images from {data}; {os.cpu_count()} CPUs")
    results = [bench_model(k.strip(), files, args) for k in args.models.split(",") if k.strip()]
    print()
    print("| model | input | vocab | workers | encode only (img/s) | ingest (img/s) | ingest / encode | "
          "decode+preprocess, 1 core (img/s) | decode+preprocess, all workers, no model (img/s) | "
          "ingest / min(encode, decode) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['model']} | skipped: {r['skipped'][:80]} |")
            continue
        opts = "".join([", --fast-jpeg" if r["fast_jpeg"] else "",
                        f", encoder threads {r['encoder_threads']}" if r.get("encoder_threads") else ""])
        print(f"| {r['arch']}{opts} | {r['image_size']}px | {r['vocab'] or 'none'} | {r['workers'] or 'default'} | "
              f"{r['encode_img_s']:.1f} | {r['ingest_img_s']:.1f} | {r['ratio_median']:.0%} "
              f"({', '.join(f'{x:.0%}' for x in r['ratios'])}) | {r['decode_preprocess_img_s_one_core']:.0f} | "
              f"{r['decode_pool_img_s']:.0f} | {r['of_ceiling_median']:.0%} "
              f"({', '.join(f'{x:.0%}' for x in r['of_ceiling'])}) |")
    for r in results:
        if r.get("draft_input_difference"):
            d = r["draft_input_difference"]
            print(f"{r['arch']}: --fast-jpeg changes the model input by {d['mean_abs']:.4f} on average "
                  f"(99th percentile {d['p99_abs']:.3f}; the input's std is {d['input_std']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
