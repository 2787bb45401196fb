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
    from lance_concepts.encoder import load_encoder

    return load_encoder("demo")
