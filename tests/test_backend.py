"""The allocator setting: never made by ``import scratchllm``; made by the
command line (which owns its process) and by ``retain_freed_memory()`` for a
library user who asks; ``SCRATCHLLM_MALLOC=default`` opts out of both."""
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                           reason="glibc only")

# Whether glibc serves a 24 MiB block by mmap (its default: above 128 KiB,
# adapting up to the largest block freed so far) or from the heap (the raised
# threshold, 32 MiB): mallinfo's hblks counts the mmapped blocks in use.
PROBE = """
import ctypes
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(24 << 20)
mmapped = libc.mallinfo2().hblks > before
libc.free(ctypes.c_void_p(block))
from scratchllm import backend
print(mmapped, backend.MALLOC_TUNED)
"""


def run(setup: str, env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHLLM_MALLOC"}
    if env_value is not None:
        env["SCRATCHLLM_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", setup + PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()[-2:]


@glibc
def test_import_leaves_malloc_alone():
    setup = "import scratchllm, scratchllm.functional, scratchllm.models, scratchllm.train, scratchllm.sharded\n"
    assert run(setup) == ["True", "False"]  # the block is mmapped, as glibc does by default


@glibc
def test_opt_in_keeps_large_blocks_in_the_heap():
    assert run("from scratchllm.backend import retain_freed_memory\nassert retain_freed_memory()\n") == ["False", "True"]


@glibc
def test_the_command_line_applies_it():
    setup = "from scratchllm.cli import main\nmain([])\n"  # no verb: prints the help
    assert run(setup) == ["False", "True"]


def test_opt_out():
    assert run("from scratchllm.backend import retain_freed_memory\nassert not retain_freed_memory()\n"
               "from scratchllm.cli import main\nmain([])\n", "default")[1] == "False"
