"""The gendered-word readout: a correction of the paired gendered words' logits where the gender is open.

Two parts, each scaled at every position by ``open_share``, 1 where the text has not given a gender
yet and 0 once it has, as the gender cues say (:mod:`crawd.mitigation.cues`):

* ``even`` (fixed): each side of a pair (he; she, or his, him, Himself; her, hers) has its logits moved so that
  the two sides are (nearly) equally likely and their sum is what it was: where the text leaves the gender
  open, no gender is preferred. Moved a share s x :data:`EVEN_CAP` of the way in log-probability: never
  past the even split and never onto it, so the readout never ties or reverses which side the model prefers
  (after a name the cues miss, the right pronoun stays the more likely one, if it was);
* ``shift`` (P, d, trained): logits[..., t] += s * (h . shift_pair(t)), a linear function of the last
  hidden state h, the same for both sides of a pair, so it changes how likely a gendered word is and
  never which gender (trained by the neutralizing term, zero-started).

Before the cues are fitted every position counts as given (s = 0), so a freshly wrapped model is exactly
its base. The shift also gets the task loss's gradient (it is part of the model: saved in the adapter,
used in generation). Its gradient is scaled by :data:`GRADIENT_SCALE` on its way back, with the value
unchanged: h is large, so its raw gradient is 5 to 15 times the body's early in training, and the global
norm clip would shrink the body's steps with it; Adam's steps do not depend on a gradient's scale, so the
shift trains as it would unscaled, and every clipping path (one process, DDP, FSDP, DeepSpeed) treats the
body alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Factor on the shift's gradient (see the module doc).
GRADIENT_SCALE = 0.01
#: The most of the way to the even split that evening moves a pair: below 1, so that it never ties a pair
#: (a tie after a name the cues miss counts as misgendering: docs/results.md).
EVEN_CAP = 0.99


def scaled_gradient(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``weight`` itself, whose gradient is multiplied by ``scale`` on the way back."""
    return weight.detach() + scale * (weight - weight.detach())


class GenderedReadout(nn.Module):
    """The correction of the paired gendered words' logits (see the module doc).

    Args:
        pair_tokens, pair_valid: (P, 2, S) the pairs' single-token spellings
            (:class:`crawd.mitigation.objective.GenderedPairs`).
        hidden_size: d.
        even: whether the pairs are evened where the gender is open.
        shift: whether the readout has the trained shift.
    """

    def __init__(self, pair_tokens: torch.Tensor, pair_valid: torch.Tensor, hidden_size: int, even: bool,
                 shift: bool) -> None:
        super().__init__()
        pairs = torch.arange(len(pair_tokens))[:, None, None].expand_as(pair_tokens)
        sides = torch.arange(2)[None, :, None].expand_as(pair_tokens)
        self.register_buffer("pair_tokens", pair_tokens, persistent=False)
        self.register_buffer("pair_valid", pair_valid, persistent=False)
        self.register_buffer("tokens", pair_tokens[pair_valid], persistent=False)
        self.register_buffer("pair_of_token", pairs[pair_valid], persistent=False)
        self.register_buffer("side_of_token", sides[pair_valid], persistent=False)
        self.even = even
        self.shift = nn.Parameter(torch.zeros(len(pair_tokens), hidden_size)) if shift else None

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, open_share: torch.Tensor) -> torch.Tensor:
        """``logits`` (..., V) corrected where ``open_share`` (...,) says the gender is open (given ``hidden`` and
        ``logits`` without gradient, only the shift's weight gets one: the neutralizing term trains it alone)."""
        return logits.index_add(-1, self.tokens, self.correction(hidden, logits, open_share).to(logits.dtype))

    def correction(self, hidden: torch.Tensor, logits: torch.Tensor, open_share: torch.Tensor) -> torch.Tensor:
        """(..., T): what the readout adds to the logits of :attr:`tokens` (evening, then the shift)."""
        share = open_share.to(torch.float32)[..., None]
        correction = torch.zeros((), dtype=torch.float32, device=logits.device)
        if self.even:
            sides = logits[..., self.pair_tokens].float().masked_fill(~self.pair_valid, float("-inf")).logsumexp(-1)
            toward = (sides.logsumexp(-1, keepdim=True) - math.log(2.0) - sides)[..., self.pair_of_token,
                                                                                self.side_of_token]
            correction = correction + EVEN_CAP * toward
        if self.shift is not None:
            weight = scaled_gradient(self.shift, GRADIENT_SCALE).to(hidden.dtype)
            correction = correction + (hidden @ weight.T)[..., self.pair_of_token].float()
        return share * correction
