"""What every Hugging Face directory shares: its config.json and its weights
(one model.safetensors, or shards listed in model.safetensors.index.json),
and the check before an export replaces a folder."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ScratchError
from ..files import read_safetensors


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
