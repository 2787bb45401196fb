"""The main job end to end on the demo world: what it reports matches the planted truth."""
import pytest

from lance_concepts.demo.job import FILTER_THRESHOLD, demo


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return demo(db=str(root / "demo.lancedb"), n_images=360, data_dir=root / "world", seed=3, quiet=True)


def test_ingest_has_every_image(result):
    assert result.ingest_summary.ok == 360 and result.ingest_summary.errors == 0


def test_filter_finds_the_red_images(result):
    assert FILTER_THRESHOLD >= 0
    assert result.metrics["filter_precision"] >= 0.9
    assert result.metrics["filter_recall"] >= 0.9


def test_drift_tracks_the_planted_share_and_alerts_only_on_red(result):
    assert result.metrics["drift_correlation"] >= 0.95
    assert set(result.metrics["drift_alerts"]) == {"red"}


def test_spurious_grass_for_circles(result):
    assert result.metrics["spurious_top_circle"] == "grass"
    text = result.summary()
    circle_line = next(line for line in text.splitlines() if line.strip().startswith("circle:"))
    assert "circle (" not in circle_line  # the label's own name is never reported


def test_rerun_is_idempotent(result, tmp_path_factory):
    again = demo(db=result.db, n_images=360, data_dir=result.manifest.parent, quiet=True)
    assert again.ingest_summary.ok == 0 and again.ingest_summary.skipped == 360


def test_figures_and_report_are_written(result):
    assert [p.suffix for p in result.figures] == [".png", ".png", ".html"]
    for p in result.figures:
        assert p.stat().st_size > 10_000
    html = result.figures[-1].read_text()
    assert "data:image/png;base64," in html and "red" in html


def test_drift_plot_of_chosen_concepts_when_alerts_name_others(result, tmp_path):
    """Alerts are computed over every concept; a plot of other chosen concepts must still draw."""
    from lance_concepts.query.drift import drift

    res = drift(result.db, "timestamp", "month", concepts=["grass"])
    assert {a["concept"] for a in res.alerts} - {"grass"}  # red alerts, but only grass is tabled
    res.plot(tmp_path / "grass.png")
    assert (tmp_path / "grass.png").stat().st_size > 10_000
