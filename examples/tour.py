"""The README tour in Python, on the offline demo world (run: .venv/bin/python examples/tour.py [DIR]).

Draws the demo world, ingests it with the demo model, then asks the questions the product is for:
which images show a concept, how concept prevalence drifts, which concepts are tied to a label,
concept-filtered search, and removing a concept from the embeddings. Figures and an HTML report
are written next to the database.
"""
import sys
from pathlib import Path

import lance_concepts as lc
from lance_concepts.demo import world as demo_world

root = Path(sys.argv[1] if len(sys.argv) > 1 else "tour-out")
db = str(root / "tour.lancedb")

manifest = demo_world.generate_dataset(root / "world", n=480, seed=1)
print(lc.ingest(str(manifest), db, model="demo", vocab="demo"))

red = lc.filter(db, "red", 0.0, columns=["uri", "colour"])
print(f"\n{red.num_rows} images show 'red'; their true colours:",
      sorted(set(red.column("colour").to_pylist())))

drift = lc.drift(db, "timestamp", "month", concepts=["red", "grass"])
print("\n" + drift.summary())
drift.plot(root / "drift.png")

spurious = lc.spurious(db, "label", "split")
print("\n" + spurious.summary())
spurious.plot(root / "spurious.png")

con = lc.connect(db)
n_grass = con.execute("SELECT count(*) FROM images WHERE concept_weight(images, 'grass') > 0.2").fetchone()[0]
print(f"\nSQL: {n_grass} images with grass weight above 0.2")

hits = lc.search(db, "a photo of a star", where="concept('sand') > 0.1", k=5)
print("\nstars on sand:", hits.select(["uri", "shape", "background", "score"]).to_pylist())

report = lc.edit(db, ["red"], "without_red", labels_columns=["colour"], prompts="a photo of a {} shape")
print("\n" + str(report))

lc.report(db, root / "report.html")
print(f"\nfigures and report in {root}/")
