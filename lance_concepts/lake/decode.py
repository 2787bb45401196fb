"""Reading and decoding image bytes safely: one bad file becomes an error row, never a crashed job.

Images come from local paths, object stores or inline bytes; decoding guards against decompression
bombs, truncated files and text masquerading as images, and converts every mode to RGB for the model.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import urllib.parse
import warnings

import numpy as np

from .quality import image_quality

PILLOW_MAX_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (1024 * 1024 * 1024 // 4 // 3)


# =========================================================================================== decoding
class ImageDecodeError(Exception):
    """One image could not be used; the message goes into the row's ``error`` column."""


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)


def to_rgb(im):
    """Any Pillow mode -> 8-bit RGB: 16-bit/int greyscale scaled (not clipped), float min-max scaled,
    transparency composited on white, CMYK/YCbCr/LAB/palette converted."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = np.zeros_like(a) if not np.isfinite(hi - lo) or hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(a).astype(np.uint8), "L").convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int | None = None, draft: int | None = None):
    """Bytes -> RGB PIL image with EXIF orientation applied (first frame of animations).

    Raises :class:`ImageDecodeError` with a one-line reason for anything unusable. ``max_pixels``
    is the decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` must already allow it);
    ``draft`` lets large images decode at reduced resolution (JPEG DCT scaling, then an integer box
    reduction) as long as the shorter side stays >= ``draft``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if limit and w * h > limit:
                raise Image.DecompressionBombError(f"Image size ({w * h} pixels) exceeds limit of {limit} pixels")
            if draft and getattr(im, "format", None) == "JPEG" and min(w, h) >= 2 * draft:
                im.draft("RGB", (draft, draft))  # DCT-domain downscale, shorter side kept >= draft
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow quotes its own 2x limit: quote ours
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
        raise ImageDecodeError(
            f"image too large: {size} exceed max_pixels {limit:,} (decompression-bomb guard; raise it with "
            "max_pixels, CLI --max-pixels)"
        ) from None
    except UnidentifiedImageError:
        head = data[:64]
        kind = "text, not an image" if _looks_like_text(head) else "not a recognised image format"
        raise ImageDecodeError(f"cannot identify image file ({kind})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            msg = f"truncated image data ({msg})"
        raise ImageDecodeError(f"corrupt image: {msg}") from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block: keep the pixels as stored
        pass
    try:
        im = to_rgb(im)
    except Exception as exc:
        raise ImageDecodeError(f"cannot convert {im.mode} image to RGB: {exc}") from None
    if draft and min(im.size) >= 2 * draft:
        im = im.reduce(min(im.size) // draft)  # integer box reduction, shorter side kept >= draft
    return im


def check_resized_size(size: tuple[int, int], input_size: int | None, max_pixels: int | None) -> None:
    """Refuse an aspect-ratio bomb: CLIP preprocessing scales the short side to ``input_size`` first, so a
    1 x 20,000 image becomes 4,480,000 x 224 pixels (GBs) even though it passes the pixel limit."""
    if not input_size or not max_pixels or min(size) < 1:
        return
    w, h = size
    scale = input_size / min(w, h)
    resized = round(w * scale) * round(h * scale)
    if resized > max_pixels:
        raise ImageDecodeError(
            f"image too large after preprocessing: {w}x{h} with its short side resized to {input_size} is "
            f"{resized:,} pixels, over max_pixels {max_pixels:,} (aspect-ratio bomb; raise it with max_pixels, "
            "CLI --max-pixels)")


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head[:32])


def read_location(root: str | None, uri: str) -> bytes:
    """Bytes of one image: a local path (relative to ``root``), file://, s3:// / gs:// (pyarrow fs), http(s)."""
    if uri is None or str(uri).strip() == "":
        raise ImageDecodeError("empty uri (the source's uri cell is empty)")
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    try:
        if scheme in ("http", "https"):
            from urllib.request import urlopen

            with urlopen(uri, timeout=30) as r:  # noqa: S310 (user-provided image URLs)
                return r.read()
        if scheme and len(scheme) > 1 and scheme != "file":
            from pyarrow import fs as pafs

            filesystem, path = pafs.FileSystem.from_uri(uri)
            with filesystem.open_input_stream(path) as f:
                return f.read()
        # file:// uris are percent-encoded bytes (lossless for names that are not UTF-8, see sources.path_uri)
        path = urllib.parse.unquote_to_bytes(parsed.path) if scheme == "file" else uri
        if isinstance(path, bytes) and root:
            root = os.fsencode(root)
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageDecodeError(f"file not found: {uri}") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"is a directory, not an image file: {uri}") from None
    except PermissionError:
        raise ImageDecodeError(f"permission denied: {uri}") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {uri}: {exc.strerror or exc}") from None
    except Exception as exc:  # network / filesystem errors of many kinds
        raise ImageDecodeError(f"cannot read {uri}: {exc}") from None


class Decoder:
    """Picklable decode + preprocess step, run in worker processes (or inline)."""

    def __init__(self, preprocess, root: str | None, max_pixels: int, draft: int | None, need_hash: bool,
                 input_size: int | None = 224):
        self.preprocess = preprocess
        self.input_size = input_size
        self.root = root
        self.max_pixels = max_pixels
        self.draft = draft
        self.need_hash = need_hash

    def one(self, uri: str, data: bytes | None):
        """-> (SHA-256 hex of the bytes or None, preprocessed array or None, error or None, quality columns or None)"""
        digest = None
        try:
            if data is None:
                data = read_location(self.root, uri)
            if self.need_hash:
                digest = hashlib.sha256(data).hexdigest()
            im = decode_image(data, max_pixels=self.max_pixels, draft=self.draft)
            check_resized_size(im.size, getattr(self, "input_size", 224), self.max_pixels)
            quality = image_quality(data, im)
            try:
                x = self.preprocess(im)
            except Exception as exc:
                raise ImageDecodeError(f"preprocessing failed: {exc}") from None
            x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
            return digest, np.ascontiguousarray(x, dtype=np.float32), None, quality
        except ImageDecodeError as exc:
            return digest, None, str(exc), None

    def __call__(self, tasks):
        return [(i,) + self.one(uri, data) for i, uri, data in tasks]
