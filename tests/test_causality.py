"""No causal-LM output depends on a later token: every architecture, both heads, mode="self".

Two inputs share their first j tokens and differ after; the logits at positions < j must be
bit-identical (float32), in eval mode and in training mode (dropout masks drawn from the
same seed for both inputs, which have the same shape).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import crawd
from crawd import CrawdConfig

ARCHS = ("llama", "gpt2", "qwen2", "mistral", "gemma")
VARIANTS = {
    "concat": {"head": "concat"},
    "residual": {"head": "residual"},
    "concat-decay0": {"head": "concat", "decay": 0.0},
    "self": {"mode": "self"},
    "self-contextual": {"mode": "self", "extra": {"self_scoring": "contextual", "self_score_layer": 0},
                        "self_layers": (1,)},
}


def moved(model: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Every trained weight moved off its exact start, so the check is not vacuous."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)  # the same dropout masks for inputs of the same shape
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_before_j_ignore_tokens_from_j_on(arch, variant, training, tokenizer):
    model = moved(crawd.wrap(tiny_model(arch), tokenizer, CrawdConfig(num_heads=4, **VARIANTS[variant])))
    model.train(training)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, len(tokenizer), (2, 12), generator=gen)
    with torch.no_grad():
        reference = logits(model, ids)
        for j in (1, 4, 9):
            other = ids.clone()
            other[:, j:] = torch.randint(3, len(tokenizer), (2, 12 - j), generator=gen)
            changed = logits(model, other)
            assert torch.equal(changed[:, :j], reference[:, :j]), f"position < {j} changed"
            assert not torch.equal(changed[:, j:], reference[:, j:])  # later positions do see the change
