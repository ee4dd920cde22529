"""``mode="self"``: decay the base model's own attention to the tokens most associated with b.

The abstract of the paper speaks of decaying "the attention weights of tokens associated
with sensitive tokens"; this module builds that reading (method spec, section 7). No block
and no new head are added: the base model is changed only inside its self-attention.

Forward pass, shapes for one batch (B batch, n tokens, m reference tokens, V vocabulary):

1. Scoring (fixed, no parameters). A cross-attention between the input tokens and the
   reference sequence b scores every token:
       e_v      = isotropy-corrected input embedding of token v: the base's embedding row,
                  minus the vocabulary mean, minus its projection on the top principal
                  direction(s) of the embedding matrix, then unit-normalised          (V, d)
       beta_i   = softmax_s( cos(e_{x_i}, e_{b_s}) / T )                              (n, m)
       score_i  = max_s beta_is        (m = 1: the cosine itself, as beta is then 1)  (n,)
   A token scores high when it leans towards ONE reference word (he vs she, ...): the
   gendered words themselves score highest, neutral words ("the", "they") near 1/m. The
   score depends on the token id only, so it is one lookup in a (V,) table built at
   initialisation (``score_table``).
2. Selection (paper Eq. 2's cut-off rule, :func:`crawd.block.topk_mask`). Candidates are the
   non-padding, non-special tokens. For causal models the cut-off of a query at position i
   covers the candidates at positions <= i: k = ceil(K * N_i), tau the k-th largest score,
   every candidate >= tau is selected (ties included). The last position therefore sees the
   top-K% of the whole example; earlier positions see the top-K% of their prefix. A cut-off
   over the whole sequence would leak future tokens into training (which keys are decayed
   would depend on tokens not yet seen) and could not be reproduced by cached generation.
   Encoders (bidirectional attention) use one cut-off over the whole example.
3. Decay. In the chosen layers (default: the last third, ``ceil(L / 3)`` layers) every
   attention weight that a query gives to a selected key OTHER than itself is multiplied by
   lambda and the row renormalised, i.e. log(lambda) is added to those logits (method spec,
   section 4). lambda = 0 masks them (the finite minimum of the dtype); a query's own key
   is never decayed, so no row loses its last visible key.

The bias travels through transformers' attention interface: the base model is switched to
the registered implementation ``"crawd_sdpa"`` (or ``"crawd_eager"``), which adds the bias to
the attention mask of the chosen layers and then calls transformers' own SDPA (or eager)
function; every other layer, and every call without a bias, is the original function
unchanged. Masks are built exactly as for ``"sdpa"`` / ``"eager"``.

Why this scoring (and why it is not trained):
  * The top-K selection is a constant for backpropagation (as tau is in ``mode="cross"``),
    so the language-model loss gives a scoring cross-attention no gradient: trained Q/K
    weights would stay at their random start. The scoring is therefore fixed and
    similarity-based, with no parameters; LoRA (the only trained part) learns around the
    decay.
  * Input embeddings, not hidden states: the score of a token is the same wherever it
    occurs, does not drift while LoRA trains, costs one table lookup, and makes cached
    generation trivially equal to recomputation. Raw embeddings of real models share a
    strong "frequent token" direction (in SmolLM2-135M, "the", "is", "in" have cosine
    ~0.7 with "he"); removing the mean and the top principal direction (Mu & Viswanath,
    "all-but-the-top", 2018) leaves the gendered words (his, her, him, husband, woman,
    Mary) as the clear top and function words near neutral.
  * What this can and cannot do against occupation-pronoun skew: static embeddings of a
    small model carry little gender for occupation words (in SmolLM2 "nurse" and
    "engineer" are near neutral), so in "The nurse said that" no token is strongly
    associated and the top-K% falls on the least neutral words ("The", "that"); untrained,
    with the defaults, p(she) / (p(she) + p(he)) after it moved from 0.83 to 0.87. In bios
    the selection is the explicit cues (Sarah, She, her, He, his, him) plus, at K = 40%,
    function words. The decay therefore acts on explicit gender cues in context. One
    caveat for training on skewed bios: a model that cannot read gender from the name or
    an earlier pronoun in its upper layers may lean MORE on the occupation to predict
    the next pronoun, so whether this lowers the skew is an empirical question (spec,
    section 7). ``score_table`` is a plain (V,) buffer that can be replaced, e.g. by a
    corpus co-occurrence statistic with the sensitive words (which would rank "nurse"
    high and decay the occupation-to-pronoun path), without touching the rest.

Options (``CrawdConfig.extra``): ``self_temperature`` (T, default 0.1),
``self_isotropy_pcs`` (principal directions removed, default 1), ``self_exclude_special``
(special tokens are never decayed, default True: BOS is the usual attention sink).
"""

from __future__ import annotations

import math
import sys
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
from crawd.sensitive import reference_ids

#: keyword argument that carries the bias from ``encode`` down to the attention functions
BIAS_KWARG = "crawd_self_decay"
#: attribute of a KV cache holding the token scores of the positions it covers
CACHE_ATTR = "_crawd_self_decay_scores"
#: attention implementations this mode wraps, and the registered names of the wrappers
WRAPPED = {"sdpa": "crawd_sdpa", "eager": "crawd_eager"}
EXTRA_DEFAULTS = {"self_temperature": 0.1, "self_isotropy_pcs": 1, "self_exclude_special": True}


@dataclass
class DecayBias:
    """The decay of one forward pass, read by the wrapped attention functions.

    ``selected`` is (B, 1, q, T): True where a query (one of the q new positions) gives a
    decayed weight to a key (one of the T positions so far); the diagonal is already False.
    """

    selected: torch.Tensor
    decay: float
    layers: frozenset[int]

    def mask_for(self, module: torch.nn.Module, mask: torch.Tensor | None, query: torch.Tensor,
                 key: torch.Tensor) -> torch.Tensor | None:
        """The layer's attention mask with log(decay) added on the selected keys (float)."""
        if getattr(module, "layer_idx", None) not in self.layers:
            return mask
        q_len, kv_len = query.shape[-2], key.shape[-2]
        selected = self.selected
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


class SelfDecayModel(AdaptedModel):
    """A causal LM or sequence classifier whose own attention to sensitive-associated tokens decays.

    Use :func:`crawd.wrap` with ``CrawdConfig(mode="self")``. Only ``top_k``, ``decay``,
    ``decay_at_inference``, ``self_layers``, the reference words, the LoRA fields and the
    ``self_*`` extras are used; the block and head fields of ``mode="cross"`` are ignored.
    """

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
        self.options = options

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

    def token_scores(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Association score of each token with the reference sequence, (B, n)."""
        return self.score_table[input_ids]

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
        cache = kwargs.get("past_key_values")
        scores = self.token_scores(input_ids)
        candidates = self.candidate_table[input_ids]
        past = self._past_scores(cache, input_ids.shape[0])
        if past is not None:
            scores = torch.cat([past[0], scores], dim=-1)
            candidates = torch.cat([past[1], candidates], dim=-1)
        if self.decay_active:
            total = scores.shape[-1]
            if attention_mask.shape[-1] != total:
                raise ValueError(f"mode='self': attention_mask covers {attention_mask.shape[-1]} positions, "
                                 f"the input and the cache {total}")
            valid = candidates & attention_mask.bool()
            selected = self.select(scores, valid, input_ids.shape[1])
            kwargs[BIAS_KWARG] = DecayBias(selected[:, None], self.config.decay, frozenset(self.decayed_layers))
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new_cache = getattr(out, "past_key_values", None)
        if new_cache is not None:
            setattr(new_cache, CACHE_ATTR, (scores, candidates))
        return out

    # ---- inspection ---------------------------------------------------------------------
    @torch.no_grad()
    def scoring_attention(self, input_ids: torch.Tensor) -> torch.Tensor:
        """beta of the scoring cross-attention, (batch, 1, n, m): softmax over the reference tokens."""
        emb = self._corrected_embeddings().to(self.score_table.device)
        return self._beta(emb[input_ids], emb[self.reference_ids[0]]).unsqueeze(1)

    @torch.no_grad()
    def association_scores(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's score, (batch, n); padding and special tokens (never decayed) are -inf."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        valid = self.candidate_table[input_ids] & mask.bool()
        return self.token_scores(input_ids).masked_fill(~valid, float("-inf"))

    @torch.no_grad()
    def decayed_keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     per_query: bool = False) -> torch.Tensor:
        """Selected tokens: (batch, n) as seen from the last position (encoders: by every query),
        the top-K% of the whole example; ``per_query=True`` gives (batch, n, n), query x key,
        diagonal excluded, exactly what the decayed layers use."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        scores = self.token_scores(input_ids)
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
