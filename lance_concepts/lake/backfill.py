"""Quality columns (and ``content_sha256``) for tables ingested before they existed.

Reads every image once more (the table stores uris, not pixels), computes :mod:`.quality`, and adds
the columns with Lance's merge (a new table version; no row is rewritten by hand). An image that can
no longer be read gets nulls and is counted, never a crash of the whole backfill.
"""
from __future__ import annotations

from typing import Mapping

import pyarrow as pa

from .decode import ImageDecodeError, decode_image, read_location
from .quality import QUALITY_COLUMNS, content_sha256, image_quality, quality_table


def backfill_quality(db, table: str = "images", *, root: str | None = None, force: bool = False,
                     storage_options: Mapping[str, str] | None = None) -> dict:
    """Add the quality columns and ``content_sha256`` where the table lacks them.

    ``root``: folder relative uris are read from (default: as recorded, or the working directory).
    ``force``: recompute columns that exist. -> {'rows', 'failed', 'added': [column names]}"""
    from ..errors import InputError
    from .store import ImageStore, read_metadata

    store = ImageStore(db, table, storage_options)
    if not store.exists():
        raise InputError(f"no table {table!r} in {db}")
    have = set(store.schema.names)
    want = [c for c in (*QUALITY_COLUMNS, "content_sha256") if force or c not in have]
    if not want:
        return {"rows": 0, "failed": 0, "added": []}
    root = root or read_metadata(db, table, storage_options).get("image_root")
    ds = store.table.to_lance()
    ids, quality, sha, failed = [], [], [], 0
    for b in ds.to_batches(columns=["id", "uri"], batch_size=256):
        for ident, uri in zip(b.column("id").to_pylist(), b.column("uri").to_pylist()):
            q = h = None
            try:
                data = read_location(root, uri)
                h = content_sha256(data)
                q = image_quality(data, decode_image(data))
            except ImageDecodeError:
                failed += 1
            ids.append(ident)
            quality.append(q)
            sha.append(h)
    new = quality_table(quality).append_column("content_sha256", pa.array(sha, pa.string()))
    new = new.select([c for c in new.column_names if c in want]).add_column(0, "id", pa.array(ids, pa.string()))
    drop = [c for c in want if c in have]
    if drop:
        ds.drop_columns(drop)
    ds.merge(new, left_on="id")
    return {"rows": len(ids), "failed": failed, "added": want}
