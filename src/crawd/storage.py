"""The adapter folder format: write, read and check it (safetensors weights + one JSON file, atomically).

A saved folder holds exactly two files:
    crawd_config.json        method, CrawdConfig, LoRA settings, the base model's name and fingerprint
    crawd_adapter.safetensors the trained weights only (LoRA, block, new head)
Nothing is ever unpickled: a folder holding pickle files is refused. The "method" recorded
is the model's ``saved_as``; :mod:`crawd.loading` rebuilds the model from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from crawd.models import base_name

CONFIG_NAME = "crawd_config.json"
WEIGHTS_NAME = "crawd_adapter.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
FINGERPRINT_KEYS = ("model_type", "hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "num_key_value_heads")


def base_fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the base config fields an adapter depends on."""
    config = model.config
    fields = {k: getattr(config, k, None) for k in FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON atomically (numpy scalars as floats)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, default=float)))


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> None:
    """Save ``model``'s (a :class:`crawd.adapted.AdaptedModel`) trained weights and settings to ``directory``."""
    directory = Path(directory)
    tensors = {k: v.contiguous().clone() for k, v in model.trainable_state_dict().items()}
    meta = {
        "format": "crawd-adapter/1",
        "method": model.saved_as,
        "task": model.task,
        "crawd": model.config.to_dict(),
        "lora": model.lora_config,
        "base": {
            "name_or_path": base_name(model.hf),
            "num_labels": model.hf.config.num_labels if model.task == "classification" else None,
            "model_type": model.hf.config.model_type,
            "hidden_size": model.hidden_size,
            "vocab_size": getattr(model.hf.config, "vocab_size", None),
            "fingerprint": base_fingerprint(model.hf),
        },
    }
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True)))


def read_adapter(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a saved folder; one clear ValueError / FileNotFoundError on any problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter folder {str(directory)!r} does not exist")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"refusing to load {directory}: it holds pickle files ({', '.join(pickles)}); "
                         "crawd loads only safetensors and JSON")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a crawd adapter folder: {name} is missing")
    try:
        meta = json.loads((directory / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / CONFIG_NAME} is not valid JSON ({err})") from None
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{directory / WEIGHTS_NAME} is corrupt or truncated ({err}); re-save or re-train it") from None
    return meta, tensors


def check_base(meta: dict[str, Any], base: PreTrainedModel | PeftModel, directory: str | os.PathLike) -> None:
    """Raise a one-line error when the adapter described by ``meta`` was saved for another base model."""
    hf = base.get_base_model() if isinstance(base, PeftModel) else base
    saved = meta["base"]
    if saved["fingerprint"] != base_fingerprint(hf):
        raise ValueError(
            f"adapter {directory} was saved for another base model ({saved['model_type']}, hidden size "
            f"{saved['hidden_size']}, vocabulary {saved['vocab_size']}); this base is {hf.config.model_type}, "
            f"hidden size {hf.config.hidden_size}, vocabulary {getattr(hf.config, 'vocab_size', None)}"
        )

