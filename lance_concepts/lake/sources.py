"""Where images come from: a folder, a manifest (CSV / TSV / Parquet / JSONL) or an existing Lance table.

Each becomes one Arrow table of ``uri`` (+ optional ``id`` and image bytes) and metadata columns, so
the rest of ingest never needs to know which kind of source it was given.
"""
from __future__ import annotations

import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..errors import InputError
from .store import IMAGE_COLUMNS, normalise_metadata_field

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico .jp2 .j2k".split()
)
_URI_COLUMNS = ("uri", "path", "filepath", "file_path", "image_path", "filename", "file", "image_uri", "url")
_IMAGE_BYTES_COLUMNS = ("image", "image_bytes", "bytes", "data", "content", "img")
_TIME_NAME_HINTS = ("timestamp", "date", "time", "datetime", "created", "taken")


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
    skipped_files: int = 0  # non-image files a folder listing passed over

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
                image_column: str | None = None, storage_options: Mapping[str, str] | None = None,
                label_from: str | None = "parent") -> Source:
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
        return _directory_source(p, label_from)
    if p.is_file():
        return _manifest_source(p, id_column, uri_column)
    if not p.exists():
        raise InputError(f"source {s!r} does not exist")
    raise InputError(f"source {s!r} is neither a directory, a manifest file nor a Lance table")


SPLIT_FOLDERS = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})


def path_uri(root: str, full: str) -> str:
    """The uri of a file found under ``root``: its relative POSIX path when the name is valid UTF-8,
    else a ``file://`` URI of the absolute path with every byte outside the unreserved set
    percent-encoded (``urllib.parse.quote`` of ``os.fsencode(path)``): lossless, and
    :func:`~lance_concepts.lake.decode.read_location` opens it byte for byte."""
    rel = os.path.relpath(full, root)
    try:
        rel.encode("utf-8")
        return Path(rel).as_posix()
    except UnicodeEncodeError:  # a name in another encoding, decoded with surrogateescape by os.walk
        return "file://" + urllib.parse.quote(os.fsencode(os.path.abspath(full)))


def _text_name(name: str) -> str:
    """A folder name as text (percent-encoded bytes when it is not UTF-8)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return urllib.parse.quote(os.fsencode(name))


def _exif_taken_at(path: str) -> datetime | None:
    """EXIF DateTimeOriginal (UTC when OffsetTimeOriginal is present, else the camera's clock as is)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            ifd = im.getexif().get_ifd(0x8769)  # the Exif sub-IFD
    except Exception:  # not an image, broken EXIF: no capture time
        return None
    raw, offset = ifd.get(0x9003), ifd.get(0x9011)  # DateTimeOriginal, OffsetTimeOriginal
    try:
        d = datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except (TypeError, ValueError):
        return None
    if offset:
        try:
            d = datetime.strptime(f"{d:%Y-%m-%d %H:%M:%S}{str(offset).strip()}", "%Y-%m-%d %H:%M:%S%z")
            d = d.astimezone(timezone.utc).replace(tzinfo=None)
        except ValueError:
            pass
    return d


def _walk_images(root: Path) -> tuple[list[str], int]:
    """Image files under ``root`` (sorted, by extension) and the number of other files skipped."""
    found, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            if os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, fn))
            else:
                skipped += 1
    return found, skipped


def _directory_source(p: Path, label_from: str | None = "parent") -> Source:
    """A folder tree. ``label_from="parent"`` records the ImageFolder convention (``photos/dog/1.jpg``
    has label ``dog``; a top folder named train/val/test also gives a ``split`` column); every file
    gets ``modified_at`` (mtime, UTC) and ``taken_at`` (EXIF DateTimeOriginal) when any file has one."""
    if label_from not in ("parent", None):
        raise InputError(f"label_from must be 'parent' or None, got {label_from!r}")
    root = p.resolve()
    files, skipped = _walk_images(root)
    if not files:
        raise InputError(f"no image files found under {p} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}; "
                         f"{skipped} other files skipped)")
    cols: dict[str, pa.Array] = {"uri": pa.array([path_uri(str(root), f) for f in files], pa.string())}
    if label_from == "parent":
        parts = [Path(os.path.relpath(f, root)).parts[:-1] for f in files]
        labels = [_text_name(ps[-1]) if ps and ps[-1].lower() not in SPLIT_FOLDERS else None for ps in parts]
        if any(v is not None for v in labels):
            cols["label"] = pa.array(labels, pa.string())
        splits = [ps[0].lower() if ps and ps[0].lower() in SPLIT_FOLDERS else None for ps in parts]
        if any(v is not None for v in splits):
            cols["split"] = pa.array(splits, pa.string())
    taken = [_exif_taken_at(f) for f in files]
    if any(v is not None for v in taken):
        cols["taken_at"] = pa.array(taken, pa.timestamp("us"))
    cols["modified_at"] = pa.array([datetime.fromtimestamp(os.stat(f).st_mtime, timezone.utc).replace(tzinfo=None)
                                    for f in files], pa.timestamp("us"))
    src = Source("directory", str(root), str(root), pa.table(cols))
    src.skipped_files = skipped
    return src


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


def uri_id(uri: str) -> str:
    """Id of a manifest row whose id cell is empty."""
    return "uri-" + hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:28]


def error_id(uri: str) -> str:
    """Id of an error row when ids are content hashes and the content could not be read/decoded."""
    return "error-" + hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:26]
