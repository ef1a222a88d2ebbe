"""llama.cpp's names and settings -> Hugging Face's (config.json fields, state-dict names).

A GGUF file of the Llama family stores its hyperparameters as metadata under
the architecture's prefix (``llama.embedding_length``, ...) and its tensors
under llama.cpp's names (``blk.0.attn_q.weight``). Hugging Face's Llama,
Qwen2 and Qwen3 share one layout, so one table serves all three.

llama.cpp's converter reorders the rows of q and k in ``llama`` files: its
RoPE rotates adjacent pairs (0, 1), (2, 3), ... of a head, Hugging Face's
rotates (i, i + D/2), so each head's rows i and i + D/2 were interleaved.
Undoing that (:func:`unpermute_qk`) gives back Hugging Face's weights.
Qwen2 and Qwen3 files use the (i, i + D/2) rotation already.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import ScratchError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {  # llama.cpp's blk.{i}.<name> -> model.layers.{i}.<name>
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_REQUIRED_LAYER = ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                   "ffn_down")
_NAME = re.compile(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)")
ROPE_FREQS = "rope_freqs.weight"
# Llama 3.1, 3.2 and 3.3 all use these (config.json's rope_scaling); the factor varies (8, 32)
_LLAMA3_BLEND = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def hf_name(name: str) -> str | None:
    """Hugging Face's name of llama.cpp's tensor ``name`` (None: not a Llama-family tensor)."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    layer, base, kind = m.groups()
    if layer is None:
        return f"{_GLOBAL[base]}.{kind}" if base in _GLOBAL else None
    return f"model.layers.{int(layer)}.{_LAYER[base]}.{kind}" if base in _LAYER else None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows (n_head * D, ...) with each head's pairs interleaved as llama.cpp stores them
    -> Hugging Face's order: rows 0, 2, 4, ... of a head, then rows 1, 3, 5, ..."""
    D = w.shape[0] // n_head
    # row 2j + s of a head is Hugging Face's row s * D/2 + j
    return w.reshape(n_head, D // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_scaling(rope_freqs, head_dim: int, theta: float) -> dict:
    """config.json's rope_scaling for a file's ``rope_freqs``: llama.cpp divides each
    rotation speed by its factor, which is Llama 3's scaling written out per pair.
    The factor is the largest; the blend is Llama 3's own, checked against every value."""
    from ..functional import rope_frequencies

    r = np.asarray(rope_freqs, dtype=np.float64).reshape(-1)
    if r.shape != (head_dim // 2,) or not np.all(np.isfinite(r)) or r.min() <= 0:
        raise ScratchError(f"the GGUF tensor rope_freqs.weight has {r.size} values, not {head_dim // 2} positive "
                           "factors (one per pair of a head)")
    scaling = {"rope_type": "llama3", "factor": float(r.max()), **_LLAMA3_BLEND}
    implied = rope_frequencies(head_dim, theta) / rope_frequencies(head_dim, theta, scaling)
    if not np.allclose(implied, r, rtol=1e-5, atol=0):
        raise ScratchError("the GGUF file's rope_freqs are not Llama 3's RoPE scaling (low_freq_factor 1, "
                           "high_freq_factor 4, original context 8192), the only per-pair scaling read here")
    return scaling


def _shapes(tensors) -> dict:
    """name -> NumPy shape, without dequantizing a lazy GGUFFile."""
    if hasattr(tensors, "infos"):
        return {name: info.shape for name, info in tensors.infos.items()}
    return {name: w.shape for name, w in tensors.items()}


def _get(meta: dict, key: str, default=None, required=True):
    if key in meta:
        return meta[key]
    if default is None and required:
        raise ScratchError(f"the GGUF metadata lacks {key!r}, which a Llama-family model needs")
    return default


def hf_config(metadata: dict, shapes: dict, rope_freqs=None) -> dict:
    """The config.json fields of the model whose metadata and tensor shapes (llama.cpp's
    names -> NumPy shapes) are given; every tensor name is checked here, before any is read.
    ``rope_freqs``: the values of the ``rope_freqs.weight`` tensor, when the file has one."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ScratchError(f"GGUF architecture {arch!r} is not read here; the architectures read are: "
                           f"{', '.join(ARCHITECTURES)}")
    a = arch + "."
    n_head = _get(metadata, a + "attention.head_count")
    n_kv = _get(metadata, a + "attention.head_count_kv", n_head)
    hidden = _get(metadata, a + "embedding_length")
    n_layer = _get(metadata, a + "block_count")
    if not all(isinstance(v, int) and v > 0 for v in (n_head, n_kv, hidden, n_layer)):
        raise ScratchError(f"the GGUF metadata has impossible sizes: {n_head} heads, {n_kv} key/value heads, "
                           f"width {hidden}, {n_layer} layers")
    unknown = [name for name in shapes if hf_name(name) is None and name != ROPE_FREQS]
    if unknown:
        raise ScratchError(f"GGUF tensor {unknown[0]!r} is not part of a {arch} model as read here")
    present = {hf_name(name) for name in shapes}
    missing = [f"{_GLOBAL[g]}.weight" for g in ("token_embd", "output_norm")]
    missing += [f"model.layers.{i}.{_LAYER[t]}.weight" for i in range(n_layer) for t in _REQUIRED_LAYER]
    missing = [k for k in missing if k not in present]
    if missing:
        raise ScratchError(f"the GGUF file lacks {len(missing)} tensors of a {arch} model, e.g. {missing[0]}")

    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": shapes["token_embd.weight"][0],
        "hidden_size": hidden,
        "intermediate_size": _get(metadata, a + "feed_forward_length"),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        # Qwen3's heads are not hidden / n_head wide: key_length says so
        "head_dim": metadata.get(a + "attention.key_length") or metadata.get(a + "rope.dimension_count")
        or hidden // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": _get(metadata, a + "context_length", 2048, required=False),
        "rms_norm_eps": _get(metadata, a + "attention.layer_norm_rms_epsilon"),
        "rope_theta": _get(metadata, a + "rope.freq_base", 10000.0, required=False),
        "tie_word_embeddings": "output.weight" not in shapes,
        "attention_bias": "blk.0.attn_q.bias" in shapes,
    }
    scaling = metadata.get(a + "rope.scaling.type", "none")
    if ROPE_FREQS in shapes:
        config["rope_scaling"] = llama3_scaling(rope_freqs, config["head_dim"], config["rope_theta"])
    elif scaling == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": metadata[a + "rope.scaling.factor"]}
    elif scaling not in ("none", None):
        raise ScratchError(f"GGUF RoPE scaling {scaling!r} is not read here (none and linear are)")
    for key, field in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        if f"tokenizer.ggml.{key}_token_id" in metadata:
            config[field] = metadata[f"tokenizer.ggml.{key}_token_id"]
    return config


def hf_tensors(config: dict, tensors, progress=None):
    """(Hugging Face name, float32 array) for each tensor in turn; a lazy GGUFFile
    dequantizes them one at a time (with a progress bar when ``progress``)."""
    items = tensors.iter_tensors(progress) if hasattr(tensors, "iter_tensors") else tensors.items()
    for name, w in items:
        if name == ROPE_FREQS:  # a setting (config's rope_scaling), not a weight
            continue
        hf = hf_name(name)
        if config["model_type"] == "llama" and (".q_proj." in hf or ".k_proj." in hf):
            w = unpermute_qk(w, config["num_attention_heads" if ".q_proj." in hf else "num_key_value_heads"])
        yield hf, w


def gguf_to_hf(metadata: dict, tensors, progress=None):
    """``(hf_config, state)``: config.json fields and the weights under Hugging Face's names.

    ``tensors`` is the dict of :func:`read` or its lazy mapping (then each tensor
    is dequantized once, in turn, and memory stays near the model's float32 size).
    ``lm_head.weight`` is present only when the file has its own output matrix
    (``tie_word_embeddings`` says which).
    """
    shapes = _shapes(tensors)
    config = hf_config(metadata, shapes, tensors[ROPE_FREQS] if ROPE_FREQS in shapes else None)
    return config, dict(hf_tensors(config, tensors, progress))
