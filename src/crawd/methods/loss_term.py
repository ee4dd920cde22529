"""LossTermModel: the base of the methods that add a term to the training loss (adversarial, ear, debias_tuning)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from crawd.adapted import AdaptedModel


class LossTermModel(AdaptedModel):
    """An AdaptedModel whose TRAINING loss adds :meth:`penalty`; eval outputs are vanilla's.

    Subclasses set ``encode_options`` (extra backbone outputs the penalty needs) and
    ``extra_inputs`` (batch keys the penalty consumes, e.g. ``sensitive_labels``).
    """

    encode_options: ClassVar[dict[str, Any]] = {}
    extra_inputs: tuple[str, ...] = ()

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor,
                **inputs: Any) -> torch.Tensor | None:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("num_items_in_batch", None)
        inputs = {k: kwargs.pop(k) for k in self.extra_inputs if k in kwargs}
        regularise = self.training and labels is not None
        out = self.encode(input_ids, attention_mask, **kwargs, **(self.encode_options if regularise else {}))
        logits = self.head(out.last_hidden_state, attention_mask)
        loss = self.task_loss(logits, labels)
        if regularise:
            term = self.penalty(out, logits, attention_mask, labels=labels, **inputs)
            if term is not None:
                loss = loss + term
        return self.output(loss, logits, out)
