"""What every Hugging Face directory shares: its config.json and its weights
(one model.safetensors, or shards listed in model.safetensors.index.json),
and the check before an export replaces a folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ScratchError
from ..files import read_safetensors, replace_dir, staged_dir, write_safetensors


def read_config(d: Path) -> dict:
    if not (d / "config.json").is_file():
        raise ScratchError(f"{d} is not a Hugging Face model directory: it has no config.json")
    try:
        config = json.loads((d / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchError(f"{d / 'config.json'} is corrupt ({e})") from None
    if not isinstance(config, dict):
        raise ScratchError(f"{d / 'config.json'} is corrupt (not a JSON object)")
    return config


def read_hf_tensors(d: Path) -> dict:
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():  # sharded: a weight map names the file of each tensor
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ScratchError(f"{index} is corrupt ({e})") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (d / shard).is_file():
                raise ScratchError(f"{d / shard} is missing (named in {index.name})")
            tensors.update(read_safetensors(d / shard))
        return tensors
    if (d / "pytorch_model.bin").is_file():
        raise ScratchError(f"{d} has pytorch_model.bin but no model.safetensors; pickle files are never read: "
                           "re-save it with save_pretrained(dir, safe_serialization=True)")
    raise ScratchError(f"{d} has no model.safetensors: a model directory needs config.json and model.safetensors")


def check_target(target: Path, model_type: str, label: str):
    """Refuse to replace a folder that is neither empty nor an earlier export of ``model_type`` (called ``label``)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ScratchError(f"{target} exists and is not a folder; choose a new folder for the {label} export")
    if not any(target.iterdir()):
        return
    try:
        is_export = json.loads((target / "config.json").read_text()).get("model_type") == model_type
    except (OSError, ValueError, AttributeError):
        is_export = False
    if not is_export:
        raise ScratchError(f"{target} is a folder that is not a {label} export; choose a new or empty folder "
                           "(it would be replaced)")


def state_from_table(tensors: dict, rows, tied: bool, where, shapes=None) -> dict:
    """Our state dict (float32: bf16/f16 widened) from a directory's ``tensors`` by a rename table
    ``rows`` of (our name, HF name, transpose). Every HF name must be there and nothing else (a
    tied head's copy of the embedding is ignored); ``shapes`` (our name -> shape), if given, must match."""
    missing = [hf for _, hf, _ in rows if hf not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ScratchError(f"{where} lacks weights of this config: {shown}")
    used = {hf for _, hf, _ in rows} | ({"lm_head.weight"} if tied else set())
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise ScratchError(f"{where} has weights that this config does not use: {', '.join(unexpected[:5])}")
    state = {}
    for ours, hf, transpose in rows:
        a = np.asarray(tensors[hf])
        if a.dtype.kind != "f":
            raise ScratchError(f"{where}: {hf} holds {a.dtype} values, not floating-point weights")
        a = a.T if transpose else a
        if shapes is not None and tuple(a.shape) != tuple(shapes[ours]):
            raise ScratchError(f"{where}: {hf} has shape {tuple(a.shape)} but config.json says "
                               f"{tuple(shapes[ours])}: the weights and the config do not match")
        state[ours] = np.ascontiguousarray(a, dtype=np.float32)
    return state


def write_hf_dir(path, config: dict, tensors: dict, tokenizer, label: str) -> Path:
    """Write config.json, model.safetensors (and the tokenizer's files) as one directory at ``path``,
    replacing it only when complete; a folder that is not an earlier export of this kind is refused."""
    target = Path(path)
    check_target(target, config["model_type"], label)
    with staged_dir(target) as staged:
        (staged / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_safetensors(tensors, staged / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_hf(staged)
        replace_dir(staged, target)
    return target
