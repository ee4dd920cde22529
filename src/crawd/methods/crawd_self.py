"""``mode="self"``: decay the base model's own attention to the tokens most associated with the reference words b.

No block and no new head. A fixed scoring (each token's similarity to b: isotropy-corrected
input embeddings, or with ``self_scoring="contextual"`` whitened hidden states at a score
layer) selects the top-K% tokens per prefix, and in the chosen layers (default: the last
third) log(lambda) is added to the attention logits of those keys, through transformers'
attention interface (``crawd_sdpa`` / ``crawd_eager``). Why it is built so, and its options
in ``CrawdConfig.extra``: docs/method.md, "mode self in detail".
"""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AttentionInterface, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from crawd.adapted import AdaptedModel
from crawd.block import topk_mask
from crawd.config import CrawdConfig
from crawd.sensitive import reference_ids, word_token_ids

__all__ = ["BIAS_KWARG", "CACHE_ATTR", "CALIBRATION_TEXT", "EXTRA_DEFAULTS", "SCORINGS", "WRAPPED", "DecayBias",
           "SelfDecayModel", "crawd_eager", "crawd_sdpa", "default_layers", "default_score_layer"]

#: keyword argument that carries the bias from ``encode`` down to the attention functions
BIAS_KWARG = "crawd_self_decay"
#: attribute of a KV cache holding the token scores of the positions it covers
CACHE_ATTR = "_crawd_self_decay_scores"
#: attention implementations this mode wraps, and the registered names of the wrappers
WRAPPED = {"sdpa": "crawd_sdpa", "eager": "crawd_eager"}
EXTRA_DEFAULTS = {"self_temperature": 0.1, "self_isotropy_pcs": 1, "self_exclude_special": True,
                  "self_scoring": "embedding", "self_score_layer": None,
                  "self_reference_context": "The person said that", "self_calibration_text": None}
SCORINGS = ("embedding", "contextual")
#: neutral text (no gendered word) whose hidden states give the per-dimension mean and spread used to
#: whiten contextual scores; ``self_calibration_text`` replaces it
CALIBRATION_TEXT = (
    "The city council met on Tuesday to discuss the new budget for roads and public parks. "
    "Several residents asked about the schedule of the buses and the cost of the repairs. "
    "In the afternoon the weather changed, and a light rain fell over the market square. "
    "The report explains how the water system works, which parts are old, and what the plan "
    "will cost over the next ten years. A small team of workers started the project last month. "
    "Students in the science class measured the temperature of the lake every morning and wrote "
    "the results in a table. The museum opens at nine and closes at five, except on holidays. "
    "Fresh bread, cheese and fruit were sold at the stalls near the station."
)


@dataclass
class DecayBias:
    """The decay of one forward pass, read by the wrapped attention functions.

    ``selected`` is (B, 1, q, T): True where a query (one of the q new positions) gives a
    decayed weight to a key (one of the T positions so far); the diagonal is already False.
    With contextual scoring it is None until the hook on the score layer has filled it in.
    """

    selected: torch.Tensor | None
    decay: float
    layers: frozenset[int]

    def mask_for(self, module: torch.nn.Module, mask: torch.Tensor | None, query: torch.Tensor,
                 key: torch.Tensor) -> torch.Tensor | None:
        """The layer's attention mask with log(decay) added on the selected keys (float)."""
        if getattr(module, "layer_idx", None) not in self.layers:
            return mask
        q_len, kv_len = query.shape[-2], key.shape[-2]
        selected = self.selected
        if selected is None:
            raise RuntimeError("mode='self': a decayed layer ran before the contextual scores were computed")
        if selected.shape[-2] != q_len or selected.shape[-1] < kv_len:
            raise ValueError(
                f"mode='self': the attention sees {q_len} queries and {kv_len} keys but the decay was built "
                f"for {selected.shape[-2]} x {selected.shape[-1]}; static or offloaded caches are not supported"
            )
        selected = selected[..., -kv_len:]  # sliding-window caches keep only the latest keys
        low = torch.finfo(query.dtype).min
        value = math.log(self.decay) if self.decay > 0 else low
        bias = torch.where(selected, torch.tensor(value, dtype=query.dtype, device=query.device),
                           torch.zeros((), dtype=query.dtype, device=query.device))
        # hidden keys stay -inf as with a boolean mask (SDPA then returns 0 for a fully masked
        # padding row, as the base does); a float mask (eager) keeps its own finite minimum
        if mask is None:  # SDPA skipped the mask (causal, no padding; q == kv or q == 1)
            if getattr(module, "is_causal", True):
                rows = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
                allowed = rows >= torch.arange(kv_len, device=query.device)[None, :]
                return bias.masked_fill(~allowed, float("-inf"))
            return bias
        if mask.dtype == torch.bool:
            return bias.masked_fill(~mask, float("-inf"))
        return (mask + bias).clamp_min(low)


def _wrapped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, *, original: str, **kwargs: Any) -> Any:
    decay: DecayBias | None = kwargs.pop(BIAS_KWARG, None)
    if decay is not None:
        attention_mask = decay.mask_for(module, attention_mask, query, key)
    if original == "sdpa":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    return eager(module, query, key, value, attention_mask, **kwargs)


def crawd_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with the ``mode="self"`` decay added to the mask."""
    return _wrapped_attention(module, query, key, value, attention_mask, original="sdpa", **kwargs)


def crawd_eager(module, query, key, value, attention_mask, **kwargs):
    """The model's eager attention with the ``mode="self"`` decay added to the mask."""
    return _wrapped_attention(module, query, key, value, attention_mask, original="eager", **kwargs)


AttentionInterface.register("crawd_sdpa", crawd_sdpa)
AttentionInterface.register("crawd_eager", crawd_eager)
AttentionMaskInterface.register("crawd_sdpa", sdpa_mask)
AttentionMaskInterface.register("crawd_eager", eager_mask)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The last third of the layers: the last ceil(L / 3)."""
    return tuple(range(num_layers - math.ceil(num_layers / 3), num_layers))


def default_score_layer(num_layers: int, first_decayed: int) -> int:
    """Contextual scoring reads the states entering layer first_decayed - ceil(L / 10) (SmolLM2: 17)."""
    return max(0, first_decayed - math.ceil(num_layers / 10))


class SelfDecayModel(AdaptedModel):
    """A causal LM or sequence classifier whose own attention to sensitive-associated tokens decays.

    Use :func:`crawd.wrap` with ``CrawdConfig(mode="self")``. Only ``top_k``, ``decay``,
    ``decay_at_inference``, ``self_layers``, the reference words, the LoRA fields and the
    ``self_*`` extras are used; the block and head fields of ``mode="cross"`` are ignored.
    """

    saved_as = "crawd"

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig) -> None:
        super().__init__(base, tokenizer, config)
        if config.mode != "self":
            raise ValueError(f"SelfDecayModel needs mode='self', got mode={config.mode!r}")
        options = dict(EXTRA_DEFAULTS)
        unknown = sorted(k for k in config.extra if k.startswith("self_") and k not in EXTRA_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown mode='self' option(s) in extra: {', '.join(unknown)}; "
                             f"known: {', '.join(EXTRA_DEFAULTS)}")
        options.update({k: v for k, v in config.extra.items() if k in EXTRA_DEFAULTS})
        if not options["self_temperature"] > 0:
            raise ValueError(f"self_temperature must be positive, got {options['self_temperature']!r}")
        if options["self_scoring"] not in SCORINGS:
            raise ValueError(f"self_scoring must be one of {', '.join(SCORINGS)}, got {options['self_scoring']!r}")
        self.options = options
        self.contextual = options["self_scoring"] == "contextual"

        num_layers = self.hf.config.num_hidden_layers
        if config.self_layers is None:
            layers = default_layers(num_layers)
        else:
            bad = [i for i in config.self_layers if not -num_layers <= i < num_layers]
            if bad:
                raise ValueError(f"self_layers {bad} out of range: the base model has {num_layers} layers")
            layers = tuple(sorted({i % num_layers for i in config.self_layers}))
        self.decayed_layers: tuple[int, ...] = layers

        impl = self.hf.config._attn_implementation
        if impl not in WRAPPED and impl not in WRAPPED.values():
            raise ValueError(
                f"mode='self' adds a bias to the attention logits, which needs attn_implementation 'sdpa' or "
                f"'eager'; this model uses {impl!r} (load it with attn_implementation='sdpa')"
            )
        if impl in WRAPPED:
            self.hf.set_attn_implementation(WRAPPED[impl])

        ref = reference_ids(tokenizer, config.words)
        self.register_buffer("reference_ids", torch.tensor([ref], dtype=torch.long), persistent=False)
        table, candidates = self._build_tables(tokenizer)
        self.register_buffer("score_table", table, persistent=False)
        self.register_buffer("candidate_table", candidates, persistent=False)
        self._pending: dict | None = None  # the running encode's state, read by the score-layer hook
        self.score_layer: int | None = None
        if self.contextual:
            self._setup_contextual(tokenizer, num_layers)

    # ---- scoring ------------------------------------------------------------------------
    @torch.no_grad()
    def _corrected_embeddings(self) -> torch.Tensor:
        """Input embeddings minus the mean and the top principal direction(s), unit norm (V, d)."""
        emb = self.hf.get_input_embeddings().weight.detach().float()
        centred = emb - emb.mean(0)
        pcs = int(self.options["self_isotropy_pcs"])
        if pcs > 0:
            # deterministic top principal directions: eigenvectors of the d x d covariance
            _, vectors = torch.linalg.eigh(centred.T @ centred)
            top = vectors[:, -pcs:]
            centred = centred - (centred @ top) @ top.T
        return F.normalize(centred, dim=-1)

    @torch.no_grad()
    def _build_tables(self, tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self._corrected_embeddings()
        beta = self._beta(emb, emb[self.reference_ids[0]])
        table = beta.max(-1).values
        candidates = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
        if self.options["self_exclude_special"]:
            special = [i for i in tokenizer.all_special_ids if i is not None and 0 <= i < emb.shape[0]]
            candidates[special] = False
        return table, candidates

    def _beta(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        cos = queries @ keys.T  # (..., m)
        if keys.shape[0] == 1:
            return cos
        return (cos / self.options["self_temperature"]).softmax(-1)

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Association score of each token with the reference sequence, (B, n).

        Contextual scoring: one undecayed pass of the backbone (the states at the score layer
        do not depend on the decay, which starts at or after it), for inspection and tests;
        the forward pass computes the same scores inside its own pass.
        """
        if self.contextual:
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            return self.contextual_scores(self._layer_states(input_ids, mask))
        return self.score_table[input_ids]

    # ---- contextual scoring -------------------------------------------------------------
    def _decoder_layers(self) -> torch.nn.ModuleList:
        n = self.hf.config.num_hidden_layers
        for module in self.backbone.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == n:
                return module
        raise ValueError(f"mode='self', self_scoring='contextual': cannot find the {n} layers of "
                         f"{type(self.backbone).__name__}")

    @torch.no_grad()
    def _layer_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      base_only: bool = False) -> torch.Tensor:
        """Hidden states entering the score layer, without any decay, (B, n, d)."""
        disable = getattr(self.base, "disable_adapter", None) if base_only else None
        with disable() if disable is not None else _nullcontext():
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[self.score_layer]

    @torch.no_grad()
    def _setup_contextual(self, tokenizer: PreTrainedTokenizerBase, num_layers: int) -> None:
        first = min(self.decayed_layers)
        layer = self.options["self_score_layer"]
        if layer is None:
            layer = default_score_layer(num_layers, first)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= first:
            raise ValueError(f"self_score_layer must be an integer in [0, {first}] (the first decayed layer: the "
                             f"scores are read on the way in to that layer), got {layer!r}")
        self.score_layer = layer
        device = self.reference_ids.device
        start = [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None][:1]
        plain = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []  # noqa: E731
        # whitening statistics: per-dimension mean and spread over a neutral text (the start token and
        # the first real token, whose states are outliers in most decoders, left out)
        text = self.options["self_calibration_text"] or CALIBRATION_TEXT
        limit = getattr(self.hf.config, "max_position_embeddings", None) or getattr(self.hf.config, "n_positions", None)
        ids = (start + plain(text))[:limit]  # (the text is cut to the model's positions)
        ids = torch.tensor([ids], device=device)
        calib = self._layer_states(ids, torch.ones_like(ids), base_only=True)[0, len(start) + 1:].float()
        if calib.shape[0] < 2:
            raise ValueError("self_calibration_text is too short: give at least a sentence")
        mean, std = calib.mean(0), calib.std(0).clamp_min(1e-6)
        # reference states: each sensitive word after the neutral context, its last piece
        context = plain(self.options["self_reference_context"])
        refs = []
        for word in self.config.words:
            ids = torch.tensor([start + context + word_token_ids(tokenizer, word)], device=device)
            refs.append(self._layer_states(ids, torch.ones_like(ids), base_only=True)[0, -1].float())
        refs = (torch.stack(refs) - mean) / std
        if refs.shape[0] > 1:  # what tells the words apart: each minus their mean (m = 2: +-(she - he) / 2)
            refs = refs - refs.mean(0)
        self.register_buffer("calibration_mean", mean, persistent=False)
        self.register_buffer("calibration_std", std, persistent=False)
        self.register_buffer("reference_states", F.normalize(refs, dim=-1), persistent=False)
        self._decoder_layers()[layer].register_forward_pre_hook(self._score_hook, with_kwargs=True)

    def contextual_beta(self, hidden: torch.Tensor) -> torch.Tensor:
        """beta (..., m) of the whitened hidden states over the whitened, centred reference states."""
        z = (hidden.float() - self.calibration_mean) / self.calibration_std
        return self._beta(F.normalize(z, dim=-1), self.reference_states).nan_to_num(0.0)

    def contextual_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """score_i = max_s beta_is of the states entering the score layer, (B, n); m = 1: |cos|."""
        beta = self.contextual_beta(hidden)
        return beta.abs().max(-1).values if beta.shape[-1] == 1 else beta.max(-1).values

    def _score_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        pending = self._pending
        if pending is None:  # the backbone called directly, or an inspection pass: nothing to do
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            scores = self.contextual_scores(hidden.detach())
            if pending["past"] is not None:
                scores = torch.cat([pending["past"], scores], dim=-1)
            pending["scores"] = scores
            if pending["bias"] is not None:
                pending["bias"].selected = self.select(scores, pending["valid"], hidden.shape[1])[:, None]

    # ---- selection ----------------------------------------------------------------------
    @property
    def decay_active(self) -> bool:
        cfg = self.config
        return cfg.top_k > 0 and cfg.decay < 1 and (self.training or cfg.decay_at_inference)

    def select(self, scores: torch.Tensor, valid: torch.Tensor, num_queries: int) -> torch.Tensor:
        """Keys decayed for the last ``num_queries`` positions: (B, q, T) bool, diagonal False.

        Args:
            scores: (B, T) token scores of all positions so far.
            valid: (B, T) bool, the candidates (not padding, not special).
            num_queries: q, the new positions (the last q of the T).
        """
        batch, total = scores.shape
        start = total - num_queries
        keys = torch.arange(total, device=scores.device)
        rows = torch.arange(start, total, device=scores.device)
        if self.is_encoder:  # bidirectional: one cut-off over the whole example
            selected = topk_mask(scores[:, None, None, :], valid[:, None, None, :], self.config.top_k)[:, 0]
            selected = selected.expand(batch, num_queries, total)
        else:  # each query's cut-off covers the candidates it can see: positions <= its own
            visible = valid[:, None, :] & (keys[None, None, :] <= rows[None, :, None])
            flat = scores[:, None, None, :].expand(batch, num_queries, 1, total)
            selected = topk_mask(flat, visible[:, :, None, :], self.config.top_k)[:, :, 0]
        return selected & (keys[None, None, :] != rows[None, :, None])

    def _past_scores(self, cache: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if cache is None:
            return None
        length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        if length == 0:
            return None
        stored = getattr(cache, CACHE_ATTR, None)
        if stored is None or stored[0].shape[-1] < length or stored[0].shape[0] != batch:
            raise ValueError("mode='self' needs the KV cache returned by this model's own forward/encode "
                             "(it carries the token scores of the cached positions)")
        return stored[0][:, :length], stored[1][:, :length]

    # ---- forward ------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        """Run the backbone with the decay in the chosen layers (see the module doc)."""
        cache = kwargs.get("cache")
        candidates = self.candidate_table[input_ids]
        past = self._past_scores(cache, input_ids.shape[0])
        scores = None if self.contextual else self.token_scores(input_ids)
        if past is not None:
            candidates = torch.cat([past[1], candidates], dim=-1)
            if scores is not None:
                scores = torch.cat([past[0], scores], dim=-1)
        total = candidates.shape[-1]
        bias = None
        if self.decay_active:
            if attention_mask.shape[-1] != total:
                raise ValueError(f"mode='self': attention_mask covers {attention_mask.shape[-1]} positions, "
                                 f"the input and the cache {total}")
            valid = candidates & attention_mask.bool()
            selected = None if self.contextual else self.select(scores, valid, input_ids.shape[1])[:, None]
            bias = DecayBias(selected, self.config.decay, frozenset(self.decayed_layers))
            kwargs[BIAS_KWARG] = bias
        if self.contextual:  # the hook on the score layer computes the scores and the selection
            self._pending = {"past": None if past is None else past[0], "bias": bias, "scores": None,
                             "valid": valid if bias is not None else None}
            try:
                out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            finally:
                pending, self._pending = self._pending, None
            scores = pending["scores"]
            if scores is None:
                raise RuntimeError(f"mode='self': the hook on layer {self.score_layer} did not run")
        else:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is not None:
            setattr(new_cache, CACHE_ATTR, (scores, candidates))
        return self.erased(out)

    # ---- inspection ---------------------------------------------------------------------
    @torch.no_grad()
    def scoring_attention(self, input_ids: torch.Tensor) -> torch.Tensor:
        """beta of the scoring cross-attention, (batch, 1, n, m): softmax over the reference tokens
        (contextual scoring: over the reference words; m = 1: the cosine)."""
        if self.contextual:
            return self.contextual_beta(self._layer_states(input_ids, torch.ones_like(input_ids))).unsqueeze(1)
        emb = self._corrected_embeddings().to(self.score_table.device)
        return self._beta(emb[input_ids], emb[self.reference_ids[0]]).unsqueeze(1)

    @torch.no_grad()
    def association_scores(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's score, (batch, n); padding and special tokens (never decayed) are -inf."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        valid = self.candidate_table[input_ids] & mask.bool()
        return self.token_scores(input_ids, mask).masked_fill(~valid, float("-inf"))

    @torch.no_grad()
    def decayed_keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     per_query: bool = False) -> torch.Tensor:
        """Selected tokens: (batch, n) as seen from the last position (encoders: by every query),
        the top-K% of the whole example; ``per_query=True`` gives (batch, n, n), query x key,
        diagonal excluded, exactly what the decayed layers use."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        scores = self.token_scores(input_ids, mask)
        valid = self.candidate_table[input_ids] & mask.bool()
        if per_query:
            return self.select(scores, valid, input_ids.shape[1])
        return topk_mask(scores[:, None, :], valid[:, None, :], self.config.top_k)[:, 0]

    @torch.no_grad()
    def cross_attention(self, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta, beta with the rows of the decayed tokens times lambda), each (batch, 1, n, m).

        The same shape as :meth:`crawd.CrawdModel.cross_attention`, for ``crawd inspect``; in
        this mode the decay acts on the base's self-attention, not on beta.
        """
        beta = self.scoring_attention(input_ids)
        rows = self.decayed_keys(input_ids, attention_mask)[:, None, :, None]
        return beta, torch.where(rows, beta * self.config.decay, beta)
