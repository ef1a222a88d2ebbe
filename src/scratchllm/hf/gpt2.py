"""Hugging Face GPT-2 directories: read them as a :class:`GPT`, write a GPT as one.

A GPT-2 directory (what ``GPT2LMHeadModel.save_pretrained`` writes) holds
``config.json`` (``"model_type": "gpt2"``) and ``model.safetensors``; pickle
files (``pytorch_model.bin``) are never read. Our GPT uses GPT-2's parameter
names, so the conversion is the table below plus one detail: GPT-2 keeps its
linear layers as ``Conv1D`` modules whose weight is stored (in, out), while
ours are stored (out, in) as in PyTorch's ``Linear``, so those are transposed.

    load_hf_gpt2(dir)         -> GPT       (also what ``scratchllm.load(dir)`` calls)
    save_hf_gpt2(model, dir)               a directory ``GPT2LMHeadModel.from_pretrained`` loads
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ScratchError
from ..nn import skip_init
from .common import read_config, read_hf_tensors, state_from_table, write_hf_dir

# ---- the rename table ---------------------------------------------------------------
# ours (GPT.named_parameters)              HF GPT2LMHeadModel (model.safetensors)   Conv1D: stored (in, out)
_MODEL_TABLE = [
    ("transformer.wte.weight",                "transformer.wte.weight",                False),
    ("transformer.wpe.weight",                "transformer.wpe.weight",                False),
    ("transformer.ln_f.weight",               "transformer.ln_f.weight",               False),
    ("transformer.ln_f.bias",                 "transformer.ln_f.bias",                 False),
]
_LAYER_TABLE = [
    ("transformer.h.{i}.ln_1.weight",         "transformer.h.{i}.ln_1.weight",         False),
    ("transformer.h.{i}.ln_1.bias",           "transformer.h.{i}.ln_1.bias",           False),
    ("transformer.h.{i}.attn.c_attn.weight",  "transformer.h.{i}.attn.c_attn.weight",  True),
    ("transformer.h.{i}.attn.c_attn.bias",    "transformer.h.{i}.attn.c_attn.bias",    False),
    ("transformer.h.{i}.attn.c_proj.weight",  "transformer.h.{i}.attn.c_proj.weight",  True),
    ("transformer.h.{i}.attn.c_proj.bias",    "transformer.h.{i}.attn.c_proj.bias",    False),
    ("transformer.h.{i}.ln_2.weight",         "transformer.h.{i}.ln_2.weight",         False),
    ("transformer.h.{i}.ln_2.bias",           "transformer.h.{i}.ln_2.bias",           False),
    ("transformer.h.{i}.mlp.c_fc.weight",     "transformer.h.{i}.mlp.c_fc.weight",     True),
    ("transformer.h.{i}.mlp.c_fc.bias",       "transformer.h.{i}.mlp.c_fc.bias",       False),
    ("transformer.h.{i}.mlp.c_proj.weight",   "transformer.h.{i}.mlp.c_proj.weight",   True),
    ("transformer.h.{i}.mlp.c_proj.bias",     "transformer.h.{i}.mlp.c_proj.bias",     False),
]
_UNTIED_HEAD = ("lm_head.weight",             "lm_head.weight",                        False)  # only if untied
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # HF's causal-mask buffers in older files: not weights
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # both are GPT-2's tanh form of GELU, as our F.gelu


def rename_table(n_layer: int, tied: bool = True) -> list[tuple[str, str, bool]]:
    """(our name, HF name, transpose) for every weight of an ``n_layer`` GPT-2."""
    rows = list(_MODEL_TABLE)
    for i in range(n_layer):
        rows += [(ours.format(i=i), hf.format(i=i), t) for ours, hf, t in _LAYER_TABLE]
    if not tied:
        rows.append(_UNTIED_HEAD)
    return rows


# ---- configs ------------------------------------------------------------------------
def gpt_config_from_hf(hf: dict, where="config.json"):
    """GPTConfig for a GPT-2 ``config.json``; a clear error for what our GPT cannot reproduce."""
    from ..models.gpt import GPTConfig

    if hf.get("model_type") != "gpt2":
        raise ScratchError(f"{where}: model_type is {hf.get('model_type')!r}; only GPT-2 (\"gpt2\") can be read")
    act = hf.get("activation_function", "gelu_new")
    n_embd = int(hf.get("n_embd", 768))
    checks = [
        (act in _GELU_TANH, f"activation_function {act!r} (only GPT-2's tanh GELU, \"gelu_new\")"),
        (hf.get("n_inner") in (None, 4 * n_embd), f"n_inner {hf.get('n_inner')} (the MLP must be 4·n_embd wide)"),
        (hf.get("scale_attn_weights", True), "scale_attn_weights false"),
        (not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx true"),
        (not hf.get("add_cross_attention", False), "add_cross_attention true"),
    ]
    unsupported = [what for ok, what in checks if not ok]
    if unsupported:
        raise ScratchError(f"{where}: this GPT-2 variant is not supported: {'; '.join(unsupported)}")
    try:
        return GPTConfig(
            vocab_size=int(hf.get("vocab_size", 50257)),
            block_size=int(hf.get("n_positions", 1024)),
            n_layer=int(hf.get("n_layer", 12)),
            n_head=int(hf.get("n_head", 12)),
            n_embd=n_embd,
            dropout=float(hf.get("resid_pdrop", 0.1)),  # GPT-2's attention-weight dropout has no counterpart here
            bias=True,
            positional="learned",
            tie_weights=bool(hf.get("tie_word_embeddings", True)),
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        )
    except (TypeError, ValueError) as e:
        raise ScratchError(f"{where}: bad GPT-2 config ({e})") from None


def hf_config_from_gpt(cfg, eos_token_id=None) -> dict:
    """The ``config.json`` of a GPT-2 with the architecture of ``cfg``."""
    if cfg.positional != "learned":
        raise ScratchError(f"a GPT with {cfg.positional} positions cannot be written as GPT-2, "
                           "whose position table is learned; only positional='learned' models can be exported")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,  # our GPT drops no attention weights
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "dtype": "float32",
    }


# ---- weights ------------------------------------------------------------------------
def from_hf_state_dict(tensors: dict, cfg, where="model.safetensors") -> dict:
    """Our state dict (float32, (out, in) linears) from GPT-2's tensors."""
    # GPT2LMHeadModel names start with "transformer."; a bare GPT2Model's do not.
    tensors = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
               for k, v in tensors.items() if not k.endswith(_BUFFERS)}
    return state_from_table(tensors, rename_table(cfg.n_layer, cfg.tie_weights), cfg.tie_weights, where)


def to_hf_state_dict(model) -> dict:
    """GPT-2's tensors (float32, Conv1D (in, out)) from our GPT; biases a bias-free GPT lacks are written as zeros."""
    cfg = model.config
    ours = dict(model.named_parameters())
    shapes = _shapes(cfg)
    out = {}
    for name, hf, transpose in rename_table(cfg.n_layer, cfg.tie_weights):
        if name in ours:
            a = np.asarray(ours[name].data, dtype=np.float32)
            out[hf] = np.ascontiguousarray(a.T if transpose else a)
        else:  # bias=False: GPT-2 always has biases; zeros compute the same function
            out[hf] = np.zeros(shapes[name], dtype=np.float32)
    return out


def _shapes(cfg) -> dict:
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    shapes = {"transformer.ln_f.bias": (C,)}
    for i in range(L):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.bias": (C,), p + "ln_2.bias": (C,), p + "attn.c_attn.bias": (3 * C,),
                       p + "attn.c_proj.bias": (C,), p + "mlp.c_fc.bias": (4 * C,), p + "mlp.c_proj.bias": (C,)})
    shapes["lm_head.weight"] = (V, C)
    return shapes


# ---- load and save ------------------------------------------------------------------
def load_hf_gpt2(path):
    """A :class:`GPT` with the weights of the Hugging Face GPT-2 directory at ``path``,
    in eval mode as ``from_pretrained`` gives it (GPT-2 configs usually set dropout 0.1;
    call ``model.train()`` to fine-tune with it)."""
    from ..models.gpt import GPT

    d = Path(path)
    cfg = gpt_config_from_hf(read_config(d), where=d / "config.json")
    state = from_hf_state_dict(read_hf_tensors(d), cfg, where=d)
    with skip_init():  # every weight is read from the directory
        model = GPT(cfg)
    model.load_state_dict(state)
    return model.eval()


def save_hf_gpt2(model, path, tokenizer=None) -> Path:
    """Write ``model`` (a GPT with learned positions) as a Hugging Face GPT-2 directory.

    ``tokenizer``, if given, must be able to write Hugging Face files (a
    ``BPETokenizer``); a character tokenizer has no GPT-2 form. ``path`` is
    replaced as a whole once everything is written; an existing folder that
    is not a GPT-2 directory is refused rather than overwritten.
    """
    if getattr(model, "kind", None) != "gpt" or not hasattr(model, "config"):
        raise ScratchError(f"only a GPT can be exported as GPT-2, not a {type(model).__name__}")
    if tokenizer is not None and not hasattr(tokenizer, "save_hf"):
        raise ScratchError(f"a {type(tokenizer).__name__} cannot be written in Hugging Face format "
                           "(only a BPETokenizer can); export the model without it")
    eos = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>") if tokenizer is not None else None
    config = hf_config_from_gpt(model.config, eos_token_id=eos)
    return write_hf_dir(path, config, to_hf_state_dict(model), tokenizer, "GPT-2")
