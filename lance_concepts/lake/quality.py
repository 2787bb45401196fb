"""Image quality columns, computed from the decoded image while ingest has it in memory anyway.

Definitions (the documented meaning of each column; the stats use the image shrunk by an integer box
reduction so its longer side is at most ``STATS_SIDE`` pixels, so they do not depend
on resolution and cost ~1 ms an image):

- ``width``, ``height``: pixels as stored in the file (before EXIF rotation); ``aspect`` = width / height
- ``file_size``: bytes of the file; ``format``: the decoder's name for it (JPEG, PNG, WEBP, ...)
- ``brightness``: mean luma (ITU-R 601, 0-255) / 255, in [0, 1]; dark images are low
- ``contrast``: standard deviation of luma / 255 (RMS contrast), in [0, 0.5]
- ``blur``: variance of the 4-neighbour Laplacian of the luma (0-255 scale): low = few edges = blurry.
  It scales with contrast (a dark copy has ~1/70 of it), so the ``blurry`` issue divides it by the
  luma variance: ``blur / (contrast * 255)^2``, the share of the image's variance in fine detail
- ``colourfulness``: Hasler & Suesstrunk (2003) M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)
  with rg = R - G, yb = (R + G) / 2 - B; 0 for grey, ~100+ very colourful
- ``is_greyscale``: mean(max channel - min channel) / mean(max channel) < 0.04, the saturation of
  HSV computed over the whole image (a ratio, so a dark colour photo is not grey)
- ``content_sha256``: hex SHA-256 of the file's bytes (exact duplicates share it)
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa

STATS_SIDE = 256
GREY_SATURATION = 0.04

QUALITY_FIELDS = (
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("aspect", pa.float32()),
    pa.field("file_size", pa.int64()),
    pa.field("format", pa.string()),
    pa.field("brightness", pa.float32()),
    pa.field("contrast", pa.float32()),
    pa.field("blur", pa.float32()),
    pa.field("colourfulness", pa.float32()),
    pa.field("is_greyscale", pa.bool_()),
)
QUALITY_COLUMNS = tuple(f.name for f in QUALITY_FIELDS)


def file_facts(data: bytes) -> dict:
    """Size and format from the file header (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            fmt = im.format
    except Exception:  # the caller decodes it anyway and reports a real failure there
        return {"file_size": len(data)}
    return {"width": int(w), "height": int(h), "aspect": float(w) / float(h) if h else None,
            "file_size": len(data), "format": fmt}


def pixel_stats(im) -> dict:
    """Brightness, contrast, blur, colourfulness and greyscale flag of an RGB PIL image."""
    k = -(-max(im.size) // STATS_SIDE)  # ceil: an integer box reduction to at most STATS_SIDE
    if k > 1:
        im = im.reduce(k)
    if im.mode != "RGB":
        im = im.convert("RGB")
    a = np.asarray(im)
    r, g, b = (a[..., i].astype(np.float32) for i in range(3))
    y = np.asarray(im.convert("L"), dtype=np.float32)  # ITU-R 601 luma, in C
    lap = np.zeros(0, np.float32)
    if y.shape[0] >= 3 and y.shape[1] >= 3:
        lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4 * y[1:-1, 1:-1]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = float(np.sqrt(rg.var() + yb.var()) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    saturation = float((mx.mean() - mn.mean()) / max(float(mx.mean()), 1.0))
    return {"brightness": float(y.mean() / 255.0), "contrast": float(y.std() / 255.0),
            "blur": float(lap.var()) if lap.size else 0.0, "colourfulness": colourful,
            "is_greyscale": saturation < GREY_SATURATION}


def image_quality(data: bytes, im) -> dict:
    """All quality columns of one image: header facts of ``data`` and pixel stats of decoded ``im``.
    Never raises: a statistic that cannot be computed is left null, the image is still ingested."""
    try:
        stats = pixel_stats(im)
    except Exception:  # noqa: BLE001 - quality must not cost the user an image
        stats = {}
    return {**file_facts(data), **stats}


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quality_table(records) -> pa.Table:
    """Quality dicts (None for images that failed) -> a table with the :data:`QUALITY_FIELDS`."""
    return pa.table({f.name: pa.array([None if q is None else q.get(f.name) for q in records], f.type)
                     for f in QUALITY_FIELDS})
