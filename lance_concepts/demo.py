"""The main job on the embedded default, offline: draw the demo world, ingest it, ask it questions.

Each answer is printed next to the truth planted by ``demo_world.generate_dataset``, so the demo
doubles as an end-to-end check a person can read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["demo", "DemoResult"]


@dataclass
class DemoResult:
    db: str
    manifest: Path
    ingest_summary: object = None
    sections: list = field(default_factory=list)  # (title, text) pairs

    def add(self, title: str, text: str) -> None:
        self.sections.append((title, text))

    def summary(self) -> str:
        lines = [f"demo database: {self.db}", f"demo images:   {self.manifest.parent}"]
        for title, text in self.sections:
            lines += ["", f"== {title} ==", text.rstrip()]
        return "\n".join(lines)


def demo(db: str = "demo.lancedb", n_images: int = 600, data_dir=None, seed: int = 0, quiet: bool = False,
         echo: Callable[[str], None] | None = None) -> DemoResult:
    """Generate the demo world, ingest it with the demo model and run the concept queries on it."""
    from . import demo_world
    from .ingest import ingest

    say = echo or (lambda s: None)
    data_dir = Path(data_dir) if data_dir else Path(str(db)).with_suffix("").parent / "demo-data"
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        say(f"drawing {n_images} demo-world images into {data_dir} ...")
        manifest = demo_world.generate_dataset(data_dir, n=n_images, seed=seed)
    result = DemoResult(db=str(db), manifest=manifest)
    say(f"ingesting {manifest} into {db} with the demo model ...")
    result.ingest_summary = ingest(str(manifest), str(db), model="demo", vocab="demo", quiet=quiet)
    result.add("ingest", str(result.ingest_summary))
    return result
