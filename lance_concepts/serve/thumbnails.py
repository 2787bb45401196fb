"""Thumbnails made once and kept as JPEG files next to the database, keyed by image id and size.

Only images the table references are ever read: a request names an image *id*, its uri comes from
the table, and a local uri must resolve (symlinks followed) inside one of the roots the table was
ingested from. Object-store and http uris are read the way ingest reads them.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import urllib.parse
from pathlib import Path

from ..errors import InputError
from ..lake.decode import read_location

SIZES = (96, 160, 256, 512)


class UnsafePathError(InputError):
    """A table uri that points outside the image roots (traversal, absolute path, symlink out)."""


def cache_dir_for(db: str, table: str) -> Path:
    """``<db>.thumbs/<table>`` when the db's parent is writable, else a per-user temp directory."""
    db_path = Path(str(db)).expanduser().resolve()
    preferred = db_path.parent / f"{db_path.name}.thumbs" / table
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    digest = hashlib.sha1(str(db_path).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / "lance-concepts-thumbs" / digest / table
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def safe_local_path(uri: str, roots: list[str]) -> str:
    """The real path of a local ``uri`` if it lies inside one of ``roots``; UnsafePathError otherwise."""
    parsed = urllib.parse.urlparse(uri)
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri
    real_roots = [os.path.realpath(r) for r in roots if r]
    if not real_roots:
        raise UnsafePathError(f"no image root recorded for the table; not serving local file {uri!r}")
    if os.path.isabs(path) or parsed.scheme == "file":
        candidates = [os.path.realpath(path)]
    else:
        candidates = [os.path.realpath(os.path.join(r, path)) for r in real_roots]
    for cand, root in ((c, r) for c in candidates for r in real_roots):
        if os.path.commonpath([cand, root]) == root:
            return cand
    raise UnsafePathError(f"image uri {uri!r} points outside the image root(s); refused")


def is_remote(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    return len(scheme) > 1 and scheme != "file"


def read_image_bytes(uri: str, roots: list[str]) -> bytes:
    if is_remote(uri):
        return read_location(None, uri)
    return read_location(None, safe_local_path(uri, roots))


class ThumbnailCache:
    """JPEG thumbnails on disk; ``get`` makes a missing one, ``warm`` makes many in a background thread."""

    def __init__(self, directory, roots: list[str], quality: int = 82):
        self.directory = Path(directory)
        self.roots = list(roots)
        self.quality = quality
        self._stop = threading.Event()
        self._thread = None
        self.made = 0

    def path(self, image_id: str, size: int) -> Path:
        key = hashlib.sha1(str(image_id).encode()).hexdigest()
        return self.directory / str(size) / key[:2] / f"{key}.jpg"

    def get(self, image_id: str, uri: str, size: int) -> Path:
        if size not in SIZES:
            raise InputError(f"size must be one of {', '.join(map(str, SIZES))}, got {size!r}")
        target = self.path(image_id, size)
        if not target.exists():
            self.make(uri, size, target)
        return target

    def make(self, uri: str, size: int, target: Path) -> None:
        from PIL import Image

        data = read_image_bytes(uri, self.roots)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (size, size))
                im = im.convert("RGB")
                im.thumbnail((size, size))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=self.quality)
        except Exception as exc:  # PIL raises many types for undecodable files
            raise InputError(f"cannot decode image {uri!r}: {exc}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
        self.made += 1

    def warm(self, rows, size: int = 160) -> threading.Thread:
        """Make the thumbnails of ``rows`` ((id, uri) pairs, any iterable) in a daemon thread; bad
        images are skipped (the grid shows their error when asked)."""
        def work():
            for image_id, uri in rows:
                if self._stop.is_set():
                    return
                target = self.path(image_id, size)
                if target.exists():
                    continue
                try:
                    self.make(uri, size, target)
                except Exception:  # noqa: BLE001 (one bad image must not stop the warm-up)
                    continue
        self._thread = threading.Thread(target=work, name="thumbnail-warmup", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
