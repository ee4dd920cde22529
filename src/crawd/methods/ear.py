"""The ``ear`` baseline: entropy-based attention regularisation (Attanasio et al. 2022, Findings of ACL).

Loss = task + ``ear_strength`` * R, R = - sum over layers of the mean (over non-padding query
tokens, then examples) entropy of the head-averaged attention rows: minimising R maximises
attention entropy. Strength 0.01 (the paper's alpha). Their code re-applies softmax to the
attention probabilities before the entropy; this takes the entropy of the attention
distribution itself (the paper's equation), restricted to non-padding keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.config import CrawdConfig
from crawd.methods.loss_term import LossTermModel
from crawd.methods.registry import register_method

DEFAULTS: dict[str, Any] = {"ear_strength": 0.01}


def attention_entropy(attentions: Iterable[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """EAR's quantity: sum over layers of the mean entropy of the head-averaged attention rows.

    ``attentions``: one (B, H, n, n) tensor per layer; ``attention_mask``: (B, n).
    Each layer's attention is averaged over heads, each query row (non-padding query)
    is restricted to non-padding keys and renormalised, its entropy -sum a log a is
    taken, averaged over the example's queries, then over the batch; layers are summed.
    """
    mask = attention_mask.bool()
    keys = mask[:, None, :].to(torch.float32)  # (B, 1, n)
    total = 0.0
    for layer in attentions:
        rows = layer.float().mean(1) * keys  # (B, n, n), padding keys dropped
        rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
        entropy = -(rows * rows.clamp_min(1e-12).log()).sum(-1)  # (B, n)
        per_example = (entropy * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        total = total + per_example.mean()
    return total if isinstance(total, torch.Tensor) else torch.tensor(total)


@register_method("ear", "entropy-based attention regularisation, strength 0.01 (Attanasio et al. 2022)")
class EARModel(LossTermModel):
    """Entropy-based attention regularisation (Attanasio et al. 2022): loss = task - alpha * entropy."""

    encode_options: ClassVar[dict[str, Any]] = {"output_attentions": True}

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__(base, tokenizer, config)
        self.strength = float(self.config.extra.get("ear_strength", DEFAULTS["ear_strength"]))
        # attention maps need the eager implementation (sdpa / flash kernels return none)
        self.hf.set_attn_implementation("eager")

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        if not out.attentions:
            raise ValueError("EAR: the backbone returned no attention maps (needs attn_implementation='eager')")
        return -self.strength * attention_entropy(out.attentions, attention_mask)
