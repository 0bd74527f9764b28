"""Shared test fixtures."""


# --- the embedded model and the sample photos (tests/test_models.py, tests/test_cli.py) -------

from pathlib import Path as _Path  # noqa: E402

import pytest as _pytest  # noqa: E402

SAMPLE_IMAGES = _Path(__file__).resolve().parents[1] / "sample_images"


@_pytest.fixture(scope="session")
def sample_images() -> _Path:
    """The folder of sample photos shipped with the repository."""
    return SAMPLE_IMAGES


@_pytest.fixture(scope="session")
def lite0():
    """The embedded EfficientNet-Lite0, loaded once per session (offline, ~1 s).

    Shared: tests must not modify it (deep-copy it before ``engine.prepare_model``).
    """
    from smoothgrad_cli.models import load_model

    return load_model()


# --- the chunk-size cache (smoothgrad_cli/tuning.py) -----------------------------------------


@_pytest.fixture(scope="session", autouse=True)
def _chunk_size_cache(tmp_path_factory):
    """Every run in the tests, in-process or a subprocess, caches its chunk-size probe in a
    temporary folder, never in the user's ~/.cache (one probe per model and size a session)."""
    import os

    folder = tmp_path_factory.mktemp("smoothgrad-cache")
    before = os.environ.get("SMOOTHGRAD_CACHE_DIR")
    os.environ["SMOOTHGRAD_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SMOOTHGRAD_CACHE_DIR", None)
    else:
        os.environ["SMOOTHGRAD_CACHE_DIR"] = before
