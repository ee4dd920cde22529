"""Concept erasure: a LEACE eraser of the sensitive attribute in the representation the head reads.

LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form") is the
affine map x -> x - (x - mu) D^T of least change after which no linear classifier
predicts the attribute from x better than a constant. crawd fits it with EleutherAI's
``concept-erasure`` package on the base's last hidden states H_x of training rows (the
pooled token for classifiers, every token for causal LMs), with the row's sensitive
attribute one-hot as the concept, and applies it to H_x before the block and the head
(so both heads and both modes read the erased states). LoRA moves H_x while it trains, so
the eraser is fitted again every ``erase_refit_steps`` steps (:class:`EraserCallback`).
D and mu are buffers saved with the adapter; before the first fit D = 0, the identity,
so a freshly wrapped model is still exactly its base.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from concept_erasure import LeaceFitter
from torch import nn
from transformers import TrainerCallback


class ConceptEraser(nn.Module):
    """x -> x - (x - mu) D^T, with D (d x d) and mu (d) from :meth:`fit`; the identity until then."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("delta", torch.zeros(hidden_size, hidden_size))
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.active = True  # off while collecting the states the eraser is fitted on

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return hidden
        delta = self.delta.to(hidden.dtype)
        return hidden - (hidden - self.mean.to(hidden.dtype)) @ delta.T

    @torch.no_grad()
    def fit(self, states: torch.Tensor, concept: torch.Tensor) -> None:
        """Fit on ``states`` (N, d) and integer ``concept`` labels (N,)."""
        classes = int(concept.max()) + 1
        if classes < 2 or len(concept.unique()) < 2:
            raise ValueError("concept erasure needs at least two values of the sensitive attribute in the "
                             "training rows it is fitted on")
        onehot = torch.nn.functional.one_hot(concept, classes).double()
        eraser = LeaceFitter.fit(states.double(), onehot).eraser
        self.delta.copy_((eraser.proj_left @ eraser.proj_right).to(self.delta.dtype))
        self.mean.copy_(eraser.bias.to(self.mean.dtype))


class EraserCallback(TrainerCallback):
    """Fit the model's eraser before training and again every ``every`` steps (0: once)."""

    def __init__(self, model: Any, batches: Iterable[dict[str, torch.Tensor]], every: int) -> None:
        self.model, self.batches, self.every = model, list(batches), every

    def fit(self) -> None:
        self.model.fit_eraser(self.batches)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0 or not self.model.eraser.delta.any():
            self.fit()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.fit()
