"""Rebuild a model from a saved adapter folder: ``load`` on a base you hold, ``AutoCrawdModel`` by the recorded name."""

from __future__ import annotations

import os

from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel, with_lora
from crawd.config import CrawdConfig
from crawd.methods import get_method
from crawd.models import load_model
from crawd.storage import check_base, read_adapter


def load(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> AdaptedModel:
    """Rebuild the saved model on ``base`` (a fresh transformers model of the same kind).

    The method recorded in the folder picks the builder from the registry (:mod:`crawd.methods`).
    """
    meta, tensors = read_adapter(directory)
    check_base(meta, base, directory)
    config = CrawdConfig.from_dict(meta["crawd"])
    if meta["lora"] is not None and not isinstance(base, PeftModel):
        base = with_lora(base, LoraConfig(**meta["lora"]))
    config.lora = meta["lora"] is not None
    build = get_method(meta["method"]).build
    if build is None:
        raise ValueError(f"adapter {directory} records method {meta['method']!r}, which trains nothing")
    model = build(base, tokenizer, config)
    shapes = {k: v.shape for k, v in model.trainable_state_dict().items()}
    expected = set(shapes)
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"adapter {directory} does not match this model: missing {missing[:3]}, unexpected {extra[:3]}")
    wrong = [f"{k} {tuple(t.shape)} (this model: {tuple(shapes[k])})" for k, t in tensors.items()
             if t.shape != shapes[k]]
    if wrong:
        raise ValueError(f"adapter {directory} does not match this model (saved by another version of crawd? train it "
                         f"again): {', '.join(wrong[:3])}")
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
