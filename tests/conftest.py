import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The public data files for tests: $SCRATCHLLM_DATA_DIR or ../shared/data."""
    env = os.environ.get("SCRATCHLLM_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture
def shared_data():
    """Path to ../shared/data; tests that need it skip with a reason when it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data not found: set SCRATCHLLM_DATA_DIR or place it at ../shared/data")
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(0)
