"""``scratchllm <verb> ...``: the command line, thin over the library.

Each module in this package that defines ``register(subparsers)`` adds one
verb; its parser sets ``func`` to the function that runs it.

Bad input is one line on stderr and exit status 2, never a traceback: a
:class:`~scratchllm.errors.ScratchError` (a user mistake the library names),
an argument argparse refuses (:class:`Parser`), or a file-system refusal (an
``OSError``: a path that cannot be read or written) or a file that is not
valid JSON or text, where the command meets the library. Any other exception
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
from dataclasses import fields
from pathlib import Path

from ..errors import ScratchError


class HelpFormatter(argparse.HelpFormatter):
    """Adds an option's default to its help, once: not when the help already
    states it, and not when there is none (None, an empty string, a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, (str, list, tuple)) and not default)):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (what was wrong, where to look)
    and whose sub-parsers are Parsers too."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the verb that refused them, not by the top-level parser
        where = " ".join(["scratchllm"] + [getattr(args, k) for k in ("verb", "action", "model")
                                           if isinstance(getattr(args, k, None), str)])
        print(f"{where}: error: unrecognized arguments: {' '.join(unknown)} (see `{where} --help`)", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is met below, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except ScratchError as e:
        return _fail(args, e)
    except OSError as e:  # the file system refused: a missing folder, a file where a folder should be, ...
        return _fail(args, _os_error(e))
    except json.JSONDecodeError as e:
        return _fail(args, f"a file that should be JSON is not ({e})")
    except UnicodeDecodeError as e:
        return _fail(args, f"a file that should be text is not UTF-8 ({e})")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_config_options(parser, config_cls, helps: dict, skip=()) -> None:
    """One option per field of a config dataclass (``--field-name``, of its default's type).
    The option's own default is None, so that a run can tell what was given; its help
    states the dataclass's default, once (not when the help text already says it)."""
    for f in fields(config_cls):
        if f.name in skip:
            continue
        kind = type(f.default)
        text = helps.get(f.name, f.name.replace("_", " "))
        if "default" not in text:
            text += f" (default: {f.default if f.default != '' else 'none'})"
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                            metavar=f.name.upper() if kind is not str else None, help=text)


def number(text, name: str, kind=float, low=None):
    """An option's value (``name``, as "--lr") as a number: ``kind`` int or float, at least
    ``low`` if given. A bad one is a one-line error, not argparse's usage dump.
    Options are read as text and parsed here so every verb words its errors alike."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ScratchError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise ScratchError(f"{name} must be a finite number, got {text!r}")
    if low is not None and value < low:
        raise ScratchError(f"{name} must be at least {low}, got {text}")
    return value


def check_output_file(path) -> Path:
    """An output file's path, checked before the work that produces it: not a
    folder, and under a folder that exists or could be made (no file in the way)."""
    path = Path(path)
    if path.is_dir():
        raise ScratchError(f"{path} is a folder: give the path of a file to write")
    _check_parents(path)
    return path


def check_output_dir(path) -> Path:
    """An output folder's path, checked before the work that fills it: not a
    file, and under a folder that exists or could be made (no file in the way)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ScratchError(f"{path} is a file: give the path of a folder to write into")
    _check_parents(path)
    return path


def _check_parents(path: Path) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ScratchError(f"cannot write {path}: {parent} is a file, not a folder")


def _reader_gone() -> int:
    """The reader of our output left (`scratchllm … | head`): end quietly, as Python's documentation
    advises: point stdout at devnull, so that the flush at exit does not fail a second time."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in tests)
        pass
    return 1


def _fail(args, message) -> int:
    """The one line of a refused command."""
    print(f"scratchllm {args.verb}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _os_error(e: OSError) -> str:
    """'PATH: what the system said', as a person would write it."""
    what = e.strerror or type(e).__name__
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} → {e.filename2}: {what}"
    if e.filename is not None:
        return f"{e.filename}: {what}"
    return str(e) or what


if __name__ == "__main__":
    sys.exit(main())
