"""The ``adversarial`` baseline: adversarial debiasing through gradient reversal.

Zhang et al. 2018 (AIES); Elazar and Goldberg 2018 (EMNLP): an MLP adversary predicts the
sensitive attribute (column ``adv_column``) from the pooled representation through a gradient
reversal layer (Ganin and Lempitsky 2015). Loss = task + ``adv_weight`` *
CE(adversary(GRL_lambda(pooled)), attribute): the encoder gets ``-adv_lambda`` times the
adversary's gradient, the adversary its own. Options in ``CrawdConfig.extra`` (:data:`DEFAULTS`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.config import CrawdConfig
from crawd.methods.loss_term import LossTermModel
from crawd.methods.registry import register_method

DEFAULTS: dict[str, Any] = {
    "adv_column": "gender",  # the training data's column holding the sensitive attribute
    "adv_lambda": 1.0,       # gradient reversal strength
    "adv_weight": 1.0,       # weight of the adversary's loss
    "adv_hidden": 256,       # the adversary's hidden width (ReLU, dropout 0.1)
}


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-lambda`` (Ganin and Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, lambd)


@register_method("adversarial", "adversarial debiasing: adversary on the pooled representation through gradient "
                                "reversal (Zhang et al. 2018; Elazar and Goldberg 2018)")
class AdversarialModel(LossTermModel):
    """Adversarial debiasing: an adversary on the pooled representation, through gradient reversal.

    The adversary's classes are the sorted distinct values of the sensitive column in
    the training data; it is built when :func:`crawd.train.train` hands them over
    (:meth:`sensitive_ids`), or at once from ``extra["adv_values"]``. It is a training
    device only: :meth:`save_pretrained` writes the deployable model without it (a
    ``vanilla`` adapter); training checkpoints keep it, so a resumed run is exact.
    """

    extra_inputs = ("sensitive_labels",)

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__(base, tokenizer, config)
        options = {**DEFAULTS, **self.config.extra}
        self.sensitive_column = options["adv_column"]
        self.lambd = float(options["adv_lambda"])
        self.weight = float(options["adv_weight"])
        self.sensitive_values: list[str] | None = None
        self.adversary: nn.Module | None = None
        if self.config.extra.get("adv_values"):
            self.build_adversary([str(v) for v in self.config.extra["adv_values"]])

    def build_adversary(self, values: list[str]) -> None:
        if len(values) < 2:
            raise ValueError(f"adversarial: the sensitive column {self.sensitive_column!r} needs at least two "
                             f"values in the training data, found {values}")
        hidden = int(self.config.extra.get("adv_hidden", DEFAULTS["adv_hidden"]))
        param = next(self.hf.parameters())
        self.sensitive_values = list(values)
        self.adversary = nn.Sequential(
            nn.Linear(self.hidden_size, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, len(values)),
        ).to(device=param.device, dtype=param.dtype)

    def sensitive_ids(self, values: list[Any]) -> list[int]:
        """Integer ids of the sensitive attribute per training row (builds the adversary once)."""
        values = [str(v) for v in values]
        if self.adversary is None:
            self.build_adversary(sorted(set(values)))
        index = {v: i for i, v in enumerate(self.sensitive_values)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"adversarial: sensitive values {unknown[:5]} were not seen when the adversary was built")
        return [index[v] for v in values]

    def adversary_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.adversary(grad_reverse(self.pooled(hidden, attention_mask), self.lambd))

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor,
                sensitive_labels: torch.Tensor | None = None, **_: Any) -> torch.Tensor | None:
        if sensitive_labels is None or self.adversary is None:
            return None
        adv = self.adversary_logits(out.last_hidden_state, attention_mask)
        return self.weight * F.cross_entropy(adv.float(), sensitive_labels)

    def save_pretrained(self, directory: str) -> None:
        """The deployable model only (LoRA / classifier): loads back with :func:`crawd.load` as vanilla."""
        adversary, self.adversary = self.adversary, None
        try:
            super().save_pretrained(directory)
        finally:
            self.adversary = adversary
