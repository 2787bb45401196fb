"""What an ingest or decompose run did, counted for the user (the CLI prints it, Python returns it).
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
