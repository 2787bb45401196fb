"""The main job on the embedded default, offline: draw the demo world, ingest it, ask it questions.

Each answer is printed next to the truth planted by ``demo_world.generate_dataset``, so the demo
doubles as an end-to-end check a person can read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["demo", "DemoResult", "FILTER_THRESHOLD"]

#: Weight above which the demo reports an image as showing a concept. 0: SpLiCE's l1 penalty has
#: already decided what is present (a concept outside an image's sparse explanation weighs exactly
#: 0); on the demo world any positive 'red' weight has precision 1.0 (documented in the README).
FILTER_THRESHOLD = 0.0


@dataclass
class DemoResult:
    db: str
    manifest: Path
    ingest_summary: object = None
    sections: list = field(default_factory=list)  # (title, text) pairs
    metrics: dict = field(default_factory=dict)  # measured against the planted truth
    figures: list = field(default_factory=list)  # PNG plots and the HTML report
    results: dict = field(default_factory=dict)  # the DriftResult / SpuriousResult behind the sections

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
    from ..lake.ingest import ingest
    from . import world as demo_world

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
    make_searchable(db, say)
    truth = demo_world.read_manifest(manifest)
    _filter_section(result, db, truth)
    _drift_section(result, db, manifest)
    _spurious_section(result, db, truth)
    _figures(result, db, data_dir.parent)
    return result


def make_searchable(db, say: Callable[[str], None] = lambda s: None) -> None:
    """Index the demo table, so that the README's plain-LanceDB ``tbl.search("a red circle")`` works on
    a fresh demo database: the index records the model (LanceDB embeds the text) and the cosine metric
    (LanceDB ranks by cosine; the stored CLIP embeddings are not unit-length)."""
    from ..retrieval.index import index

    say(f"indexing {db} (vector search from plain LanceDB) ...")
    index(str(db))


def _figures(result: DemoResult, db, out_dir: Path) -> None:
    """The same answers as pictures: drift curves, per-label concepts, and one HTML report."""
    from ..errors import InputError
    from ..query.html import report

    try:
        result.results["drift"].plot(out_dir / "demo-drift.png")
        result.results["spurious"].plot(out_dir / "demo-spurious.png")
        report(db, out_dir / "demo-report.html", split_column="split")
    except InputError as exc:  # matplotlib missing: the text answers above still stand
        result.add("figures", f"skipped: {exc}")
        return
    result.figures = [out_dir / "demo-drift.png", out_dir / "demo-spurious.png", out_dir / "demo-report.html"]
    result.add("figures", "\n".join(str(p) for p in result.figures))


def _filter_section(result: DemoResult, db, truth: list[dict], concept: str = "red",
                    threshold: float = FILTER_THRESHOLD) -> None:
    from ..query.filter import filter as concept_filter

    found = set(concept_filter(db, concept, threshold, columns=("uri",)).column("id").to_pylist())
    planted = {r["id"] for r in truth if r["colour"] == concept}
    hit = len(found & planted)
    precision = hit / len(found) if found else float("nan")
    recall = hit / len(planted) if planted else float("nan")
    result.metrics.update(filter_precision=precision, filter_recall=recall)
    result.add(f"filter: images where concept '{concept}' > {threshold}",
               f"{len(found)} images found, {len(planted)} are {concept} in truth: "
               f"precision {precision:.2f}, recall {recall:.2f}")


def _drift_section(result: DemoResult, db, manifest: Path) -> None:
    import json

    import numpy as np

    from ..query.drift import drift

    res = drift(db, time_column="timestamp", every="month", concepts=["red", "grass"])
    result.results["drift"] = res
    planted = json.loads((manifest.parent / "world.json").read_text())["drift_share_by_month"]
    rows = sorted((r for r in res.records() if r["concept"] == "red"), key=lambda r: r["window"])
    measured = [r["prevalence"] for r in rows]
    corr = float(np.corrcoef(measured, planted[:len(measured)])[0, 1]) if len(measured) > 2 else float("nan")
    result.metrics.update(drift_correlation=corr, drift_alerts=[a["concept"] for a in res.alerts])
    lines = ["month    planted red  measured 'red' prevalence"]
    lines += [f"{r['window']:<8} {p:>10.0%}  {m:>10.0%}" for r, p, m in zip(rows, planted, measured)]
    lines.append(f"correlation with the planted share: {corr:.3f}")
    full = drift(db, time_column="timestamp", every="month")
    lines.append("drift alerts at default settings: "
                 + (", ".join(sorted({a["concept"] for a in full.alerts})) or "none") + "  (planted: red)")
    result.add("drift: monthly prevalence of 'red' (planted 10% -> 70%)", "\n".join(lines))


def _spurious_section(result: DemoResult, db, truth: list[dict]) -> None:
    from ..query.spurious import spurious

    res = spurious(db, label_column="label", split_column="split")
    result.results["spurious"] = res
    by_label: dict = {}
    for r in res.table.to_pylist():  # over-represented rows (split shifts are separate)
        by_label.setdefault(r["label"], []).append(r["concept"])
    result.metrics.update(spurious_top_circle=(by_label.get("circle") or [None])[0])
    grass = {lab: sum(1 for r in truth if r["label"] == lab and r["background"] == "grass") /
             max(1, sum(1 for r in truth if r["label"] == lab)) for lab in ("circle", "square")}
    lines = [f"planted: {grass['circle']:.0%} of circles and {grass['square']:.0%} of squares are on grass", "",
             res.summary()]
    result.add("spurious: concepts tied to the class label", "\n".join(lines))
