"""The mitigation: training terms against the gender bias a fine-tuned LM learns, and the readout they train.

Its parts, one module each: the gender lexicon and the word lists it ships (:mod:`.lexicon`), the
gendered words as token pairs and the terms (:mod:`.objective`), the neutral probes (:mod:`.probes`),
the gendered-word readout (:mod:`.readout`) and the gender cues that say where the readout
acts (:mod:`.cues`). :class:`Mitigation` composes them for one model: a model whose config asks for no
term (``CrawdConfig.mitigates``) has none and never runs this code. docs/method.md says what each part
is for and where it stops working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from crawd.config import CrawdConfig
from crawd.mitigation.lexicon import gender_lexicon, word_genders
from crawd.mitigation.objective import GenderedPairs, equalize_all, neutralizing
from crawd.mitigation.probes import PROBE_KEYS, ProbeCollator, padded
from crawd.mitigation.readout import GenderedReadout
from crawd.mitigation.cues import FIT_BATCH, FIT_ROWS, CueCallback, CueTokens, GenderCues, fit_examples

__all__ = ["PROBE_KEYS", "CueInput", "Mitigation", "MitigatedLMOutput"]


@dataclass
class MitigatedLMOutput(CausalLMOutputWithPast):
    """A causal LM's training output whose ``loss`` includes the probe term, also given apart as ``terms``
    (the Trainer normalises the task loss by the targets of the global batch; the term is normalised by the
    batch's rows already)."""

    terms: torch.Tensor | None = None


@dataclass
class CueInput:
    """What the gender cues read of one encode (:meth:`Mitigation.capturing`): the text's token ids and the
    input of the cue layer at the same positions."""

    ids: torch.Tensor | None = None
    states: torch.Tensor | None = None


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass at the cue layer (fitting needs nothing after it)."""


def default_cue_layer(num_layers: int) -> int:
    """The body layer whose input the gender cues read: the one at a third of the depth."""
    return min(max(1, round(num_layers / 3)), num_layers - 1)


class Mitigation(nn.Module):
    """The terms a config asks for, on one causal LM, and the readout and estimate they need.

    Args:
        tokenizer: the model's tokenizer.
        hidden_size: d of the last hidden state.
        layers: the body's transformer layers (the estimate reads the input of one of them).
        config: ``equalize``, ``even_open``, ``neutralize``, ``probe_share``, ``gender_cue_layer``,
            ``gender_cue_refit_steps``.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, hidden_size: int, layers: nn.ModuleList,
                 config: CrawdConfig) -> None:
        super().__init__()
        self.swaps, self.names = gender_lexicon()
        self.genders = word_genders()
        self.equalize, self.neutralize = config.equalize, config.neutralize
        self.probe_share, self.refit_steps = config.probe_share, config.gender_cue_refit_steps
        self.pairs = GenderedPairs(tokenizer, self.swaps)
        self.readout = self.cues = None
        if config.has_readout:
            self.readout = GenderedReadout(self.pairs.pair_tokens, self.pairs.pair_valid, hidden_size,
                                           even=config.even_open, shift=config.neutralize > 0)
            self.cue_layer = config.gender_cue_layer or default_cue_layer(len(layers))
            if not 1 <= self.cue_layer < len(layers):
                raise ValueError(f"gender_cue_layer={self.cue_layer} is not a layer of this body, which has "
                                 f"{len(layers)} (choose 1 to {len(layers) - 1})")
            self.cues = GenderCues(hidden_size)
            self.cue_tokens = CueTokens(tokenizer, self.genders)
            self._captured: CueInput | None = None
            self._stop = False
            layers[self.cue_layer].register_forward_pre_hook(self._capture, with_kwargs=True)

    # ---- the cues' input ------------------------------------------------------------------
    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._captured is not None:
            self._captured.states = args[0] if args else kwargs["hidden_states"]
            if self._stop:
                raise _Stop

    @contextlib.contextmanager
    def capturing(self, ids: torch.Tensor | None = None, stop: bool = False) -> Iterator[CueInput]:
        """Within it, the states entering the cue layer are kept (``.states`` of what it yields, beside the
        ``ids`` being encoded; ``stop``: the forward pass ends there, by an exception caught here); an encode of
        other text (H_b, say) must run outside it."""
        slot = CueInput(ids)
        self._captured, self._stop = (slot if self.cues is not None else None), stop
        try:
            yield slot
        except _Stop:
            pass
        finally:
            self._captured, self._stop = None, False

    # ---- logits ---------------------------------------------------------------------------
    def given(self, cue_input: CueInput, mask: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """(B, n): how far the text has given a gender at each position (:meth:`GenderCues.given`, on the tokens
        that may be cues), from ``cue_input`` of the same positions (``mask``: the valid ones; ``state``: what
        cached generation carries)."""
        n = mask.shape[1]
        # every token is a cue until the first fit: a fresh model is exactly its base
        may_cue = self.cue_tokens.may_cue(cue_input.ids[:, -n:], state) if self.cues.fitted else None
        return self.cues.given(cue_input.states[:, :n], mask, state, may_cue)

    def open_share(self, cue_input: CueInput, mask: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """(B, n): the readout's share at each position (:meth:`given`, through the ramp)."""
        return self.cues.open_share(self.given(cue_input, mask, state))

    def correct(self, hidden: torch.Tensor, logits: torch.Tensor, cue_input: CueInput | None, mask: torch.Tensor,
                state: dict | None = None) -> torch.Tensor:
        """``logits`` with the readout where the cues (on ``cue_input`` of the same positions) say the text has
        not given a gender yet; unchanged without a readout."""
        if self.readout is None:
            return logits
        if cue_input is None or cue_input.states is None or cue_input.ids is None:
            raise RuntimeError("the gendered-word readout needs the token ids and the cue layer's input of these "
                               "positions (encode inside Mitigation.capturing(ids))")
        n = hidden.shape[1]
        return self.readout(hidden, logits, self.open_share(cue_input, mask[:, :n], state))

    # ---- training ---------------------------------------------------------------------------
    @property
    def needs_probes(self) -> bool:
        return self.neutralize > 0

    def collator(self, collate: Callable, tokenizer: PreTrainedTokenizerBase) -> Callable:
        """``collate`` with the probes added when a term reads them."""
        return ProbeCollator(collate, tokenizer, self.swaps, self.names, self.probe_share) if self.needs_probes \
            else collate

    def training_forward(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         labels: torch.Tensor, probe_input_ids: torch.Tensor | None = None,
                         probe_attention_mask: torch.Tensor | None = None, **kwargs: Any) -> MitigatedLMOutput:
        """``model``'s training forward (an :class:`crawd.adapted.AdaptedModel`) with the terms: the rows'
        task loss (+ equalizing at every position); the probes in a pass of their own without gradient
        (no term trains the body through them), whose neutralizing term trains the readout's shift alone."""
        out, cue_input = model.encode_tracked(input_ids, attention_mask, **kwargs)
        logits = model.head(out.last_hidden_state, attention_mask, cue_input=cue_input)
        loss = model.task_loss(logits, labels)
        if self.equalize > 0:
            loss = loss + self.equalize * equalize_all(self.pairs, logits, labels)
        terms = None
        if probe_input_ids is not None and len(probe_input_ids):
            with torch.no_grad():
                probe_out, probe_cues = model.encode_tracked(probe_input_ids, probe_attention_mask)
                hidden = probe_out.last_hidden_state
                before = model.head_logits(hidden, probe_attention_mask)
                share = self.open_share(probe_cues, probe_attention_mask)
            shifted = self.readout(hidden, before, share)
            terms = self.neutralize * neutralizing(self.pairs, shifted, probe_attention_mask, share,
                                                   self.probe_share * len(input_ids))
            loss = loss + terms
        return MitigatedLMOutput(loss=loss, logits=logits, cache=out.cache, terms=terms)

    # ---- the cues -------------------------------------------------------------------------
    def cue_callback(self, model: Any, tokenizer: PreTrainedTokenizerBase, rows: list[list[int]]) -> CueCallback | None:
        """The callback that fits the cues on the first :data:`FIT_ROWS` of ``rows`` (token ids), their probes and
        the calibration sentences, before training and every ``gender_cue_refit_steps`` steps; None without
        cues."""
        if self.cues is None:
            return None
        examples = fit_examples(list(rows[:FIT_ROWS]), tokenizer, self.swaps, self.names)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return CueCallback(lambda: self.fit_cues(model, examples, pad), lambda: self.cues.fitted, self.refit_steps)

    @torch.no_grad()
    def fit_cues(self, model: Any, examples: list[tuple[list[int], list[int]]], pad: int) -> None:
        """Fit the cues on the cue layer's input that ``model`` gives ``examples`` ((ids, labels) pairs), in batches
        of :data:`FIT_BATCH` whatever the training batch (so every process of a distributed run computes the same
        states, to the last bit), shortest first (a third fewer padded tokens than in the given order); dropout
        off, and each forward pass stops at that layer."""
        was_training = model.training
        model.eval()
        states, labels = [], []
        examples = sorted(examples, key=lambda e: len(e[0]))
        try:
            device = next(model.parameters()).device
            for start in range(0, len(examples), FIT_BATCH):
                chunk = examples[start:start + FIT_BATCH]
                ids = padded([e[0] for e in chunk], pad).to(device)
                mask = padded([[1] * len(e[0]) for e in chunk], 0).to(device)
                wanted = padded([e[1] for e in chunk], -100).to(device)
                with self.capturing(stop=True) as captured:
                    model.encode(ids, mask)
                keep = wanted != -100
                states.append(captured.states[keep].float()), labels.append(wanted[keep])
            self.cues.fit(torch.cat(states), torch.cat(labels))
        finally:
            model.train(was_training)
