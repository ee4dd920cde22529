"""CrawdModel: a base model plus the CrAWD cross-attention block and head.

Forward pass (method spec, section 2), shapes for one batch:
    H_x     = backbone(x)                      (B, n, d)
    H_b     = backbone(b)                      (1, m, d)  once per forward, broadcast
    H_cross = block(H_x, H_b)                  (B, n, d)  decayed cross-attention
    concat head:   logits = Linear(2d -> out)([H_x, H_cross])   started as [W_base, 0]
    residual head: logits = base_head(H_x + H_cross P)          P started at 0
Either start gives exactly the base model's logits.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel
from crawd.block import CrossAttentionBlock
from crawd.config import CrawdConfig
from crawd.sensitive import reference_ids


class CrawdModel(AdaptedModel):
    """A causal LM or sequence classifier with the CrAWD block (use :func:`wrap`)."""

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig) -> None:
        super().__init__(base, tokenizer, config)
        if config.mode != "cross":
            raise ValueError(f"mode={config.mode!r} is not available yet; use mode='cross'")
        d = self.hidden_size
        ref = reference_ids(tokenizer, config.words)
        self.register_buffer("reference_ids", torch.tensor([ref], dtype=torch.long), persistent=False)
        self._reference_cache: tuple[tuple, torch.Tensor] | None = None
        self._base_params: tuple[torch.Tensor, ...] | None = None  # see _weights_key
        dtype = next(self.hf.parameters()).dtype
        self.block = CrossAttentionBlock(
            d, config.num_heads, config.dropout, config.ffn_dim, config.top_k, config.decay,
            config.topk_scope, config.renormalize, config.decay_at_inference, causal=not self.is_encoder,
        ).to(dtype)
        base_out = self.hf.get_output_embeddings() if self.task == "lm" else self.classifier
        if config.head == "concat":
            self.concat_head = nn.Linear(2 * d, base_out.out_features, bias=base_out.bias is not None, dtype=dtype)
            with torch.no_grad():
                self.concat_head.weight.copy_(torch.cat([base_out.weight, torch.zeros_like(base_out.weight)], 1))
                if base_out.bias is not None:
                    self.concat_head.bias.copy_(base_out.bias)
            if self.task == "classification":
                self.classifier.requires_grad_(False)  # replaced by the concat head
        else:
            self.cross_proj = nn.Linear(d, d, bias=False, dtype=dtype)
            nn.init.zeros_(self.cross_proj.weight)
        self.to(next(self.hf.parameters()).device)

    # ---- the reference sequence ---------------------------------------------------------
    def reference_states(self) -> torch.Tensor:
        """H_b (1, m, d): one pass of the base over b; cached in eval while weights are unchanged."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = self._weights_key() if cacheable else None
        if cacheable and self._reference_cache is not None and self._reference_cache[0] == key:
            return self._reference_cache[1]
        ids = self.reference_ids
        h_b = self.encode(ids, torch.ones_like(ids)).last_hidden_state
        self._reference_cache = (key, h_b) if cacheable else None
        return h_b

    def _weights_key(self) -> tuple:
        """Storage and version of every base weight: changes when any of them is modified or moved."""
        # Walking the module tree costs milliseconds (~4 ms per token for SmolLM2, 3% of a generation
        # step), so the parameters are listed once and listed again at every train() / eval().
        if self._base_params is None:
            self._base_params = tuple(self.hf.parameters())
        return tuple((p.data_ptr(), p._version) for p in self._base_params)

    def train(self, mode: bool = True) -> CrawdModel:
        self._base_params = None
        return super().train(mode)

    def cross_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                     state: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_cross, beta, decayed beta) for the given last hidden states."""
        h_b = self.reference_states()
        b_mask = torch.ones(1, h_b.shape[1], dtype=torch.bool, device=h_b.device)
        x_mask = attention_mask.bool()
        past = state.get("beta") if state else None
        h_cross, beta, beta_dec = self.block(hidden, h_b, x_mask, b_mask,
                                             past_beta=past, past_mask=state.get("mask") if state else None)
        if state is not None:
            state["beta"] = beta if past is None else torch.cat([past, beta], dim=-2)
            state["mask"] = x_mask if past is None else torch.cat([state["mask"], x_mask], dim=-1)
        return h_cross, beta, beta_dec

    # ---- head ---------------------------------------------------------------------------
    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        h_cross = self.cross_states(hidden, attention_mask, state)[0]
        if self.config.head == "residual":
            return self.base_head(hidden + self.cross_proj(h_cross), attention_mask)
        if self.task == "lm":
            return self.softcap(self.concat_head(torch.cat([hidden, h_cross], dim=-1)))
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = torch.cat([self.pooled(hidden, attention_mask), h_cross[rows, self.pool_index(attention_mask)]], -1)
        dropout = getattr(self.hf, "dropout", None)
        return self.concat_head(dropout(pooled) if isinstance(dropout, nn.Dropout) else pooled)

    # ---- inspection ---------------------------------------------------------------------
    @torch.no_grad()
    def cross_attention(self, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """beta and the decayed beta, each (batch, heads, n, m), for inspection."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self.encode(input_ids, mask).last_hidden_state
        _, beta, beta_dec = self.cross_states(hidden, mask)
        return beta, beta_dec

    @torch.no_grad()
    def final_representation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the head consumes per position: [H_x, H_cross] (concat) or H_x + H_cross P (residual)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self.encode(input_ids, mask).last_hidden_state
        h_cross = self.cross_states(hidden, mask)[0]
        if self.config.head == "residual":
            return hidden + self.cross_proj(h_cross)
        return torch.cat([hidden, h_cross], dim=-1)


def wrap(base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
         config: CrawdConfig | None = None, **overrides: Any) -> AdaptedModel:
    """Add the CrAWD block to ``base``; a fresh result reproduces the base model's outputs.

    Args:
        base: a causal LM or sequence classifier from transformers (or a peft model).
        tokenizer: its tokenizer (used to encode the reference sensitive sequence).
        config: block settings; ``overrides`` replace single fields (``top_k=0.3``).
            ``mode="self"`` returns a :class:`crawd.self_decay.SelfDecayModel` instead.
    """
    config = config or CrawdConfig()
    if overrides:
        config = CrawdConfig.from_dict({**config.to_dict(), **overrides})
    if config.mode == "self":
        from crawd.self_decay import SelfDecayModel

        return SelfDecayModel(base, tokenizer, config)
    return CrawdModel(base, tokenizer, config)


def adapt(base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
          config: CrawdConfig | None = None) -> AdaptedModel:
    """The ``vanilla`` method: the same LoRA (or full fine-tuning) without the block."""
    return AdaptedModel(base, tokenizer, config)
