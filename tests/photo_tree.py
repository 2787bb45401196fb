"""Build a plain photo folder tree for tests: class folders (ImageFolder convention) and EXIF capture times.

``build_photo_tree(src_dir, out_dir)`` copies JPEGs into ``out/<split>/<class>/<name>.jpg`` with an
EXIF DateTimeOriginal (+ OffsetTimeOriginal) spread over a year, the way a camera writes them. Used
by the README-tour test on ``../shared/datasets/imagenet-sample`` (never committed: only this script).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image

DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL, EXIF_IFD = 0x9003, 0x9011, 0x8769


def write_with_exif(im: Image.Image, path: Path, taken: datetime | None, offset: str | None = "+02:00") -> None:
    """Save ``im`` as JPEG with a capture time (and its UTC offset) in the Exif sub-IFD."""
    exif = Image.Exif()
    if taken is not None:
        ifd = exif.get_ifd(EXIF_IFD)
        ifd[DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
        if offset:
            ifd[OFFSET_TIME_ORIGINAL] = offset
    path.parent.mkdir(parents=True, exist_ok=True)
    im.convert("RGB").save(path, "JPEG", quality=90, exif=exif)


def build_photo_tree(src_dir, out_dir, *, n: int = 60, classes: int = 3, start=datetime(2024, 1, 1, 12)) -> dict:
    """-> {relative path: (label, split, taken_at as written)} for the ``n`` photos written."""
    files = sorted(Path(src_dir).glob("*.JPEG"))[:n]
    truth = {}
    for i, f in enumerate(files):
        label = f"class{i % classes}"
        split = "test" if i % 5 == 0 else "train"
        taken = start + timedelta(days=(i * 365) // max(1, len(files)))
        rel = Path(split) / label / (f.stem + ".jpg")
        with Image.open(f) as im:
            im.thumbnail((320, 320))
            write_with_exif(im, Path(out_dir) / rel, taken)
        truth[rel.as_posix()] = (label, split, taken)
    return truth
