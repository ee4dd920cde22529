"""The ``vanilla`` method: the base model with the same LoRA (or full fine-tuning) and no block."""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel
from crawd.config import CrawdConfig
from crawd.methods.registry import register_method


@register_method("vanilla", "plain fine-tuning with the same LoRA, no block")
def adapt(base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
          config: CrawdConfig | None = None) -> AdaptedModel:
    """The ``vanilla`` method: the same LoRA (or full fine-tuning) without the block."""
    return AdaptedModel(base, tokenizer, config)
