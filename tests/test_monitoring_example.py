"""examples/monitoring.py: the daily ingest + check loop flags the planted snow shift on the day it
starts and on no day before (a shortened schedule: the loop is the same for a full year)."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import lance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from monitoring import first_alarm  # noqa: E402


def test_the_shift_is_flagged_on_its_day_and_not_before(tmp_path):
    db = str(tmp_path / "m.lancedb")
    shift = dt.date(2024, 9, 1)
    day, res = first_alarm(db, dt.date(2024, 7, 20), 50, 150, shift, seed=3, verbose=False)
    assert day == shift
    bad = res.failed
    assert [o.name for o in bad] == ["snow stable"]
    assert "snow" in bad[0].measured
    t = lance.dataset(f"{db}/images.lance").to_table(columns=["id", "timestamp", "concept_ids"]).to_pylist()
    by_id = {r["id"]: r for r in t}
    assert bad[0].images and all(0 in by_id[i["id"]]["concept_ids"] and by_id[i["id"]]["timestamp"].date() == shift
                                 for i in bad[0].images)
    # compaction ran along the way (as ingest does) and the aggregates stayed usable
    assert len(lance.dataset(f"{db}/images.lance").get_fragments()) < 16
