"""The ``crawd`` method: CrAWD in the mode its config names (cross: the paper's block, self: in-attention decay)."""

from __future__ import annotations

from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel
from crawd.config import CrawdConfig
from crawd.methods.crawd_cross import CrawdModel
from crawd.methods.crawd_self import SelfDecayModel
from crawd.methods.registry import register_method

#: the model class of each ``CrawdConfig.mode``
MODES: dict[str, type[AdaptedModel]] = {"cross": CrawdModel, "self": SelfDecayModel}


@register_method("crawd", "CrAWD: decayed cross-attention to the sensitive reference sequence "
                          "(mode='self': decayed self-attention to associated tokens)")
def wrap(base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
         config: CrawdConfig | None = None, **overrides: Any) -> AdaptedModel:
    """Add CrAWD to ``base``; a fresh result reproduces the base model's outputs.

    Args:
        base: a causal LM or sequence classifier from transformers (or a peft model).
        tokenizer: its tokenizer (used to encode the reference sensitive sequence).
        config: block settings; ``overrides`` replace single fields (``top_k=0.3``).
            ``mode="cross"`` gives a :class:`~crawd.methods.crawd_cross.CrawdModel`,
            ``mode="self"`` a :class:`~crawd.methods.crawd_self.SelfDecayModel`.
    """
    config = config or CrawdConfig()
    if overrides:
        config = CrawdConfig.from_dict({**config.to_dict(), **overrides})
    return MODES[config.mode](base, tokenizer, config)
