"""Ingest images into LanceDB: sources, decode workers, the encode/decompose/write pipeline.

``ingest(source, db)`` turns a directory of images, a manifest (CSV / Parquet / JSONL with a
``uri`` or ``path`` column and any metadata columns) or an existing Lance table (image bytes or a
uri column) into rows of the ``images`` table (see :mod:`lance_concepts.store` for the schema):
a CLIP embedding, SpLiCE concept weights, ``l0``, ``splice_cosine``, and ``status``/``error``.

How it runs
    Decoding and preprocessing run in a pool of worker processes (``workers``) while the main
    process encodes batches with the model; a writer thread decomposes and commits finished batches.
    Every batch is committed as a merge on ``id``: re-running the same command skips what is
    already there, and a run killed at any point (even SIGKILL) and re-run ends with every image
    exactly once.

Bad input never stops the job: each unreadable, corrupt, truncated, empty, oversized (Pillow's
decompression-bomb limit) or missing image becomes a row with ``status='error'`` and a message in
``error``; the summary counts ok / error / skipped rows. :attr:`IngestSummary.exit_code` is 0 when
any image was ingested (or there was nothing new to do) and 1 when every attempted image failed.

``decompose_table(db, vocab, l1)`` recomputes the concept columns from the stored embeddings (new
vocabulary or l1) without touching the images, as a new concept-column version.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import io
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .errors import InputError, LanceConceptsError
from .store import (
    IMAGE_COLUMNS,
    ImageStore,
    check_compatible,
    companion_tables,
    images_schema,
    normalise_metadata_field,
)

__all__ = [
    "ingest",
    "decompose_table",
    "IngestSummary",
    "DecomposeSummary",
    "open_source",
    "Source",
    "decode_image",
    "ImageDecodeError",
    "IMAGE_EXTENSIONS",
]

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico .jp2 .j2k".split()
)
_URI_COLUMNS = ("uri", "path", "filepath", "file_path", "image_path", "filename", "file", "image_uri", "url")
_IMAGE_BYTES_COLUMNS = ("image", "image_bytes", "bytes", "data", "content", "img")
_TIME_NAME_HINTS = ("timestamp", "date", "time", "datetime", "created", "taken")
PILLOW_MAX_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (1024 * 1024 * 1024 // 4 // 3)


# =========================================================================================== sources
@dataclass
class Source:
    """A resolved image source: one row per image in ``table`` (``uri`` + metadata columns)."""

    kind: str  # "directory" | "manifest" | "lance"
    location: str  # what the user passed, resolved
    root: str | None  # base for relative uris (None: uris are absolute or bytes come from `bytes_column`)
    table: pa.Table  # `uri` (string) + metadata columns (+ `id` when ids come from the source)
    id_column: str | None = None  # column of `table` holding ids; None: content hash
    bytes_dataset: Any = None  # lance dataset with the image bytes (kind "lance")
    bytes_column: str | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def metadata_fields(self) -> list[pa.Field]:
        skip = {"uri", self.id_column} if self.id_column else {"uri"}
        return [f for f in self.table.schema if f.name not in skip and f.name != "_row"]

    def read_bytes(self, rows: Sequence[int]) -> list[bytes | None]:
        """Image bytes of source rows (kind "lance" with a bytes column only)."""
        if self.bytes_dataset is None:
            raise RuntimeError("this source has no bytes column")
        offs = [int(self.table.column("_row")[i].as_py()) for i in rows]
        t = self.bytes_dataset.take(offs, columns=[self.bytes_column])
        return t.column(0).to_pylist()


def _looks_like_time(name: str) -> bool:
    n = name.lower()
    return any(h in n for h in _TIME_NAME_HINTS) or n.endswith(("_at", "_on"))


def _parse_time_strings(col: pa.ChunkedArray) -> pa.Array | None:
    """ISO-8601 strings -> timestamp[us] (UTC, tz-naive), or None if any non-empty value does not parse."""
    out = []
    for v in col.to_pylist():
        if v is None or str(v).strip() == "":
            out.append(None)
            continue
        s = str(v).strip()
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        try:
            d = datetime.fromisoformat(s)
        except ValueError:
            return None
        if d.tzinfo is not None:
            d = d.astimezone(timezone.utc).replace(tzinfo=None)
        out.append(d)
    return pa.array(out, pa.timestamp("us"))


def _normalise_columns(t: pa.Table) -> pa.Table:
    """Dates/timestamps -> timestamp[us]; ISO strings in time-like columns parsed; large types narrowed."""
    cols, names = [], []
    for f, col in zip(t.schema, t.columns):
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            col = col.cast(pa.timestamp(f.type.unit, tz="UTC")).cast(pa.timestamp(f.type.unit))
        if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and _looks_like_time(f.name):
            parsed = _parse_time_strings(col)
            if parsed is not None:
                col = parsed
        target = normalise_metadata_field(pa.field(f.name, col.type)).type
        if col.type != target:
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            col = col.cast(target)
        cols.append(col)
        names.append(f.name)
    return pa.Table.from_arrays(cols, names=names)


def _read_manifest(path: Path, id_column: str | None, uri_column: str | None) -> pa.Table:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() in (".gz", ".bz2") else path.suffix.lower()
    strings = {c: pa.string() for c in {"id", "uri", "path", id_column, uri_column} if c}
    try:
        if suffix.startswith((".csv", ".tsv")):
            import pyarrow.csv as pcsv

            delim = "\t" if suffix.startswith(".tsv") else ","
            t = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim, newlines_in_values=True),
                              convert_options=pcsv.ConvertOptions(column_types=strings, strings_can_be_null=False))
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            t = pq.read_table(path)
        elif suffix.startswith((".jsonl", ".ndjson", ".json")):
            import pyarrow.json as pjson

            t = pjson.read_json(path)
        else:
            raise InputError(f"unsupported manifest format {path.suffix!r} (use .csv, .tsv, .parquet, .jsonl)")
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from None
    return t


def _pick_column(names: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    if wanted:
        if wanted not in names:
            raise InputError(f"{what} column {wanted!r} is not in {where} (columns: {', '.join(names)})")
        return wanted
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise InputError(
        f"{where} has no {what} column: expected one of {', '.join(candidates)} (columns: {', '.join(names)})"
    )


def _to_string(col) -> pa.ChunkedArray:
    if pa.types.is_string(col.type):
        return col
    return col.cast(pa.string())


def open_source(source, *, id_column: str | None = None, uri_column: str | None = None,
                image_column: str | None = None, storage_options: Mapping[str, str] | None = None) -> Source:
    """Resolve ``source`` (directory, manifest file, Lance dataset, or ``DB::TABLE``) to a :class:`Source`."""
    s = os.fspath(source)
    if "::" in s:  # a table of a LanceDB database
        db, _, tname = s.rpartition("::")
        from .store import connect

        try:
            ds = connect(db, storage_options).open_table(tname).to_lance()
        except Exception as exc:
            raise InputError(f"cannot open table {tname!r} in {db}: {exc}") from None
        return _lance_source(ds, s, db, id_column, uri_column, image_column)
    p = Path(s).expanduser()
    if p.is_dir() and (p.suffix == ".lance" or (p / "_versions").is_dir()):
        import lance

        try:
            ds = lance.dataset(str(p), storage_options=dict(storage_options) if storage_options else None)
        except Exception as exc:
            raise InputError(f"cannot open Lance dataset {p}: {exc}") from None
        return _lance_source(ds, str(p), str(p.parent), id_column, uri_column, image_column)
    if p.is_dir():
        return _directory_source(p)
    if p.is_file():
        return _manifest_source(p, id_column, uri_column)
    if not p.exists():
        raise InputError(f"source {s!r} does not exist")
    raise InputError(f"source {s!r} is neither a directory, a manifest file nor a Lance table")


def _directory_source(p: Path) -> Source:
    root = p.resolve()
    uris = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            if os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                full = os.path.join(dirpath, fn)
                uris.append(Path(os.path.relpath(full, root)).as_posix())
    if not uris:
        raise InputError(f"no image files found under {p} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Source("directory", str(root), str(root), pa.table({"uri": pa.array(uris, pa.string())}))


def _manifest_source(p: Path, id_column: str | None, uri_column: str | None) -> Source:
    t = _read_manifest(p, id_column, uri_column)
    if t.num_rows == 0:
        raise InputError(f"manifest {p} has no rows")
    ucol = _pick_column(t.column_names, uri_column, _URI_COLUMNS, "image uri/path", f"manifest {p}")
    if id_column is None and "id" in t.column_names:
        id_column = "id"
    elif id_column is not None and id_column not in t.column_names:
        raise InputError(f"id column {id_column!r} is not in manifest {p} (columns: {', '.join(t.column_names)})")
    t = _normalise_columns(t)
    cols = {"uri": _to_string(t.column(ucol))}
    if id_column:
        cols["id"] = _to_string(t.column(id_column))
    for name in t.column_names:
        if name in (ucol, id_column):
            continue
        if name in IMAGE_COLUMNS:
            raise InputError(
                f"manifest column {name!r} collides with a column the table generates "
                f"({', '.join(IMAGE_COLUMNS)}); rename it"
            )
        cols[name] = t.column(name)
    return Source("manifest", str(p.resolve()), str(p.resolve().parent), pa.table(cols),
                  id_column="id" if id_column else None)


def _lance_source(ds, location: str, root: str, id_column, uri_column, image_column) -> Source:
    schema = ds.schema
    names = schema.names
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    bcol = None
    if image_column:
        if image_column not in names:
            raise InputError(f"image column {image_column!r} is not in {location} (columns: {', '.join(names)})")
        bcol = image_column
    else:
        lower = {n.lower(): n for n in binary}
        bcol = next((lower[c] for c in _IMAGE_BYTES_COLUMNS if c in lower), binary[0] if len(binary) == 1 else None)
    ucol = None
    if bcol is None:
        ucol = _pick_column(names, uri_column, _URI_COLUMNS, "image bytes or uri", f"Lance table {location}")
    elif uri_column or any(c in names for c in _URI_COLUMNS):
        ucol = uri_column or next(c for c in _URI_COLUMNS if c in names)
    if id_column is None and "id" in names:
        id_column = "id"
    elif id_column is not None and id_column not in names:
        raise InputError(f"id column {id_column!r} is not in {location} (columns: {', '.join(names)})")
    skip = set(IMAGE_COLUMNS[2:]) | {bcol}
    keep = [n for n in names if n not in skip and not pa.types.is_fixed_size_list(schema.field(n).type)]
    t = ds.to_table(columns=keep, with_row_id=False)
    t = _normalise_columns(t)
    n = t.num_rows
    if n == 0:
        raise InputError(f"Lance table {location} has no rows")
    if ucol:
        uri = _to_string(t.column(ucol))
    else:
        uri = pa.array([f"{location}#{i}" for i in range(n)], pa.string())
    cols = {"uri": uri}
    if id_column:
        cols["id"] = _to_string(t.column(id_column))
    for name in t.column_names:
        if name in (ucol, id_column) or name in IMAGE_COLUMNS:
            continue
        cols[name] = t.column(name)
    cols["_row"] = pa.array(np.arange(n, dtype=np.int64))
    src = Source("lance", location, root, pa.table(cols), id_column="id" if id_column else None)
    if bcol:
        src.bytes_dataset, src.bytes_column = ds, bcol
    return src


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
        raise ImageDecodeError(
            f"image too large: {exc} (decompression-bomb guard; raise the limit with --max-pixels)"
        ) from None
    except UnidentifiedImageError:
        head = data[:64]
        kind = "text, not an image" if _looks_like_text(head) else "not a recognised image format"
        raise ImageDecodeError(f"cannot identify image file ({kind})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error()) as exc:
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


def struct_error():
    import struct

    return struct.error


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head[:32])


def _read_location(root: str | None, uri: str) -> bytes:
    """Bytes of one image: a local path (relative to ``root``), file://, s3:// / gs:// (pyarrow fs), http(s)."""
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
        path = urllib.parse.unquote(parsed.path) if scheme == "file" else uri
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


class _Decoder:
    """Picklable decode + preprocess step, run in worker processes (or inline)."""

    def __init__(self, preprocess, root: str | None, max_pixels: int, draft: int | None, need_hash: bool):
        self.preprocess = preprocess
        self.root = root
        self.max_pixels = max_pixels
        self.draft = draft
        self.need_hash = need_hash

    def one(self, uri: str, data: bytes | None):
        """-> (content id or None, preprocessed array or None, error or None)"""
        digest = None
        try:
            if data is None:
                data = _read_location(self.root, uri)
            if self.need_hash:
                digest = hashlib.sha256(data).hexdigest()[:32]
            im = decode_image(data, max_pixels=self.max_pixels, draft=self.draft)
            try:
                x = self.preprocess(im)
            except Exception as exc:
                raise ImageDecodeError(f"preprocessing failed: {exc}") from None
            x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
            return digest, np.ascontiguousarray(x, dtype=np.float32), None
        except ImageDecodeError as exc:
            return digest, None, str(exc)

    def __call__(self, tasks):
        return [(i,) + self.one(uri, data) for i, uri, data in tasks]


_WORKER_DECODER: _Decoder | None = None


def _worker_init(decoder: _Decoder):
    global _WORKER_DECODER
    if "torch" in sys.modules:  # the preprocess transform is torch's: one thread per worker process
        sys.modules["torch"].set_num_threads(1)
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(decoder.max_pixels, 1)
    _WORKER_DECODER = decoder


def _noop():
    return None


def _worker_run(tasks):
    return _WORKER_DECODER(tasks)


# =========================================================================================== summary
@dataclass
class IngestSummary:
    """What an ingest run did. ``str()`` is the report the CLI prints; ``exit_code`` its exit status."""

    db: str
    table: str
    source: str
    total: int = 0  # source rows considered (after --limit)
    ok: int = 0  # rows written with status ok
    errors: int = 0  # rows written with status error
    skipped: int = 0  # already in the table
    duplicates: int = 0  # same id (or content) twice in this run
    seconds: float = 0.0
    rows_in_table: int = 0
    model: str = ""
    vocabulary: str | None = None
    error_examples: list = field(default_factory=list)  # (uri, message)
    error_kinds: dict = field(default_factory=dict)  # message prefix -> count
    concept_version: int | None = None
    notes: list = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.ok + self.errors

    @property
    def images_per_s(self) -> float:
        return self.attempted / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0: some image succeeded, or nothing new to do; 1: every attempted image failed."""
        return 0 if self.ok > 0 or self.errors == 0 else 1

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(images_per_s=self.images_per_s, exit_code=self.exit_code)
        return d

    def __str__(self) -> str:
        lines = [
            f"ingested {self.source} -> {self.db} (table {self.table!r})",
            f"  ok {self.ok}, error {self.errors}, skipped {self.skipped} (already in the table)"
            + (f", duplicates {self.duplicates}" if self.duplicates else "")
            + f" of {self.total} source rows in {self.seconds:.1f}s ({self.images_per_s:.1f} images/s)",
            f"  table now has {self.rows_in_table} rows; model {self.model}"
            + (f", vocabulary {self.vocabulary}" if self.vocabulary else ", no concepts (vocab=None)"),
        ]
        if self.errors:
            lines.append("  failed rows have status='error' and the reason in `error`:")
            for kind, n in sorted(self.error_kinds.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {n:6d}  {kind}")
            for uri, msg in self.error_examples[:5]:
                lines.append(f"    e.g. {uri}: {msg}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class DecomposeSummary:
    db: str
    table: str
    rows: int
    vocabulary: str
    l1_penalty: float
    concept_version: int
    seconds: float
    mean_l0: float
    mean_cosine: float
    postings: int

    @property
    def exit_code(self) -> int:
        return 0

    def __str__(self) -> str:
        return (
            f"decomposed {self.rows} stored embeddings of {self.db} (table {self.table!r}) over vocabulary "
            f"{self.vocabulary} at l1={self.l1_penalty:g} in {self.seconds:.1f}s: concept version "
            f"{self.concept_version}, mean l0 {self.mean_l0:.1f}, mean cosine {self.mean_cosine:.3f}, "
            f"{self.postings} postings"
        )


def _error_kind(msg: str) -> str:
    for sep in (":", " ("):
        if sep in msg:
            msg = msg.split(sep, 1)[0]
    return msg.strip()


# =========================================================================================== helpers
def _package_version() -> str:
    from . import __version__

    return __version__


def _resolve_encoder(model, pretrained, device, batch_size):
    if not isinstance(model, str):  # an encoder object (tests, notebooks)
        return model
    from .encoder import load_encoder

    return load_encoder(model, pretrained, device=device, batch_size=batch_size)


def _resolve_vocab(vocab):
    if vocab is None:
        return None
    from .vocabulary import load_vocabulary

    return load_vocabulary(vocab)


def _encoder_meta(enc) -> dict:
    d = {}
    if hasattr(enc, "describe"):
        try:
            d.update(enc.describe())
        except Exception:
            pass
    d.setdefault("model_name", getattr(enc, "model_name", type(enc).__name__))
    d.setdefault("pretrained", None if getattr(enc, "pretrained", None) is None else str(enc.pretrained))
    d.setdefault("model_fingerprint", getattr(enc, "fingerprint", None))
    d.setdefault("embed_dim", int(getattr(enc, "embed_dim")))
    return d


def _vocab_meta(vocab, l1, template) -> dict:
    if vocab is None:
        return {"vocabulary": None, "vocabulary_digest": None, "vocabulary_size": 0, "l1_penalty": None,
                "prompt_template": None}
    return {"vocabulary": vocab.name, "vocabulary_digest": vocab.digest, "vocabulary_size": len(vocab),
            "vocabulary_source": getattr(vocab, "source", None), "l1_penalty": float(l1),
            "prompt_template": template}


def _load_mean(image_mean, dim: int) -> np.ndarray | None:
    if image_mean is None or (isinstance(image_mean, str) and image_mean in ("estimate", "table")):
        return None
    if isinstance(image_mean, (str, os.PathLike)):
        try:
            m = np.load(os.fspath(image_mean))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image mean {image_mean!r}: {exc}") from None
    else:
        m = np.asarray(image_mean)
    m = np.asarray(m, dtype=np.float32).reshape(-1)
    if m.shape[0] != dim:
        raise InputError(f"image mean has dimension {m.shape[0]}, the model's embeddings {dim}")
    return m


def _estimate_mean(embeddings: np.ndarray) -> np.ndarray:
    X = np.asarray(embeddings, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (X / n).mean(0).astype(np.float32)


class _Concepts:
    """The vocabulary's dictionary + a SpliceDecomposer with a fixed image mean."""

    def __init__(self, text: np.ndarray, vocab, l1: float, mean: np.ndarray):
        from .splice import SpliceDecomposer

        self.vocab = vocab
        self.text = text
        self.dec = SpliceDecomposer(self.text, image_mean=np.asarray(mean, np.float32), l1_penalty=float(l1),
                                    concepts=list(vocab)).fit()

    def columns(self, emb: np.ndarray, ids: Sequence[str]):
        """-> (concept_ids ListArray, concept_weights ListArray, l0, cosine, postings table)"""
        import scipy.sparse as sp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: the weights are still feasible
            W = self.dec.decompose(emb)
            cos = np.asarray(self.dec.cosine(emb, W), dtype=np.float32).reshape(-1)
        W = sp.csr_matrix(W, dtype=np.float32)
        W.eliminate_zeros()
        indptr = W.indptr.astype(np.int64)
        counts = np.diff(indptr)
        rows = np.repeat(np.arange(W.shape[0]), counts)
        order = np.lexsort((-W.data, rows))  # by row, weight descending
        cids = W.indices[order].astype(np.int32)
        ws = W.data[order].astype(np.float32)
        off = pa.array(indptr.astype(np.int32))
        c_arr = pa.ListArray.from_arrays(off, pa.array(cids, pa.int32()))
        w_arr = pa.ListArray.from_arrays(off, pa.array(ws, pa.float32()))
        post = pa.table({
            "image_id": pa.array(np.asarray(ids, dtype=object)[rows], pa.string()) if len(rows) else
            pa.array([], pa.string()),
            "concept_id": pa.array(cids, pa.int32()),
            "weight": pa.array(ws, pa.float32()),
        })
        return c_arr, w_arr, counts.astype(np.int32), cos, post


def _fsl(emb: np.ndarray) -> pa.FixedSizeListArray:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])


# =========================================================================================== pipeline
@dataclass
class _Item:
    row: int  # source row
    uri: str
    id: str | None  # from the source, or None (content hash after reading)


def ingest(
    source,
    db,
    table: str = "images",
    model=DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    vocab="default",
    l1: float = 0.25,
    batch_size: int = 64,
    workers: int | None = None,
    limit: int | None = None,
    id_column: str | None = None,
    quiet: bool = False,
    *,
    uri_column: str | None = None,
    image_column: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    device: str = "auto",
    prompt_template: str | None = None,
    image_mean=None,
    mean_sample: int = 1024,
    retry_errors: bool = False,
    new_concept_version: bool = False,
    max_pixels: int | None = None,
    draft: bool = False,
    worker_type: str = "process",
    start_method: str | None = None,
    index_min_rows: int = 10_000,
    progress_file=None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    ray_gpus_per_actor: float | None = None,
    commit_every: int = 100_000,
    encoder_threads: int | None = None,
    rollup: bool | str = "auto",
    _faults: Mapping[str, Any] | None = None,
) -> IngestSummary:
    """Ingest ``source`` into table ``table`` of the LanceDB database ``db``; returns an :class:`IngestSummary`.

    Parameters
    ----------
    source : directory (recursive), manifest (.csv/.tsv/.parquet/.jsonl with a ``uri``/``path`` column
        relative to the manifest, any metadata columns), Lance dataset directory, or ``DB::TABLE``.
    db : LanceDB URI (local directory, ``s3://...``, ...); ``storage_options`` are passed to LanceDB.
    model, pretrained : open_clip architecture and weights (tag or local file), ``model="demo"`` for the
        offline demo model, or an encoder object with the :class:`~lance_concepts.encoder.ClipEncoder` API.
    vocab : vocabulary spec (``"default"``, ``"demo"``, a file, a Vocabulary) or ``None`` for embeddings only.
    l1 : SpLiCE l1 penalty. ``prompt_template`` optionally wraps concepts (``"a photo of {}"``).
    batch_size : images per encoder batch and per commit. ``workers``: decode processes (default:
        the CPU count, at most 8; 0 decodes inline). ``worker_type``: "process" or "thread";
        ``start_method`` of the processes (default fork on Linux, spawn elsewhere).
    limit : only the first ``limit`` source rows. ``id_column``: manifest column with stable ids
        (default ``id`` when present, else the SHA-256 of the file content).
    image_mean : SpLiCE image mean: None (the table's recorded mean; else the demo model's packaged
        reference mean for ``model="demo"``, or the mean of the first ``mean_sample`` images of the
        first run; recorded), a vector, or a ``.npy`` path.
    retry_errors : re-attempt rows that are in the table with status 'error'.
    new_concept_version : if the table was decomposed with another vocabulary / l1 / template, first
        recompute its concept columns with this run's settings (see :func:`decompose_table`).
    max_pixels : decompression-bomb limit (default Pillow's, about 89.5 megapixels).
    draft : let large images decode at reduced resolution (JPEG DCT scaling / box reduction, shorter side
        kept >= 2x the model input) before the model's own resize; faster on large photos, embeddings
        differ slightly from full decoding.
    index_min_rows : build / refresh the scalar indexes (LABEL_LIST on concept_ids, BTREE on id,
        BITMAP on the postings' concept_id) once the table has this many rows (None: never; small
        tables are scanned faster than indexed). ``lance-concepts index`` builds them on demand.
    engine : ``"local"`` (this machine: decode processes, one encoder) or ``"ray"``: the same per-batch
        work as Ray Data ``map_batches`` on an actor pool (one model per actor, GPU actors when the
        cluster has GPUs), rows written with lance-ray, one commit per ``commit_every`` rows (see
        :mod:`lance_concepts.distributed`). ``ray_address``: the cluster (``"auto"``, ``"ray://head:10001"``;
        default: the session already initialised in this process, else a local one). ``ray_actors``:
        actor count (default: one per GPU, else one per CPU); ``ray_gpus_per_actor`` (default 1 when the
        cluster has GPUs, else 0). ``workers`` and ``worker_type`` are local-engine settings.
    encoder_threads : torch intra-op threads for the encoder during this run (default: torch's, one per
        core). The decode processes share the cores with them: when decoding is the bottleneck (a
        tiny model such as the demo model on full-size photos), 1 is faster (+25% measured on 2
        cores, BENCHMARKS.md "Ingest throughput"); with a large model on the CPU keep the default.
    rollup : rebuild the report aggregates at the end (:mod:`lance_concepts.rollup`): ``"auto"`` (when the
        table has at most 2M rows or this run wrote at least 5% of it; else the summary says to run
        ``lance-concepts rollup``), ``True`` (always) or ``False``.
    """
    t_start = time.perf_counter()
    if encoder_threads is not None and (not isinstance(encoder_threads, int) or encoder_threads < 1):
        raise InputError(f"encoder_threads must be a positive integer, got {encoder_threads!r}")
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from .distributed import _require_ray

        _require_ray()
        if retry_errors:
            raise InputError("--retry-errors runs on the local engine only (it replaces rows in place)")
        if commit_every is None or int(commit_every) < 1:
            raise InputError("commit_every must be a positive integer")
    if batch_size is None or int(batch_size) < 1:
        raise InputError("batch_size must be a positive integer")
    batch_size = int(batch_size)
    if limit is not None and int(limit) < 0:
        raise InputError("limit must be >= 0")
    if worker_type not in ("process", "thread"):
        raise InputError("worker_type must be 'process' or 'thread'")
    if l1 is not None and not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 > 0):
        raise InputError(f"l1 must be a positive number, got {l1!r}")
    max_pixels = int(max_pixels) if max_pixels else PILLOW_MAX_PIXELS
    src = open_source(source, id_column=id_column, uri_column=uri_column, image_column=image_column,
                      storage_options=storage_options)
    n_total = len(src) if limit is None else min(len(src), int(limit))

    enc = _resolve_encoder(model, pretrained, device, batch_size)
    voc = _resolve_vocab(vocab)
    emeta = _encoder_meta(enc)
    dim = int(emeta["embed_dim"])
    ctab, ptab = companion_tables(table)
    meta = {
        **emeta,
        **_vocab_meta(voc, l1, prompt_template),
        "package_version": _package_version(),
        "concepts_table": ctab,
        "postings_table": ptab,
        "image_mean": None,
        "concept_version": 1 if voc is not None else 0,
        "id_source": f"source column {id_column or 'id'}" if src.id_column else "sha256 of the file content",
    }
    summary = IngestSummary(db=str(db), table=table, source=src.location, total=n_total,
                            model=f"{emeta['model_name']} ({emeta.get('pretrained')}, {emeta['model_fingerprint']})",
                            vocabulary=None if voc is None else f"{voc.name} ({len(voc)} concepts)")

    store = ImageStore(db, table, storage_options)
    existed = store.exists()
    if not existed:
        meta["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.create_or_open(images_schema(dim, src.metadata_fields, meta))
        store.postings  # noqa: B018  (create the postings table with the images table)
    else:
        store.create_or_open(images_schema(dim, src.metadata_fields))
    old = store.metadata()
    if old.get("created_at") != meta.get("created_at"):  # an existing table (or another process won the race)
        efield = store.schema.field("embedding") if "embedding" in store.schema.names else None
        if efield is not None and getattr(efield.type, "list_size", dim) != dim:
            raise InputError(f"table {table!r} holds {efield.type.list_size}-d embeddings; model "
                             f"{emeta['model_name']!r} gives {dim}-d. Use another table (--table NAME).")
        if store.count() > 0 and old:
            verdict = check_compatible(old, meta, table=table, allow_new_concept_version=new_concept_version)
            if verdict == "new-concepts":
                d = decompose_table(db, voc, l1, table=table, storage_options=storage_options, encoder=enc,
                                    prompt_template=prompt_template, image_mean=image_mean, quiet=quiet,
                                    engine=engine, ray_address=ray_address, ray_actors=ray_actors)
                summary.notes.append(f"existing rows re-decomposed as concept version {d.concept_version}")
                old = store.metadata()
            for k in ("image_mean", "image_mean_source", "concept_version", "concept_history", "created_at",
                      "sources"):
                if k in old:
                    meta[k] = old[k]
        elif old:  # an empty table (an earlier run died before its first commit): this run's settings win
            meta["created_at"] = old.get("created_at", meta.get("created_at"))
    summary.concept_version = meta.get("concept_version")

    # what is already there
    have = store.existing(["id", "uri", "status"])
    have_ids = dict(zip(have.column("id").to_pylist(), have.column("status").to_pylist())) if have.num_rows else {}
    have_uris = {}
    if have.num_rows and not src.id_column:
        have_uris = dict(zip(have.column("uri").to_pylist(), have.column("status").to_pylist()))

    def already(status) -> bool:
        return status is not None and not (retry_errors and status == "error")

    items: list[_Item] = []
    seen_ids: set[str] = set()
    uris = src.table.column("uri").to_pylist()[:n_total]
    ids = src.table.column("id").to_pylist()[:n_total] if src.id_column else [None] * n_total
    for i, (u, ident) in enumerate(zip(uris, ids)):
        if src.id_column:
            # an empty id falls back to one derived from the uri (stable across runs)
            ident = _uri_id(str(u)) if ident is None or str(ident).strip() == "" else str(ident)
            if already(have_ids.get(ident)):
                summary.skipped += 1
                continue
            if ident in seen_ids:
                summary.duplicates += 1
                continue
            seen_ids.add(ident)
        elif already(have_uris.get(u)):
            summary.skipped += 1
            continue
        items.append(_Item(i, "" if u is None else str(u), ident))

    reference_mean = None
    if image_mean is None and model == "demo" and meta.get("image_mean") is None:
        # The demo model ships its reference mean (2,000 random scenes), like the authors' MSCOCO
        # means: a mean estimated from a drifting collection shrinks the drifting concept's weights.
        from .demo_model import demo_image_mean

        image_mean = reference_mean = demo_image_mean()
    mean = _load_mean(image_mean, dim)
    if mean is not None and meta.get("image_mean") is not None and store.count() > 0 and \
            not np.allclose(mean, np.asarray(meta["image_mean"], np.float32), atol=1e-6):
        raise InputError(
            f"table {table!r} was decomposed with another image mean ({meta.get('image_mean_source')}); appending "
            "with this one would mix concept weights. Recompute the table first: lance-concepts decompose "
            "--image-mean FILE (Python: decompose_table(..., image_mean=...)), or leave image_mean unset."
        )
    if mean is None and meta.get("image_mean") is not None:
        mean = np.asarray(meta["image_mean"], dtype=np.float32)
    if mean is not None and meta.get("image_mean") is None:
        meta["image_mean"] = mean.tolist()
        meta["image_mean_source"] = ("the demo model's reference mean" if reference_mean is not None else
                                     "given" if image_mean is not None else meta.get("image_mean_source"))

    if not items:
        summary.seconds = time.perf_counter() - t_start
        summary.rows_in_table = store.count()
        if summary.total == 0:
            summary.notes.append("the source has no rows (limit 0?)")
        return summary

    text = None
    if voc is not None:  # the concept dictionary, before any image work (cached on disk by the vocabulary)
        text = np.asarray(voc.embed(enc, template=prompt_template), dtype=np.float32)
        if text.shape != (len(voc), dim):
            raise InputError(f"vocabulary embeddings have shape {text.shape}, expected {(len(voc), dim)}")
    decoder = _Decoder(enc.preprocess, src.root, max_pixels, (2 * int(getattr(enc, "image_size", 224))) if draft
                       else None, need_hash=not src.id_column)
    from PIL import Image

    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    recovering = False
    bar = None
    try:
        if engine == "ray":
            recovering = _ingest_ray(
                src, store, enc, items, decoder, model=model, pretrained=pretrained, device=device,
                batch_size=batch_size, voc=voc, text=text, l1=l1, meta=meta, mean=mean, mean_sample=mean_sample,
                summary=summary, ray_address=ray_address, ray_actors=ray_actors,
                ray_gpus_per_actor=ray_gpus_per_actor, commit_every=int(commit_every), quiet=quiet, faults=_faults)
        else:
            pipeline = _Pipeline(src, store, enc, voc, text, l1, meta, mean, mean_sample, batch_size, summary,
                                 retry_errors)
            n_workers = _default_workers() if workers is None else max(0, int(workers))
            if not quiet:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(items), unit="img", desc="ingest", dynamic_ncols=True, smoothing=0.1,
                           file=progress_file or sys.stderr, mininterval=0.5)
            pipeline.bar = bar
            pipeline.start_method = start_method
            threads_before = None
            if encoder_threads:
                import torch

                threads_before = torch.get_num_threads()
                torch.set_num_threads(int(encoder_threads))
            try:
                pipeline.run(items, decoder, n_workers, worker_type)
            finally:
                if threads_before is not None:
                    torch.set_num_threads(threads_before)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
        if bar is not None:
            bar.close()
    # record the source and finish: indexes, compaction
    final = store.metadata() or meta
    final = {**meta, **{k: v for k, v in final.items() if k in ("image_mean", "image_mean_source")}}
    hist = list(final.get("sources") or [])
    hist.append({"source": src.location, "kind": src.kind, "root": src.root,
                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "ok": summary.ok, "error": summary.errors})
    final["sources"] = hist[-50:]
    if src.root:
        final["image_root"] = src.root  # where relative uris of the latest source resolve (per source: "sources")
    store.write_metadata(final)
    removed = store.dedupe(postings=store.lock_path is None or recovering)
    if removed and engine == "ray" and not (store.lock_path is None or recovering):
        store.dedupe(postings=True)  # the postings of the duplicate rows (content ids seen twice in the run)
    if removed:
        summary.duplicates += removed
        summary.notes.append(f"removed {removed} duplicate rows left by a concurrent writer"
                             if engine == "local" else f"removed {removed} rows whose content was already there")
    if recovering:
        summary.notes.append("an earlier Ray ingest was interrupted: its postings were de-duplicated")
    try:
        with store.write_lock():
            _compact(store)
            if index_min_rows is not None and store.count() >= index_min_rows:
                store.ensure_indexes()
    except Exception as exc:  # indexes and compaction are optimisations: report, do not fail the run
        summary.notes.append(f"index/compaction step skipped ({str(exc)[:200]}); the data is complete, "
                             "the next run retries it")
    note = _refresh_rollup(store, summary.ok + summary.errors + summary.duplicates, rollup, quiet)
    if note:
        summary.notes.append(note)
    summary.seconds = time.perf_counter() - t_start
    summary.rows_in_table = store.count()
    return summary


def _default_start_method() -> str:
    """fork on Linux: workers start in milliseconds and a script calling ingest() needs no
    ``if __name__ == "__main__"`` guard (spawn and forkserver re-import the main module). Workers set
    torch to one thread, the pattern of torch's own DataLoader. spawn elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _default_workers() -> int:
    n = os.cpu_count() or 1
    return max(1, min(8, n))


#: Rebuilding the report aggregates is one pass over the table (~7 s per million rows on 2 cores):
#: ingest does it when the table is at most this large, or when the run wrote at least
#: ROLLUP_MIN_SHARE of it; otherwise it says so and ``lance-concepts rollup`` does it on demand.
ROLLUP_AUTO_ROWS = 2_000_000
ROLLUP_MIN_SHARE = 0.05


def _refresh_rollup(store: ImageStore, written: int | None = None, mode="auto", quiet: bool = True) -> str | None:
    """Rebuild the report aggregates (rollup.py) for the table as it now is. An optimisation like the
    indexes: a failure is reported, and the reports scan the images table meanwhile. ``written``: rows
    this run wrote (``mode="auto"`` skips a large table that barely changed)."""
    from .rollup import is_current, rollup, rollup_table_name
    from .store import _table_names

    if mode is False or mode == "off":
        return None
    try:
        rows = store.count()
        names = _table_names(store.conn)
        if not rows or store.concepts_name not in names:
            return None
        rname = rollup_table_name(store.name)
        if rname in names and is_current(store.refresh().table.to_lance(), store.conn.open_table(rname).to_lance()):
            return None
        if (mode == "auto" and written is not None and rows > ROLLUP_AUTO_ROWS
                and written < ROLLUP_MIN_SHARE * rows):
            return (f"report aggregates ({rollup_table_name(store.name)}) not rebuilt: this run changed "
                    f"{written:,} of {rows:,} rows; drift/spurious scan the table until `lance-concepts rollup`")
        rollup(store.conn, store.name, storage_options=store.storage_options, quiet=quiet)
    except Exception as exc:
        return f"report aggregates not rebuilt ({str(exc)[:200]}); `lance-concepts rollup` retries"
    return None


def _compact(store: ImageStore, min_fragments: int = 16) -> None:
    for tbl in (store.table, store.postings):
        try:
            nfrag = len(tbl.to_lance().get_fragments())
        except Exception:
            continue
        if nfrag >= min_fragments:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tbl.compact_files()
    store.refresh()


class _Pipeline:
    """decode (pool) -> encode (this thread) -> decompose + commit (writer thread)."""

    def __init__(self, src: Source, store: ImageStore, enc, voc, text, l1, meta: dict, mean, mean_sample: int,
                 batch_size: int, summary: IngestSummary, retry_errors: bool):
        self.src, self.store, self.enc, self.voc, self.text = src, store, enc, voc, text
        self.l1, self.meta = l1, meta
        self.mean = mean
        self.mean_sample = int(mean_sample)
        self.batch_size = batch_size
        self.summary = summary
        self.retry_errors = retry_errors
        self.bar = None
        self.start_method = None
        self.concepts: _Concepts | None = None
        self._held: list = []  # encoded batches waiting for the image mean
        self._held_n = 0
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._writer_exc: BaseException | None = None
        self._meta_written = False
        self._meta_cols = [f.name for f in src.metadata_fields]
        self._src_meta = src.table.select(self._meta_cols) if self._meta_cols else None

    # ---------------------------------------------------------------- decode side
    def _tasks(self, items: list[_Item]):
        return _decode_tasks(self.src, items)

    def run(self, items: list[_Item], decoder: _Decoder, n_workers: int, worker_type: str):
        writer = threading.Thread(target=self._writer, name="lance-concepts-writer", daemon=True)
        writer.start()
        chunk = max(1, min(16, self.batch_size // max(1, 2 * max(n_workers, 1))))
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        pool = None
        try:
            if n_workers > 0:
                pool = self._make_pool(decoder, n_workers, worker_type)
            pending: collections.deque = collections.deque()
            it = iter(chunks)
            max_inflight = max(2, 3 * max(n_workers, 1))

            def submit():
                try:
                    ch = next(it)
                except StopIteration:
                    return False
                tasks = self._tasks(ch)
                if pool is None:
                    pending.append((ch, tasks, None))
                else:
                    fn = _worker_run if worker_type == "process" else decoder
                    pending.append((ch, tasks, pool.submit(fn, tasks)))
                return True

            for _ in range(max_inflight):
                if not submit():
                    break
            buf_items, buf_x = [], []
            errs: list = []
            while pending:
                ch, tasks, fut = pending.popleft()
                if fut is None:
                    results = decoder(tasks)
                else:
                    try:
                        results = fut.result()
                    except Exception as exc:  # a worker died (e.g. a crash inside a decoder library)
                        pool = self._recover(pool, decoder, n_workers, worker_type, exc)
                        results, pool = self._retry_singly(pool, decoder, tasks, worker_type, n_workers)
                        pending = collections.deque(
                            (c, t, pool.submit(_worker_run if worker_type == "process" else decoder, t))
                            for c, t, _ in pending)
                submit()
                ok, xs, bad = split_decoded(ch, results)
                buf_items += ok
                buf_x += xs
                errs += bad
                while len(buf_items) >= self.batch_size:
                    self._encode_and_send(buf_items[:self.batch_size], buf_x[:self.batch_size], errs)
                    buf_items, buf_x, errs = buf_items[self.batch_size:], buf_x[self.batch_size:], []
                if len(errs) >= self.batch_size:
                    self._encode_and_send([], [], errs)
                    errs = []
                self._check_writer()
            if buf_items or errs:
                self._encode_and_send(buf_items, buf_x, errs)
            self._flush_held(final=True)
        finally:
            self._q.put(None)
            writer.join()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._check_writer()

    def _make_pool(self, decoder, n_workers, worker_type):
        if worker_type == "thread":
            return cf.ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="lance-concepts-decode")
        method = self.start_method or _default_start_method()
        pool = cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context(method),
                                      initializer=_worker_init, initargs=(decoder,))
        with warnings.catch_warnings():
            # pylance and lancedb warn on every fork. The workers only decode images and never touch
            # lance; forks happen when no lance operation is in flight (at start, and after the
            # writer has drained when a crashed pool is replaced).
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            warnings.filterwarnings("ignore", message="lancedb fork support")
            pool.submit(_noop).result()  # start the workers now, inside this filter
        return pool

    def _recover(self, pool, decoder, n_workers, worker_type, exc):
        try:
            pool.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
        if worker_type == "process":
            self._q.join()  # no lance operation in flight while we fork the new workers
        return self._make_pool(decoder, n_workers, worker_type)

    def _retry_singly(self, pool, decoder, tasks, worker_type, n_workers):
        """Re-run a chunk whose worker died one image at a time: only the culprit becomes an error row."""
        out = []
        for t in tasks:
            fn = _worker_run if worker_type == "process" else decoder
            try:
                out.extend(pool.submit(fn, [t]).result())
            except Exception as exc:
                out.append((t[0], None, None, f"decoder crashed on this image ({type(exc).__name__}: the "
                                              "worker process died while decoding it)"))
                pool = self._recover(pool, decoder, n_workers, worker_type, exc)
        return out, pool

    # ---------------------------------------------------------------- encode side
    def _encode_and_send(self, ok_items, xs, errs):
        ok_items, emb, errs2, dups = encode_batch(self.enc, ok_items, xs, errs, int(self.meta["embed_dim"]))
        self.summary.duplicates += dups
        work = (ok_items, emb, errs2)
        if self.voc is not None and self.mean is None:
            self._held.append(work)
            self._held_n += len(ok_items)
            if self._held_n >= self.mean_sample:
                self._flush_held()
            return
        self._send(work)

    def _flush_held(self, final: bool = False):
        if not self._held:
            return
        if self.mean is None:
            embs = [w[1] for w in self._held if w[1] is not None]
            if embs:
                allemb = np.concatenate(embs)
                self.mean = _estimate_mean(allemb)
                self.meta["image_mean"] = self.mean.tolist()
                self.meta["image_mean_source"] = f"estimated from the first {len(allemb)} images ingested"
            elif not final:
                return
        held, self._held, self._held_n = self._held, [], 0
        for w in held:
            self._send(w)

    def _send(self, work):
        while True:
            self._check_writer()
            try:
                self._q.put(work, timeout=0.5)
                return
            except queue.Full:
                continue

    def _check_writer(self):
        if self._writer_exc is not None:
            exc = self._writer_exc
            raise exc

    # ---------------------------------------------------------------- writer thread
    def _writer(self):
        try:
            while True:
                work = self._q.get()
                try:
                    if work is None:
                        return
                    if self._writer_exc is None:
                        self._write(*work)
                finally:
                    self._q.task_done()
        except BaseException as exc:  # handed to the main thread
            self._writer_exc = exc
            while True:  # drain so the producer never blocks
                try:
                    item = self._q.get(timeout=0.1)
                    self._q.task_done()
                    if item is None:
                        return
                except queue.Empty:
                    continue

    def _ensure_meta(self):
        if self._meta_written:
            return
        cur = self.store.metadata()
        want = {k: self.meta.get(k) for k in ("image_mean", "vocabulary_digest", "model_fingerprint", "l1_penalty")}
        have = {k: cur.get(k) for k in want}
        if have != want:
            self.store.write_metadata({**cur, **self.meta})
        self._meta_written = True

    def _write(self, ok_items, emb, errs):
        self._ensure_meta()
        if not self.src.id_column and (ok_items or errs):
            # content ids: the same file may already be in the table under another uri
            present = self.store.ids_present([i for _, i in ok_items] + [e[1] for e in errs])
            if present:
                keep = [j for j, (_, i) in enumerate(ok_items) if i not in present]
                self.summary.duplicates += len(ok_items) - len(keep)
                if not self.retry_errors:
                    self.summary.duplicates += sum(1 for e in errs if e[1] in present)
                if emb is not None:
                    emb = emb[keep]
                ok_items = [ok_items[j] for j in keep]
                if not self.retry_errors:  # (with retry_errors an error row is replaced by the new attempt)
                    errs = [e for e in errs if e[1] not in present]
                if not ok_items:
                    emb = None
        if self.voc is not None and self.concepts is None and ok_items:
            self.concepts = _Concepts(self.text, self.voc, self.l1, self.mean)
            if not _concepts_table_matches(self.store, self.voc.digest):
                self.store.write_concepts(list(self.voc), self.text, self.voc.name, self.meta)
        batch, postings = build_rows(ok_items, emb, errs, self.concepts if self.voc is not None else None,
                                     self._src_meta, int(self.meta["embed_dim"]))
        n_ok, n_err = len(ok_items), len(errs)
        n = n_ok + n_err
        res = self.store.write_batch(batch, postings, retry_errors=self.retry_errors)
        shortfall = n - (res["inserted"] + res["updated"])
        if shortfall > 0:  # another writer committed some of these ids first: they count as duplicates
            self.summary.duplicates += shortfall
        ok_w = max(0, n_ok - max(0, shortfall))
        err_w = max(0, n - max(0, shortfall) - ok_w)
        self.summary.ok += ok_w
        self.summary.errors += err_w
        err_written = errs[:err_w]
        if self.retry_errors and not self.src.id_column and n_ok:
            # content ids: a retried file that now decodes replaces its uri-keyed error row
            stale = [_error_id(it.uri) for it, _ in ok_items]
            lits = ",".join("'" + s.replace("'", "''") + "'" for s in stale)
            self.store.delete(f"status = 'error' AND id IN ({lits})")
        for item, _, msg in err_written:
            kind = _error_kind(msg)
            self.summary.error_kinds[kind] = self.summary.error_kinds.get(kind, 0) + 1
            if len(self.summary.error_examples) < 20:
                self.summary.error_examples.append((item.uri, msg))
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(ok=self.summary.ok, error=self.summary.errors, refresh=False)


# =========================================================================================== one batch
# The per-batch work of both engines. The local pipeline runs the three steps in a decode pool, the
# main thread and a writer thread; the Ray engine (lance_concepts.distributed) runs them one after
# the other in an actor per batch (process_batch). Same functions, same rows.
def split_decoded(items: Sequence[_Item], results) -> tuple[list, list, list]:
    """Decoder results of ``items`` -> (ok [(item, id)], preprocessed arrays, errors [(item, id, message)])."""
    ok, xs, errs = [], [], []
    for k, digest, x, err in results:
        item = items[k]
        if err is None:
            ok.append((item, item.id or digest))
            xs.append(x)
        else:
            errs.append((item, item.id or _error_id(item.uri), err))
    return ok, xs, errs


def encode_batch(enc, ok_items, xs, errs, dim: int):
    """Encode one batch. An id twice in the batch keeps its first image; error rows whose id is
    also an ok row or repeats are dropped. -> (ok_items, embeddings or None, errs, n_duplicates)"""
    dups = 0
    emb = None
    if ok_items:
        seen, keep = set(), []
        for j, (_, ident) in enumerate(ok_items):
            if ident in seen:
                dups += 1
            else:
                seen.add(ident)
                keep.append(j)
        if len(keep) < len(ok_items):
            ok_items = [ok_items[j] for j in keep]
            xs = [xs[j] for j in keep]
        import torch

        batch = torch.from_numpy(np.stack(xs))
        emb = np.asarray(enc.encode_images(batch), dtype=np.float32)
        if emb.shape != (len(ok_items), int(dim)):
            raise LanceConceptsError(f"encoder returned shape {emb.shape} for {len(ok_items)} images")
    okids = {ident for _, ident in ok_items}
    seen_e, errs2 = set(), []
    for e in errs:
        if e[1] in okids or e[1] in seen_e:
            dups += 1
            continue
        seen_e.add(e[1])
        errs2.append(e)
    return ok_items, emb, errs2, dups


def build_rows(ok_items, emb, errs, concepts: "_Concepts | None", src_meta: pa.Table | None, dim: int):
    """Rows of the images table for one encoded batch (ok rows first, then error rows), and their
    postings. ``src_meta``: the source's metadata columns, indexed by ``item.row``. ``concepts``:
    None for embeddings only (the concept columns are then left out: the store fills nulls)."""
    n_ok, n_err = len(ok_items), len(errs)
    ids = [ident for _, ident in ok_items] + [e[1] for e in errs]
    uris = [it.uri for it, _ in ok_items] + [e[0].uri for e in errs]
    rows = [it.row for it, _ in ok_items] + [e[0].row for e in errs]
    n = n_ok + n_err
    d = int(dim)
    cols = {"id": pa.array(ids, pa.string()), "uri": pa.array(uris, pa.string())}
    if src_meta is not None and src_meta.num_columns:
        sub = src_meta.take(pa.array(rows, pa.int64()))
        for name in src_meta.column_names:
            cols[name] = sub.column(name)
    emb_all = np.zeros((n, d), np.float32)
    if n_ok:
        emb_all[:n_ok] = emb
    valid = np.arange(n) < n_ok
    mask = pa.array(~valid)
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb_all.reshape(-1)), d, mask=mask)
    postings = None
    if concepts is not None and n_ok:
        c_arr, w_arr, l0, cos, postings = concepts.columns(emb, ids[:n_ok])
        cols["concept_ids"] = pa.concat_arrays([c_arr, pa.nulls(n_err, c_arr.type)])
        cols["concept_weights"] = pa.concat_arrays([w_arr, pa.nulls(n_err, w_arr.type)])
        cols["l0"] = pa.array(np.concatenate([l0, np.zeros(n_err, np.int32)]), pa.int32(), mask=~valid)
        cols["splice_cosine"] = pa.array(np.concatenate([cos, np.zeros(n_err, np.float32)]), pa.float32(),
                                         mask=~valid)
    cols["status"] = pa.array(["ok"] * n_ok + ["error"] * n_err, pa.string())
    cols["error"] = pa.array([None] * n_ok + [e[2] for e in errs], pa.string())
    return pa.table(cols), postings


def process_batch(items: Sequence[_Item], tasks, decoder: "_Decoder", enc, concepts: "_Concepts | None",
                  src_meta: pa.Table | None, dim: int):
    """decode -> encode -> decompose for one batch: the steps above in one call (the Ray engine's
    per-batch function). -> (rows, postings, n_duplicates)"""
    ok, xs, errs = split_decoded(items, decoder(tasks))
    ok, emb, errs, dups = encode_batch(enc, ok, xs, errs, dim)
    rows, postings = build_rows(ok, emb, errs, concepts, src_meta, dim)
    return rows, postings, dups


def postings_from_rows(batch) -> pa.Table:
    """The postings (image_id, concept_id, weight) of image rows with id, concept_ids, concept_weights."""
    cids = batch.column("concept_ids")
    counts = pa.compute.list_value_length(cids).fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(batch.num_rows), counts)
    return pa.table({"image_id": batch.column("id").take(pa.array(rows, pa.int64())),
                     "concept_id": pa.compute.list_flatten(cids),
                     "weight": pa.compute.list_flatten(batch.column("concept_weights"))})


def _decode_tasks(src: Source, items: Sequence[_Item]) -> list:
    """Decoder tasks (position, uri, bytes or None) of source items."""
    if src.bytes_dataset is not None:
        blobs = src.read_bytes([it.row for it in items])
        return [(k, it.uri, b if b is not None else b"") for k, (it, b) in enumerate(zip(items, blobs))]
    return [(k, it.uri, None) for k, it in enumerate(items)]


def _driver_mean(src: Source, enc, items: Sequence[_Item], decoder: _Decoder, mean_sample: int, batch_size: int,
                 dim: int):
    """The SpLiCE image mean from the first images, as the local pipeline estimates it (the first
    ``mean_sample`` ok images, rounded up to whole batches), computed on the driver. -> (mean, n)"""
    want = -(-int(mean_sample) // batch_size) * batch_size
    ok, xs = [], []
    for i in range(0, len(items), batch_size):
        ch = items[i:i + batch_size]
        o, x, _ = split_decoded(ch, decoder(_decode_tasks(src, ch)))
        ok += o
        xs += x
        if len(ok) >= want:
            break
    ok, xs = ok[:want], xs[:want]
    embs = []
    for i in range(0, len(ok), batch_size):
        _, emb, _, _ = encode_batch(enc, ok[i:i + batch_size], xs[i:i + batch_size], [], dim)
        if emb is not None:
            embs.append(emb)
    if not embs:
        return None, 0
    allemb = np.concatenate(embs)
    return _estimate_mean(allemb), len(allemb)


def _ingest_ray(src: Source, store: ImageStore, enc, items: list[_Item], decoder: _Decoder, *, model, pretrained,
                device, batch_size, voc, text, l1, meta, mean, mean_sample, summary: IngestSummary, ray_address,
                ray_actors, ray_gpus_per_actor, commit_every, quiet, faults) -> bool:
    """The driver side of ``engine="ray"``: the image mean, metadata, concepts table and schema as the
    local engine writes them, then the image work on Ray. Returns whether an interrupted Ray ingest
    was found (its postings need de-duplicating)."""
    from . import distributed

    dim = int(meta["embed_dim"])
    if voc is not None and mean is None:
        mean, n = _driver_mean(src, enc, items, decoder, mean_sample, batch_size, dim)
        if mean is not None:
            meta["image_mean"] = mean.tolist()
            meta["image_mean_source"] = f"estimated from the first {n} images ingested"
    old = store.metadata()
    recovering = bool(old.get("ingest_in_progress"))
    store.write_metadata({**old, **meta, "ingest_in_progress": {"engine": "ray", "started": _now()}})
    if voc is not None and mean is not None and not _concepts_table_matches(store, voc.digest):
        store.write_concepts(list(voc), text, voc.name, meta)
    meta_cols = [f.name for f in src.metadata_fields]
    if meta_cols:  # metadata columns this table does not have yet (added as in the local engine)
        store.align(src.table.select(meta_cols).slice(0, 0))
    encoder_spec = {"model": model if isinstance(model, str) else None,
                    "encoder": None if isinstance(model, str) else enc, "pretrained": pretrained, "device": device,
                    "batch_size": batch_size, "fingerprint": getattr(enc, "fingerprint", None), "dim": dim}
    decoder_spec = {"root": decoder.root, "max_pixels": decoder.max_pixels, "draft": decoder.draft,
                    "need_hash": decoder.need_hash}
    use_concepts = voc is not None and mean is not None
    with distributed.ray_session(ray_address):
        res = distributed.ingest_on_ray(
            items, src, store, encoder_spec=encoder_spec, text=text if use_concepts else None, vocab=voc, l1=l1,
            mean=mean, decoder_spec=decoder_spec, batch_size=batch_size, commit_every=commit_every,
            actors=ray_actors, gpus_per_actor=ray_gpus_per_actor, quiet=quiet, faults=faults)
    summary.ok += res.ok
    summary.errors += res.errors
    summary.duplicates += max(0, len(items) - res.ok - res.errors)  # the same id twice in one batch
    for k, v in res.error_kinds.items():
        summary.error_kinds[k] = summary.error_kinds.get(k, 0) + v
    summary.error_examples += res.error_examples[:max(0, 20 - len(summary.error_examples))]
    summary.notes.append(f"engine ray: {res.waves} commit(s) of at most {commit_every} rows")
    return recovering


def _concepts_table_matches(store: ImageStore, digest: str) -> bool:
    from .store import _decode_metadata, _table_names

    if store.concepts_name not in _table_names(store.conn):
        return False
    t = store.conn.open_table(store.concepts_name)
    return _decode_metadata(t.schema).get("vocabulary_digest") == digest and t.count_rows() > 0


def _uri_id(uri: str) -> str:
    """Id of a manifest row whose id cell is empty."""
    return "uri-" + hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:28]


def _error_id(uri: str) -> str:
    """Id of an error row when ids are content hashes and the content could not be read/decoded."""
    return "error-" + hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:26]


# =========================================================================================== decompose
def decompose_table(
    db,
    vocab,
    l1: float = 0.25,
    *,
    table: str = "images",
    model: str | None = None,
    pretrained: str | None = None,
    encoder=None,
    prompt_template: str | None = None,
    image_mean=None,
    storage_options: Mapping[str, str] | None = None,
    batch_size: int = 4096,
    device: str = "auto",
    quiet: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    _faults: Mapping[str, Any] | None = None,
) -> DecomposeSummary:
    """Recompute the concept columns of ``table`` from its stored embeddings (no image is re-encoded).

    The text embeddings of ``vocab`` come from the table's own model (``model``/``pretrained`` override
    where the recorded name cannot be loaded; the fingerprint must match). ``image_mean``: None keeps the
    table's recorded mean, ``"estimate"`` re-estimates it from all stored embeddings, or a vector/.npy.
    The images' concept columns are replaced in one commit, the concepts and postings tables are
    rewritten, and the metadata records the new concept version (earlier ones stay reachable through
    Lance table versions, listed in ``concept_history``).

    ``engine="ray"`` decomposes fragment by fragment on Ray actors and rewrites only the concept
    columns of each fragment (the embeddings are not rewritten), one commit for the table; the postings
    are rebuilt with lance-ray (:mod:`lance_concepts.distributed`). ``ray_address`` / ``ray_actors``
    as for :func:`ingest`.
    """
    t0 = time.perf_counter()
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from .distributed import _require_ray

        _require_ray()
    if not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 > 0):
        raise InputError(f"l1 must be a positive number, got {l1!r}")
    store = ImageStore(db, table, storage_options)
    if not store.exists():
        raise InputError(f"no table {table!r} in {db}")
    meta = store.metadata()
    if not meta:
        raise InputError(f"table {table!r} has no lance_concepts metadata: was it written by `lance-concepts ingest`?")
    voc = _resolve_vocab(vocab)
    if voc is None:
        raise InputError("decompose needs a vocabulary")
    if encoder is None:
        name = model or meta.get("model_name")
        pre = pretrained if model else meta.get("pretrained")
        encoder = _resolve_encoder(name, pre, device, 64)
    fp = getattr(encoder, "fingerprint", None)
    if meta.get("model_fingerprint") and fp != meta["model_fingerprint"]:
        raise InputError(
            f"the embeddings in {table!r} come from model fingerprint {meta['model_fingerprint']} "
            f"({meta.get('model_name')}, {meta.get('pretrained')}); the loaded model has {fp}. Pass the same "
            "model/pretrained the table was ingested with."
        )
    dim = int(meta.get("embed_dim") or encoder.embed_dim)
    ds = store.table.to_lance()
    mean = _load_mean(image_mean, dim)
    mean_source = "given" if mean is not None else meta.get("image_mean_source")
    if mean is None and image_mean != "estimate" and meta.get("image_mean") is not None:
        mean = np.asarray(meta["image_mean"], np.float32)
    if mean is None:  # estimate from every stored embedding (one streaming pass)
        s, cnt = np.zeros(dim, np.float64), 0
        for b in ds.to_batches(columns=["embedding"], filter="status = 'ok'", batch_size=batch_size):
            e = _emb_numpy(b.column(0), dim)
            nrm = np.linalg.norm(e, axis=1, keepdims=True)
            nrm[nrm == 0] = 1
            s += (e / nrm).sum(0)
            cnt += len(e)
        if cnt == 0:
            raise InputError(f"table {table!r} has no ok rows to decompose")
        mean = (s / cnt).astype(np.float32)
        mean_source = f"estimated from all {cnt} stored embeddings"
    text = np.asarray(voc.embed(encoder, template=prompt_template), dtype=np.float32)
    concepts = _Concepts(text, voc, l1, mean)
    old_version = int(meta.get("concept_version") or 0)
    lance_version = int(ds.version)
    pending = {**meta, "decompose_in_progress": {"vocabulary": voc.name, "vocabulary_digest": voc.digest,
                                                 "l1_penalty": float(l1), "started": _now()}}
    store.write_metadata(pending, tables=[table])
    if engine == "ray":
        from . import distributed

        with distributed.ray_session(ray_address):
            stats = distributed.decompose_on_ray(store, store.refresh().table.to_lance(), text=text, vocab=voc, l1=l1, mean=mean, dim=dim,
                                                 batch_size=batch_size, actors=ray_actors, quiet=quiet,
                                                 faults=_faults)
        n_post = stats["postings"]
    else:
        stats = {"rows": 0, "l0": 0.0, "cos": 0.0}
        n_ok = store.count("status = 'ok'")
        bar = None
        if not quiet:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_ok, unit="img", desc="decompose", dynamic_ncols=True, file=sys.stderr)

        def batches():
            for b in ds.to_batches(columns=["id", "embedding"], filter="status = 'ok'", batch_size=batch_size):
                if b.num_rows == 0:
                    continue
                e = _emb_numpy(b.column(1), dim)
                ids = b.column(0).to_pylist()
                c_arr, w_arr, l0, cos, _ = concepts.columns(e, ids)
                stats["rows"] += len(ids)
                stats["l0"] += float(l0.sum())
                stats["cos"] += float(cos.sum())
                if bar is not None:
                    bar.update(len(ids))
                yield pa.table({"id": b.column(0), "concept_ids": c_arr, "concept_weights": w_arr,
                                "l0": pa.array(l0, pa.int32()), "splice_cosine": pa.array(cos, pa.float32())})

        try:
            store.update_concept_columns(batches())
        finally:
            if bar is not None:
                bar.close()
        # postings from the updated table, concepts table, metadata
        new_ds = store.table.to_lance()

        def postings():
            for b in new_ds.to_batches(columns=["id", "concept_ids", "concept_weights"], filter="status = 'ok'",
                                       batch_size=batch_size):
                yield postings_from_rows(b)

        n_post = store.replace_postings(postings())
    history = list(meta.get("concept_history") or [])
    history.append({"concept_version": old_version, "vocabulary": meta.get("vocabulary"),
                    "vocabulary_digest": meta.get("vocabulary_digest"), "l1_penalty": meta.get("l1_penalty"),
                    "prompt_template": meta.get("prompt_template"), "lance_version": lance_version})
    new_meta = {k: v for k, v in meta.items() if k != "decompose_in_progress"}
    new_meta.update(_vocab_meta(voc, l1, prompt_template))
    new_meta.update(concept_version=old_version + 1, concept_history=history, image_mean=mean.tolist(),
                    image_mean_source=mean_source, package_version=_package_version())
    store.write_concepts(list(voc), concepts.text, voc.name, new_meta)
    store.write_metadata(new_meta)
    try:
        store.ensure_indexes(force=True)
    except Exception:
        pass
    _refresh_rollup(store, mode=True, quiet=quiet)
    rows = stats["rows"]
    return DecomposeSummary(db=str(db), table=table, rows=rows, vocabulary=f"{voc.name} ({len(voc)} concepts)",
                            l1_penalty=float(l1), concept_version=old_version + 1,
                            seconds=time.perf_counter() - t0, mean_l0=stats["l0"] / max(rows, 1),
                            mean_cosine=stats["cos"] / max(rows, 1), postings=n_post)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _emb_numpy(col, dim: int) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten() if col.offset == 0 and col.null_count == 0 else col.values.slice(col.offset * dim,
                                                                                          len(col) * dim)
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), dim)
