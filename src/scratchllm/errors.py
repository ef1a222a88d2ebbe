"""User-facing errors: the CLI prints their message as one line and exits 2."""


class ScratchError(Exception):
    """A mistake in the user's input (a path, a file, an argument, a checkpoint).

    The message says what was wrong and what to do; no traceback is shown.
    Subclasses ValueError-like use: library callers may catch it as usual.
    """
