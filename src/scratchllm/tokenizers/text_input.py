"""Training text as a stream of chunks: a str, a file or folder, or an iterable."""
from __future__ import annotations

import os
from typing import Iterator

from tqdm import tqdm

from ..data.corpus import text_chunks
from ..errors import ScratchError

CHUNK = 1 << 20


def iter_text(data, progress: bool = False) -> Iterator[str]:
    """The text in consecutive chunks, with a progress bar if asked.

    data: a str (the text itself), a pathlib.Path to a file or to a folder
    (read as a model's training reads it: ``scratchllm.data.corpus.text_chunks``),
    or any iterable of str, such as an open text file, read as consecutive
    parts of one text.
    """
    if isinstance(data, str):
        bar = tqdm(total=len(data), desc="reading", unit="char", unit_scale=True, disable=not progress, leave=False)
        for i in range(0, len(data), CHUNK):
            bar.update(min(CHUNK, len(data) - i))
            yield data[i:i + CHUNK]
        bar.close()
    elif isinstance(data, os.PathLike):
        yield from text_chunks(data, progress, allow_nul=True)
    else:
        bar = tqdm(desc="reading", unit="char", unit_scale=True, disable=not progress, leave=False)
        for item in data:
            if not isinstance(item, str):
                raise ScratchError(f"training data must be text; got an item of type {type(item).__name__}")
            bar.update(len(item))
            yield item
        bar.close()
