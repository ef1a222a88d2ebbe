"""Hugging Face directories of the Llama family — LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM — read as a
:class:`Llama`, and a Llama written as one.

The four differ only in details that the config says: Qwen2 has biases in
q/k/v_proj, Qwen3 an RMSNorm over each query and key head (``q_norm``,
``k_norm``) and its own head_dim, Mistral a sliding window, Llama 3 a
scaling of the rotary frequencies. Our Llama uses Hugging Face's parameter
names and (out, in) weights, so the rename table maps each name to itself;
it is written out all the same, as the list of what a directory must hold.

    load_hf_llama(dir)          -> Llama   (what ``scratchllm.load(dir)`` calls for these model types)
    save_hf_llama(model, dir)              a directory ``AutoModelForCausalLM.from_pretrained`` loads
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ScratchError
from ..nn import skip_init
from .common import read_config, read_hf_tensors, state_from_table, write_hf_dir

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
_SUPPORTED = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
_ROPE_TYPES = ("default", "llama3")

# ---- the rename table ---------------------------------------------------------------
# Our parameter names are Hugging Face's and our weights (out, in) as theirs: every row maps a
# name to itself, untransposed. The table is the list of what a directory must hold.
_MODEL_NAMES = ["model.embed_tokens.weight", "model.norm.weight"]
_LAYER_NAMES = [  # "model.layers.{i}." + name, and the config field that must be true for it to exist
    ("input_layernorm.weight", None),
    ("self_attn.q_proj.weight", None), ("self_attn.q_proj.bias", "attention_bias"),
    ("self_attn.k_proj.weight", None), ("self_attn.k_proj.bias", "attention_bias"),
    ("self_attn.v_proj.weight", None), ("self_attn.v_proj.bias", "attention_bias"),
    ("self_attn.o_proj.weight", None), ("self_attn.o_proj.bias", "o_bias"),
    ("self_attn.q_norm.weight", "qk_norm"), ("self_attn.k_norm.weight", "qk_norm"),
    ("post_attention_layernorm.weight", None),
    ("mlp.gate_proj.weight", None), ("mlp.gate_proj.bias", "mlp_bias"),
    ("mlp.up_proj.weight", None), ("mlp.up_proj.bias", "mlp_bias"),
    ("mlp.down_proj.weight", None), ("mlp.down_proj.bias", "mlp_bias"),
]
_UNTIED_HEAD = "lm_head.weight"  # only if untied
_BUFFERS = (".rotary_emb.inv_freq",)  # older files keep the rotary frequencies: computed here, not weights


def rename_table(cfg) -> list[tuple[str, str, bool]]:
    """(our name, HF name, transpose) for every weight of a Llama with config ``cfg``."""
    names = list(_MODEL_NAMES)
    for i in range(cfg.num_hidden_layers):
        names += [f"model.layers.{i}.{name}" for name, when in _LAYER_NAMES if when is None or getattr(cfg, when)]
    if not cfg.tie_word_embeddings:
        names.append(_UNTIED_HEAD)
    return [(name, name, False) for name in names]


# ---- configs ------------------------------------------------------------------------
def _rope_settings(hf: dict, where) -> tuple[float, dict | None]:
    """(theta, scaling) from either spelling: transformers 5's ``rope_parameters``
    or the hub's ``rope_theta`` + ``rope_scaling``."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise ScratchError(f"{where}: rotary settings per layer type ({', '.join(params)}) are not supported; "
                           f"supported: one rope_type for all layers ({' or '.join(_ROPE_TYPES)})")
    scaling = dict(params) if isinstance(params, dict) else dict(hf.get("rope_scaling") or {})
    theta = float(scaling.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise ScratchError(f"{where}: rope_type {kind!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    if float(scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ScratchError(f"{where}: partial_rotary_factor {scaling.get('partial_rotary_factor')} is not "
                           "supported (only rotary embedding over the whole head)")
    if kind == "default":
        return theta, None
    scaling["rope_type"] = kind
    scaling.pop("type", None)
    return theta, scaling


def llama_config_from_hf(hf: dict, where="config.json"):
    """LlamaConfig for a ``config.json`` of the Llama family; one clear line for what we do not compute."""
    from ..models.llama import LlamaConfig

    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ScratchError(f"{where}: model_type {model_type!r} is not of the Llama family; supported: {_SUPPORTED}")
    archs = hf.get("architectures") or [ARCHITECTURES[model_type]]
    unknown = [a for a in archs if a not in ARCHITECTURES.values()]
    if unknown:
        raise ScratchError(f"{where}: architecture {unknown[0]} is not supported; supported: {_SUPPORTED}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ScratchError(f"{where}: hidden_act {act!r} is not supported (only SwiGLU's 'silu')")
    theta, scaling = _rope_settings(hf, where)
    window = hf.get("sliding_window")
    if model_type != "mistral" and not hf.get("use_sliding_window", False):
        window = None  # Qwen2/Qwen3 carry a window size that is off unless use_sliding_window says so
    bias = bool(hf.get("attention_bias", False))
    try:
        heads = int(hf["num_attention_heads"])
        return LlamaConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf["head_dim"]) if hf.get("head_dim") else None,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=True if model_type == "qwen2" else (bias and model_type != "mistral"),
            mlp_bias=bool(hf.get("mlp_bias", False)) and model_type == "llama",
            initializer_range=float(hf.get("initializer_range", 0.02)),
            o_bias=bias and model_type in ("llama", "qwen3"),
            qk_norm=model_type == "qwen3",
            sliding_window=int(window) if window else None,
        )
    except KeyError as e:
        raise ScratchError(f"{where}: the config lacks {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ScratchError(f"{where}: bad config ({e})") from None


def hf_model_type(cfg) -> str:
    """The Hugging Face family that computes exactly what a Llama of ``cfg`` computes."""
    if cfg.qk_norm:
        if cfg.attention_bias != cfg.o_bias or cfg.mlp_bias or cfg.sliding_window:
            raise ScratchError("this Llama (q/k norms with these biases or a sliding window) matches no Hugging "
                               f"Face family; supported: {_SUPPORTED}")
        return "qwen3"
    if cfg.attention_bias and not cfg.o_bias:
        if cfg.mlp_bias:
            raise ScratchError("this Llama (q/k/v biases without an o_proj bias, and MLP biases) matches no "
                               f"Hugging Face family; supported: {_SUPPORTED}")
        return "qwen2"
    if cfg.o_bias != cfg.attention_bias:
        raise ScratchError("an o_proj bias without q/k/v biases matches no Hugging Face family; "
                           f"supported: {_SUPPORTED}")
    if cfg.sliding_window:
        if cfg.attention_bias or cfg.mlp_bias:
            raise ScratchError(f"a sliding window with biases matches no Hugging Face family; supported: {_SUPPORTED}")
        return "mistral"
    return "llama"


def hf_config_from_llama(cfg, bos_token_id=None, eos_token_id=None) -> dict:
    """The ``config.json`` of the Hugging Face family that computes what ``cfg`` does. The rotary
    settings are written in both spellings (transformers 5's rope_parameters, and rope_theta +
    rope_scaling for earlier versions)."""
    model_type = hf_model_type(cfg)
    rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope_parameters = {**cfg.rope_scaling, "rope_theta": cfg.rope_theta}
    config = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": rope_parameters,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "dtype": "float32",
    }
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = cfg.attention_bias
    if model_type == "llama":
        config["mlp_bias"] = cfg.mlp_bias
    if model_type == "mistral":
        config["sliding_window"] = cfg.sliding_window
    if model_type in ("qwen2", "qwen3"):
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers)
    return config


# ---- weights ------------------------------------------------------------------------
def from_hf_state_dict(tensors: dict, cfg, shapes: dict, where="model.safetensors") -> dict:
    """Our state dict (float32) from the family's tensors; ``shapes`` are the config's (our name -> shape)."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_BUFFERS)}
    return state_from_table(tensors, rename_table(cfg), cfg.tie_word_embeddings, where, shapes)


def to_hf_state_dict(model) -> dict:
    ours = dict(model.named_parameters())
    return {hf: np.ascontiguousarray(np.asarray(ours[name].data, dtype=np.float32).T if t
                                     else np.asarray(ours[name].data, dtype=np.float32))
            for name, hf, t in rename_table(model.config)}


# ---- load and save ------------------------------------------------------------------
def load_hf_llama(path):
    """A :class:`Llama` with the weights of the Hugging Face directory at ``path``, in eval mode."""
    from ..models.llama import Llama

    d = Path(path)
    cfg = llama_config_from_hf(read_config(d), where=d / "config.json")
    tensors = read_hf_tensors(d)
    with skip_init():  # every weight is read from the directory
        model = Llama(cfg)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    model.load_state_dict(from_hf_state_dict(tensors, cfg, shapes, where=d))
    return model.eval()


def save_hf_llama(model, path, tokenizer=None) -> Path:
    """Write ``model`` (a Llama) as a Hugging Face directory of the family that computes the same
    (Llama, Mistral, Qwen2 or Qwen3). ``tokenizer``, if given, must write Hugging Face files.
    ``path`` is replaced as a whole once everything is written; an existing folder that is not
    such an export is refused rather than overwritten."""
    if getattr(model, "kind", None) != "llama":
        raise ScratchError(f"only a Llama can be exported as a Llama-family directory, not a {type(model).__name__}")
    if tokenizer is not None and not hasattr(tokenizer, "save_hf"):
        raise ScratchError(f"a {type(tokenizer).__name__} cannot be written in Hugging Face format "
                           "(only a BPETokenizer can); export the model without it")
    specials = getattr(tokenizer, "special_tokens", {}) if tokenizer is not None else {}
    eos = next((specials[t] for t in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>") if t in specials), None)
    bos = next((specials[t] for t in ("<s>", "<|begin_of_text|>") if t in specials), None)
    config = hf_config_from_llama(model.config, bos_token_id=bos, eos_token_id=eos)
    return write_hf_dir(path, config, to_hf_state_dict(model), tokenizer, config["architectures"][0])
