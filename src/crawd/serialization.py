"""Adapter-only checkpoints: safetensors weights + one JSON file, written atomically.

A saved folder holds exactly two files:
    crawd_config.json        method, CrawdConfig, LoRA settings, the base model's name and fingerprint
    crawd_adapter.safetensors the trained weights only (LoRA, block, new head)
Nothing is ever unpickled: a folder holding pickle files is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel
from crawd.config import CrawdConfig
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


def save_adapter(model: AdaptedModel, directory: str | os.PathLike) -> None:
    """Save ``model``'s trained weights and settings to ``directory`` (see module doc)."""
    from crawd.model import CrawdModel
    from crawd.self_decay import SelfDecayModel

    directory = Path(directory)
    tensors = {k: v.contiguous().clone() for k, v in model.trainable_state_dict().items()}
    meta = {
        "format": "crawd-adapter/1",
        "method": "crawd" if isinstance(model, (CrawdModel, SelfDecayModel)) else "vanilla",
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


def load(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> AdaptedModel:
    """Rebuild the saved model on ``base`` (a fresh transformers model of the same kind)."""
    from crawd.model import wrap

    meta, tensors = read_adapter(directory)
    check_base(meta, base, directory)
    config = CrawdConfig.from_dict(meta["crawd"])
    if meta["lora"] is not None and not isinstance(base, PeftModel):
        base = get_peft_model(base, LoraConfig(**meta["lora"]))
    config.lora = meta["lora"] is not None
    model = wrap(base, tokenizer, config) if meta["method"] == "crawd" else AdaptedModel(base, tokenizer, config)
    expected = set(model.trainable_state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"adapter {directory} does not match this model: missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(tensors, strict=False)
    return model


class AutoCrawdModel:
    """``from_pretrained`` for a saved crawd folder: the base model is loaded by the name recorded at
    training time (an alias, hub id or folder, see :func:`crawd.models.base_name`), then the adapter."""

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, base: str | None = None, *,
                        trust_remote_code: bool = False, cache_dir: str | None = None) -> AdaptedModel:
        """The saved model in eval mode (its tokenizer is ``.tokenizer``).

        Args:
            directory: a folder written by ``save_pretrained``, ``crawd train`` or ``crawd export``.
            base: load the base from here instead of the recorded name (a copy elsewhere).
            trust_remote_code, cache_dir: as :func:`crawd.models.load_model`.
        """
        from crawd.models import load_model

        meta, tensors = read_adapter(directory)
        name = base or meta["base"].get("name_or_path")
        if not name:
            raise ValueError(f"adapter {directory} records no base model name: pass base= (alias, hub id or folder)")
        num_labels = None
        if meta["task"] == "classification":  # folders saved before num_labels was recorded: the head's width
            num_labels = meta["base"].get("num_labels") or next(
                (t.shape[0] for k, t in tensors.items() if k.endswith(("concat_head.weight", "score.weight",
                                                                      "classifier.weight"))), None)
        try:
            hf, tokenizer = load_model(name, meta["task"], num_labels=num_labels,
                                       trust_remote_code=trust_remote_code, cache_dir=cache_dir)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (the base model recorded in adapter {directory}; pass base= to load "
                                    "it from elsewhere)") from None
        return load(hf, tokenizer, directory).eval()
