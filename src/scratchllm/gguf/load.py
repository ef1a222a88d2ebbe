"""A GGUF file as a model and a tokenizer (what ``scratchllm.load(path.gguf)`` calls).

The model is built from the file's Hugging Face config (:func:`hf_config`,
through ``hf/llama.py``'s config mapping), then each tensor is dequantized
and copied into its parameter in turn: memory holds the float32 model and
one tensor at a time, never a second copy of every weight.
"""
from __future__ import annotations

import numpy as np

from ..errors import ScratchError
from ..nn import skip_init
from .reader import GGUFFile
from .to_hf import ROPE_FREQS, _shapes, hf_config, hf_name, hf_tensors


def load_model(path, progress=None):
    """The Llama-family model (llama, qwen2, qwen3 architectures) of a GGUF file, in eval mode.
    ``progress``: a bar while dequantizing (default: when stderr is a terminal)."""
    from ..hf.llama import llama_config_from_hf, rename_table
    from ..models.llama import Llama

    f = GGUFFile(path)
    config = hf_config(f.metadata, _shapes(f), f[ROPE_FREQS] if ROPE_FREQS in f.infos else None)
    cfg = llama_config_from_hf(config, where=f.path)
    with skip_init():  # every weight is read from the file below
        model = Llama(cfg)
    params = dict(model.named_parameters())
    ours = {hf: name for name, hf, _ in rename_table(cfg)}  # every Llama-family name is Hugging Face's
    expected, found = set(ours), {hf_name(n) for n in f.infos if n != ROPE_FREQS}
    if expected != found:
        extra, lacking = sorted(found - expected), sorted(expected - found)
        raise ScratchError(f"{f.path}: its tensors do not make a {config['model_type']} model of its config"
                           + (f"; extra: {', '.join(extra[:3])}" if extra else "")
                           + (f"; missing: {', '.join(lacking[:3])}" if lacking else ""))
    for hf, w in hf_tensors(config, f, progress):
        p = params[ours[hf]]
        if w.shape != p.shape:
            raise ScratchError(f"{f.path}: tensor {hf} has shape {w.shape}, its config says {p.shape}")
        np.copyto(p.data, w)
    return model.eval()


def load_tokenizer(path):
    """The tokenizer described by a GGUF file's metadata (no tensor is read)."""
    from ..tokenizers import from_gguf

    return from_gguf(GGUFFile(path).metadata)
