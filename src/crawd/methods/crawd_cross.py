"""CrawdModel: a base model plus the CrAWD cross-attention block and head.

Forward pass (method spec, section 2), shapes for one batch:
    H_x     = backbone(x)                      (B, n, d)
    H_b     = backbone(b)                      (1, m, d)  once per forward, broadcast
              (in the same backbone call as x, see CrawdModel.encode_with_reference;
              in eval without gradients, cached while nothing that changes it changed)
    H_cross = block(H_x, H_b)                  (B, n, d)  decayed cross-attention
    concat head:   logits = Linear(2d -> out)([H_x, H_cross])   started as [W_base, 0]
    residual head: logits = base_head(H_x + H_cross P)          P started at 0
Either start gives exactly the base model's logits.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask, packed_sequence_mask_function
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, SequenceClassifierOutput

from crawd.adapted import AdaptedModel
from crawd.block import CrossAttentionBlock
from crawd.config import CrawdConfig
from crawd.sensitive import reference_ids

logger = logging.getLogger(__name__)


class CrawdModel(AdaptedModel):
    """A causal LM or sequence classifier with the CrAWD block (use :func:`crawd.wrap`)."""

    saved_as = "crawd"

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
        self._adapter_layers: tuple[nn.Module, ...] = ()
        self._adapter_listed: tuple = ()
        self._packing: tuple[str, bool] | None = None  # (attention implementation, H_b can share the pass)
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
        if not any(p.is_meta for p in self.hf.parameters()):
            self.shares_reference_pass()  # checked now, so that no training step pays for it

    # ---- the reference sequence ---------------------------------------------------------
    def _cacheable(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def reference_states(self) -> torch.Tensor:
        """H_b (1, m, d): one pass of the base over b; cached in eval while nothing that changes it changed."""
        cacheable = self._cacheable()
        key = self._weights_key() if cacheable else None
        if cacheable and self._reference_cache is not None and self._reference_cache[0] == key:
            return self._reference_cache[1]
        ids = self.reference_ids
        h_b = self.encode(ids, torch.ones_like(ids)).last_hidden_state
        self._reference_cache = (key, h_b) if cacheable else None
        return h_b

    def _weights_key(self) -> tuple:
        """Everything H_b depends on: the storage and version of every base weight (changes when one is
        modified in place or moved), the reference ids, and the state of every adapter layer (enabled,
        active adapters, merged adapters, scaling): ``disable_adapter()``, ``set_adapter`` and merging
        change H_b without touching a weight's version."""
        # Walking the module tree costs milliseconds (~4 ms per token for SmolLM2, 3% of a generation
        # step), so the parameters and adapter layers are listed once, and listed again at every
        # train() / eval() and whenever the adapter layers' state changed (an added adapter brings
        # new weights).
        adapters = tuple(_adapter_state(layer) for layer in self._adapter_layers)
        if self._base_params is None or adapters != self._adapter_listed:
            self._base_params = tuple(self.hf.parameters())
            self._adapter_layers = tuple(m for m in self.hf.modules()
                                         if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)))
            adapters = self._adapter_listed = tuple(_adapter_state(layer) for layer in self._adapter_layers)
        ref = self.reference_ids
        erased = None if self.eraser is None else (self.eraser.active, self.eraser.delta._version,
                                                    self.eraser.mean._version)
        return (adapters, erased, (ref.data_ptr(), ref._version, tuple(ref.shape)),
                tuple((p.data_ptr(), p._version) for p in self._base_params))

    def train(self, mode: bool = True) -> CrawdModel:
        self._base_params = None
        return super().train(mode)

    # ---- one backbone call for x and b ---------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | SequenceClassifierOutput:
        """As :meth:`AdaptedModel.forward`. When H_b is not served from the eval cache (training, or
        gradients on), it comes from the same backbone call as H_x (:meth:`encode_with_reference`).

        That shared call returns no KV cache (``cache`` is None); generation, calls with
        backbone options (``kwargs``) and training with the mitigation's terms (which add their own
        rows) take the two-call path."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.pop("num_items_in_batch", None)  # passed by the Trainer
        mitigating = self.mitigation is not None and self.training and labels is not None
        if kwargs or mitigating or self._cacheable():
            return super().forward(input_ids, attention_mask, labels, **kwargs)
        tracking = contextlib.nullcontext(None) if self.mitigation is None else self.mitigation.capturing(input_ids)
        with tracking as captured:
            joint = self.encode_with_reference(input_ids, attention_mask)
        if joint is None:
            return super().forward(input_ids, attention_mask, labels, **kwargs)
        hidden, h_b = joint
        logits = self.head(hidden, attention_mask, cue_input=captured, reference=h_b)  # b's columns: cut by the readout
        return self.output(self.task_loss(logits, labels), logits, BaseModelOutputWithPast(last_hidden_state=hidden))

    def encode_with_reference(self, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(H_x, H_b) from ONE backbone call; None where this model or batch cannot share it.

        b is packed into the batch as a second sequence: into the right padding of the row with
        the most padding when there is room for its m tokens (no extra token at all), else
        behind every row (B x m more tokens). Its positions restart at 0 and it neither sees
        nor is seen by x, so H_b and H_x are what separate calls give, up to the float rounding
        of differently shaped kernels. Decoders use transformers' packed-sequence masks
        (restarting ``position_ids`` and no 2D mask, which also keeps sliding windows right);
        that needs the padding of x on the right, where causal attention never looks, so a
        left-padded batch returns None. Encoders get a 4D mask from transformers' own mask
        builder with the padding of x and the two sequences. Models whose attention honours
        neither form (checked once, :meth:`shares_reference_pass`) return None.
        """
        lengths = attention_mask.long().sum(-1)
        host = lengths.argmin()
        right_padded = (attention_mask[:, 1:] <= attention_mask[:, :-1]).all()
        right_padded, host, free_from = torch.stack([right_padded.long(), host, lengths[host]]).tolist()  # one sync
        if not (self.is_encoder or right_padded) or not self.shares_reference_pass():
            return None  # a left-padded decoder batch needs its 2D mask, which the packed form drops
        n, m = input_ids.shape[1], self.reference_ids.shape[1]
        start = free_from if right_padded and free_from + m <= n else n
        hidden = self._packed_pass(input_ids, attention_mask, host, start)
        if self.eraser is not None:
            hidden = self.eraser(hidden)
        if start == n:
            host = 0
        h_x = hidden if hidden.shape[1] == n else hidden[:, :n].contiguous()  # a strided view slows the matmuls
        return h_x, hidden[host:host + 1, start:start + m]

    def _packed_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, host: int,
                     start: int) -> torch.Tensor:
        """Last hidden states of x with b packed in (see :meth:`encode_with_reference`): at columns
        ``start:start + m`` of row ``host``, in its right padding, or (``start`` = n) behind every row."""
        (rows, n), m = input_ids.shape, self.reference_ids.shape[1]
        device = input_ids.device
        positions = torch.arange(n, device=device).repeat(rows, 1)
        sequence = torch.ones(rows, n, dtype=torch.long, device=device)  # 1 on x, 2 from b's first column
        valid = attention_mask.bool()
        if start < n:  # b fits into the padding of row ``host``: x keeps its shape
            ids = input_ids.clone()
            ids[host, start:start + m] = self.reference_ids[0]
            positions[host, start:] -= start
            sequence[host, start:] = 2
            valid = valid.clone()
            valid[host, start:start + m] = True
        else:  # behind every row
            ids = torch.cat([input_ids, self.reference_ids.expand(rows, m)], dim=1)
            positions = torch.cat([positions, torch.arange(m, device=device).expand(rows, m)], dim=1)
            sequence = torch.cat([sequence, sequence.new_full((rows, m), 2)], dim=1)
            valid = torch.cat([valid, valid.new_ones(rows, m)], dim=1)
        if not self.is_encoder:
            return self.backbone(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        embeds = self.hf.get_input_embeddings().weight
        # only shape, dtype and device of ``inputs_embeds`` are read
        mask = create_bidirectional_mask(config=self.hf.config, inputs_embeds=embeds.new_empty(*ids.shape, 0),
                                         attention_mask=valid, and_mask_function=packed_sequence_mask_function(sequence))
        return self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state

    @torch.no_grad()
    def shares_reference_pass(self) -> bool:
        """Whether H_b can share the backbone call of x: checked once per attention implementation.

        b is packed behind other tokens (ids + 1) in row 0 and behind itself in row 1; both the
        packed b of row 0 and the first m states of row 1 (b as x, with explicit positions 0..m-1)
        must equal b's own pass through the backbone. A model that ignores the restarted positions
        or the mask (b would see the other tokens), counts positions its own way (RoBERTa starts
        after the padding index) or takes no ``position_ids`` fails, keeps two calls and says so.
        """
        impl = str(self.hf.config._attn_implementation)
        if self._packing is None or self._packing[0] != impl:
            modes = {module: module.training for module in self.backbone.modules()}
            self.backbone.eval()  # no dropout in the comparison
            try:
                ref, m = self.reference_ids, self.reference_ids.shape[1]
                alone = self.encode(ref, torch.ones_like(ref)).last_hidden_state[0].float()
                other = (ref + 1) % self.hf.get_input_embeddings().weight.shape[0]
                hidden = self._packed_pass(torch.cat([other, ref]), torch.ones(2, m, dtype=torch.long,
                                                                                device=ref.device), 0, m).float()
                tolerance = 1e-2 * alone.abs().max().clamp_min(1e-6)
                ok = all(bool((h - alone).abs().max() <= tolerance) for h in (hidden[0, m:], hidden[1, :m]))
                reason = "its packed states differ from a pass of their own"
            except Exception as err:  # a capability probe: any failure means "not supported"
                ok, reason = False, f"{type(err).__name__}: {str(err).strip()[:200]}"
            finally:
                for module, mode in modes.items():
                    module.training = mode
            if not ok:
                logger.warning("%s: H_b keeps a backbone call of its own in training (%s)", type(self.hf).__name__,
                               reason)
            self._packing = (impl, ok)
        return self._packing[1]

    def cross_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: dict | None = None,
                     reference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_cross, beta, decayed beta) for the given last hidden states (``reference``: H_b, if computed)."""
        h_b = self.reference_states() if reference is None else reference
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
    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor, state: dict | None = None,
                    reference: torch.Tensor | None = None) -> torch.Tensor:
        h_cross = self.cross_states(hidden, attention_mask, state, reference)[0]
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


def _adapter_state(layer: nn.Module) -> tuple:
    """What of a peft adapter layer changes its output besides its weights."""
    scaling = getattr(layer, "scaling", None)
    return (layer.disable_adapters, tuple(layer.active_adapters), tuple(getattr(layer, "merged_adapters", ())),
            tuple(sorted(scaling.items())) if isinstance(scaling, dict) else None)

