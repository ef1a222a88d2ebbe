"""The allocator setting made at import, and its opt-out."""
import os
import platform
import subprocess
import sys

import pytest

CODE = "from scratchllm.backend import MALLOC_TUNED; print(MALLOC_TUNED)"


def tuned(env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHLLM_MALLOC"}
    if env_value is not None:
        env["SCRATCHLLM_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_malloc_tuned_on_glibc():
    assert tuned() == "True"


def test_opt_out():
    assert tuned("default") == "False"
