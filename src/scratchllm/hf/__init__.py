"""Hugging Face model directories, read and written.

One module per family holds its config ↔ config.json mapping and its
parameter rename table; this package only picks the module from the
directory's ``model_type``.

    load_hf(dir)              -> a model (what ``scratchllm.load(dir)`` calls)
    save_hf(model, dir, tokenizer=None)   the family's writer, chosen by the model's kind
    load_hf_gpt2(dir), save_hf_gpt2(model, dir)
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScratchError
from .common import read_config
from .gpt2 import load_hf_gpt2, save_hf_gpt2
from .llama import load_hf_llama, save_hf_llama

_READERS = {"gpt2": load_hf_gpt2, "llama": load_hf_llama, "mistral": load_hf_llama, "qwen2": load_hf_llama,
            "qwen3": load_hf_llama}  # model_type -> reader of such a directory
# our checkpoints' kind -> (its name, writer of an HF directory)
_WRITERS = {"gpt": ("a GPT", save_hf_gpt2), "llama": ("a Llama", save_hf_llama)}


def load_hf(path):
    d = Path(path)
    model_type = read_config(d).get("model_type")
    reader = _READERS.get(model_type)
    if reader is None:
        raise ScratchError(f"{d / 'config.json'}: model_type is {model_type!r}; "
                           f"the Hugging Face models read here are: {', '.join(sorted(_READERS))}")
    return reader(d)


def save_hf(model, path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face directory that transformers loads (its family's format)."""
    found = _WRITERS.get(getattr(model, "kind", None))
    if found is None:
        names = " or ".join(name for name, _ in _WRITERS.values())
        raise ScratchError(f"only {names} can be exported as a Hugging Face directory, not a {type(model).__name__}")
    return found[1](model, path, tokenizer=tokenizer)


__all__ = ["load_hf", "save_hf", "load_hf_gpt2", "save_hf_gpt2", "load_hf_llama", "save_hf_llama"]
