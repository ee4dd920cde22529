"""The CrAWD cross-attention block and its top-K weight decay (paper Eq. 2).

Shapes: B batch, n input length, m reference length, h heads, d hidden size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ceil(top_k * N) in float arithmetic can overshoot an exact integer by one ulp
# (0.7 * 10 = 7.000000000000001); the cut-off count is the mathematical ceiling.
_CEIL_SLACK = 1e-9


def topk_decay(beta: torch.Tensor, valid_mask: torch.Tensor, top_k: float, decay: float) -> torch.Tensor:
    """Multiply the top-K share of valid attention weights by ``decay`` (paper Eq. 2).

    For each leading index of ``beta`` (..., n, m) -- each example and head -- let N be
    the number of valid entries of its n x m slice and k = ceil(top_k * N); tau is the
    k-th largest valid value. Every valid entry >= tau (ties at the cut-off included)
    becomes ``decay * beta``; every other entry is returned unchanged. The cut-off and
    the selection are constants for backpropagation; the gradient flows through the
    kept and the decayed values.

    Args:
        beta: attention weights, shape (..., n, m).
        valid_mask: boolean tensor broadcastable to ``beta``; False marks padding.
        top_k: share K in [0, 1]. 0 returns ``beta`` unchanged.
        decay: factor lambda. 1 returns ``beta`` unchanged.
    """
    if top_k == 0 or decay == 1:
        return beta
    return torch.where(topk_mask(beta, valid_mask, top_k), beta * decay, beta)


@torch.no_grad()
def topk_mask(beta: torch.Tensor, valid_mask: torch.Tensor, top_k: float) -> torch.Tensor:
    """Boolean mask of the entries :func:`topk_decay` decays (same shape as ``beta``)."""
    valid = valid_mask.to(torch.bool).expand_as(beta)
    flat = beta.flatten(-2)
    flat_valid = valid.flatten(-2)
    counts = flat_valid.sum(-1)
    k = torch.ceil(counts.double() * top_k - _CEIL_SLACK).clamp(min=0).long()
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return torch.zeros_like(valid)
    ranked = flat.masked_fill(~flat_valid, float("-inf")).topk(k_max, dim=-1).values
    tau = ranked.gather(-1, (k - 1).clamp(min=0).unsqueeze(-1))
    selected = flat_valid & (flat >= tau) & (k > 0).unsqueeze(-1)
    return selected.view_as(beta)


@torch.no_grad()
def prefix_topk_mask(beta: torch.Tensor, valid_mask: torch.Tensor, top_k: float) -> torch.Tensor:
    """Causal :func:`topk_mask`: the cut-off of row i covers the valid entries of rows <= i only.

    Row i of the result equals row i of ``topk_mask(beta[..., :i + 1, :], ...)``, so no row
    depends on a later one; the last row's cut-off is the per-example one. An entry x of
    row i is selected when fewer than k_i = ceil(top_k * N_i) valid entries of rows <= i are
    strictly larger (x >= tau_i, ties included), N_i the valid entries of rows <= i.
    The counts come from a merge-style pass over the row-major entries (no loop over rows).
    """
    valid = valid_mask.to(torch.bool).expand_as(beta)
    # within a row, larger entries first: every strictly larger entry of rows <= i then
    # precedes x in row-major order, so "larger and earlier" counts exactly what is needed
    values, order = beta.float().masked_fill(~valid, float("-inf")).sort(-1, descending=True)
    larger = _count_larger_before(values.flatten(-2)).view_as(values)
    seen = valid.sum(-1).cumsum(-1)  # (..., n): N_i
    k = torch.ceil(seen.double() * top_k - _CEIL_SLACK).clamp(min=0).long()
    selected = valid.gather(-1, order) & (larger < k.unsqueeze(-1))
    return torch.zeros_like(valid).scatter(-1, order, selected)


def _count_larger_before(x: torch.Tensor) -> torch.Tensor:
    """For each j of the last dim, #{i < j : x[i] > x[j]}; bottom-up merge counting, O(N log^2 N)."""
    n = x.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    x = F.pad(x, (0, size - n), value=float("-inf"))
    counts = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    width = 1
    while width < size:  # log2(size) passes: each right half block against its left half
        pairs = x.unflatten(-1, (size // (2 * width), 2, width))
        left = pairs[..., 0, :].sort(-1).values
        below_or_equal = torch.searchsorted(left, pairs[..., 1, :].contiguous(), right=True)
        counts.unflatten(-1, (size // (2 * width), 2, width))[..., 1, :] += width - below_or_equal
        width *= 2
    return counts[..., :n]


class CrossAttentionBlock(nn.Module):
    """Input positions attend to the reference sequence; the strongest weights decay.

    A = decay(softmax(Q K^T / sqrt(d_head))) V W_O
    H1 = LayerNorm(H_x + A);  H_cross = LayerNorm(H1 + FFN(H1))
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float,
        ffn_dim: int | None,
        top_k: float,
        decay: float,
        topk_scope: str = "example",
        renormalize: bool = False,
        decay_at_inference: bool = True,
        layer_norm_eps: float = 1e-5,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the model's hidden size {hidden_size}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.top_k, self.decay = top_k, decay
        self.topk_scope, self.renormalize, self.decay_at_inference = topk_scope, renormalize, decay_at_inference
        self.causal = causal  # "example" scope: over the prefix of each position (method spec, section 3)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        ffn_dim = ffn_dim or hidden_size
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, hidden_size)
        )
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        for proj in (self.q_proj, self.k_proj, self.v_proj):  # as nn.MultiheadAttention
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.o_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, h, L, d_head)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def attention_weights(self, h_x: torch.Tensor, h_b: torch.Tensor, b_mask: torch.Tensor) -> torch.Tensor:
        """beta = softmax(Q K^T / sqrt(d_head)) over the valid reference positions: (B, h, n, m)."""
        q = self._split(self.q_proj(h_x))  # (B, h, n, dh)
        k = self._split(self.k_proj(h_b))  # (1 or B, h, m, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~b_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1)

    def decayed(self, beta: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Apply Eq. 2 with this block's scope and options; ``valid`` is (B, 1, n, m)."""
        if not (self.training or self.decay_at_inference):
            return beta
        if self.topk_scope == "row":
            out = topk_decay(beta.unsqueeze(-2), valid.unsqueeze(-2), self.top_k, self.decay).squeeze(-2)
        elif self.causal and self.top_k > 0 and self.decay != 1:
            out = torch.where(prefix_topk_mask(beta, valid, self.top_k), beta * self.decay, beta)
        else:
            out = topk_decay(beta, valid, self.top_k, self.decay)
        if self.renormalize:
            out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
        return out

    def forward(
        self,
        h_x: torch.Tensor,
        h_b: torch.Tensor,
        x_mask: torch.Tensor,
        b_mask: torch.Tensor,
        past_beta: torch.Tensor | None = None,
        past_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (H_cross, beta, decayed beta) for the n positions of ``h_x``.

        Args:
            h_x: (B, n, d) last hidden states of the input.
            h_b: (1, m, d) or (B, m, d) last hidden states of the reference sequence.
            x_mask: (B, n) bool, False at padding.
            b_mask: (1 or B, m) bool, False at padding.
            past_beta, past_mask: during cached generation, the weights (B, h, t, m) and
                mask (B, t) of the earlier positions: the cut-off of a new position then
                covers its whole prefix, as a full recomputation does.
        """
        beta = self.attention_weights(h_x, h_b, b_mask)
        valid = x_mask[:, None, :, None] & b_mask[:, None, None, :]
        if past_beta is not None and self.topk_scope == "example":
            t = past_beta.shape[-2]
            full_valid = torch.cat([past_mask[:, None, :, None] & b_mask[:, None, None, :], valid], dim=-2)
            beta_dec = self.decayed(torch.cat([past_beta, beta], dim=-2), full_valid)[..., t:, :]
        else:
            beta_dec = self.decayed(beta, valid)
        v = self._split(self.v_proj(h_b))  # (1 or B, h, m, dh)
        attn = (self.attn_dropout(beta_dec) @ v).transpose(1, 2).flatten(-2)  # (B, n, d)
        h1 = self.norm1(h_x + self.o_proj(attn))
        return self.norm2(h1 + self.ffn(h1)), beta, beta_dec
