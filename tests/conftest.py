import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LANCE_CONCEPTS_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The workplace's ../shared folder (reference vocabularies, real photos); tests skip without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the embedding cache of a test run out of the user's home."""
    os.environ["LANCE_CONCEPTS_CACHE"] = str(tmp_path_factory.mktemp("lc-cache"))
    yield


@pytest.fixture(scope="session")
def demo_encoder():
    from lance_concepts.models.encoder import load_encoder

    return load_encoder("demo")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) for the whole test session, shut down at its end."""
    pytest.importorskip("ray")
    pytest.importorskip("lance_ray")
    import ray

    from lance_concepts.lake.engines.ray import init_local

    if ray.is_initialized():  # pragma: no cover - someone else's session
        yield
        return
    init_local(num_cpus=2)
    yield
    ray.shutdown()
