"""``scratchllm <verb> ...``: the command line, thin over the library.

Each module in this package that defines ``register(subparsers)`` adds one
verb; its parser sets ``func`` to the function that runs it. A
:class:`~scratchllm.errors.ScratchError` (a user mistake) is printed as one
line and exits with status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import ScratchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="Language models from plain arithmetic up, every gradient written by hand in NumPy.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv=None) -> int:
    from ..backend import retain_freed_memory

    retain_freed_memory()  # the command owns its process: keep freed memory for the next step
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except ScratchError as e:
        print(f"scratchllm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
