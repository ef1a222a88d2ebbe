"""User-facing errors: the CLI prints their message as one line and exits 2."""


class ScratchError(Exception):
    """A mistake in the user's input (a path, a file, an argument, a checkpoint).

    The message says what was wrong and what to do; no traceback is shown.
    Subclasses ValueError-like use: library callers may catch it as usual.
    """


def loss_not_finite(loss, when: str, saved: str, advice: str) -> str:
    """The one wording of a training run stopped because its loss is no longer a
    number (NaN or infinite): the loss, when, what is saved, and what to try."""
    return f"loss became {loss} at {when}; stopped, {saved}. {advice}"
