"""Rebuild every table derived from the images table: after deletes or updates done in plain
LanceDB (or an interrupted write) the postings, the report aggregates and the indexes may describe
rows that are gone. Readers already refuse stale postings and a stale rollup (and scan the images
table instead, slower); ``repair`` makes the fast paths answer again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import InputError


@dataclass
class RepairSummary:
    db: str
    table: str
    postings: int = 0
    postings_were_current: bool = True
    indexes: list = field(default_factory=list)
    rollup: str = ""
    seconds: float = 0.0

    def text(self) -> str:
        state = "were current" if self.postings_were_current else "were stale"
        return (f"repaired {self.table!r} in {self.db} in {self.seconds:.1f} s\n"
                f"  postings: rebuilt, {self.postings:,} rows (they {state})\n"
                f"  indexes: {', '.join(self.indexes) or 'up to date'}\n"
                f"  rollup: {self.rollup}")

    __str__ = text


def repair(db, table: str = "images", *, storage_options: Mapping[str, str] | None = None,
           quiet: bool = True) -> RepairSummary:
    """Rebuild the postings (from the images table as it is now), the scalar indexes and the report
    aggregates of ``table``. Safe to run any time; concurrent writers wait for the table's lock."""
    from .batch import postings_from_rows
    from .rollup import rollup
    from .store import ImageStore, check_db_writable, table_names

    t0 = time.perf_counter()
    store = ImageStore(db, table, storage_options)
    if not store.exists():
        raise InputError(f"no table {table!r} in {store.db_uri}")
    check_db_writable(store.db_uri, "repair")
    summary = RepairSummary(db=store.db_uri, table=table)
    with store.write_lock():  # no ingest batch may land between reading the rows and marking the postings
        summary.postings_were_current = store.postings_are_current()
        ds = store.refresh().table.to_lance()
        batches = (postings_from_rows(b) for b in
                   ds.to_batches(columns=["id", "concept_ids", "concept_weights"], filter="status = 'ok'"))
        summary.postings = store.replace_postings(batches)
    summary.indexes = store.ensure_indexes(force=True)
    if store.concepts_name in table_names(store.conn):
        summary.rollup = rollup(store.conn, table, storage_options=storage_options, quiet=quiet).text().splitlines()[0]
    else:
        summary.rollup = "skipped (no concepts table)"
    summary.seconds = time.perf_counter() - t0
    return summary
