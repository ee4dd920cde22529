"""Gender cues: where has the text given the gender of the person it is about?

The readout (:mod:`crawd.mitigation.readout`) should act where a text leaves the person's gender open
("The nurse said that") and not once it has given it ("Priyanka Patel is a nurse. Every morning,"),
whatever name gave it. A list of names cannot tell that; the model can: a token's hidden state in the
body's lower layers says what the token is, and for a first name, which gender it carries.
:class:`GenderCues` is a linear probe of the state entering one body layer (default at a third of the
depth: layer 10 of SmolLM2's 30, chosen on validation) that gives each token P(it gives a gender: it ends a
first name, a full name or a gendered word). A text has given a gender at position i in the measure of the largest such
probability up to i (:meth:`GenderCues.given`, carried across cached generation), and the readout acts
with the share ``open_share`` = a ramp of one minus it (:data:`OPEN_RAMP`).

Only a token that can give a gender counts (:class:`CueTokens`): one inside a capitalised word (a name is
written so, whichever name it is) or a word of the lexicon ("she", "aunt"). A lowercase word that is neither
("machinist", "smiled") is no cue whatever the probe says: on validation the probe now and then took a
piece of an occupation it had never seen for a name, which switched the readout off for that whole text.

The probe is fitted, not trained by gradient (standardised states, L2 logistic regression), on tokens
labelled by the lexicon (:func:`cue_examples`): the last token of a listed first name, of the surname
right after one (the name written in full: so the probe learns that a person is named, not only which
first names it was shown) or of a gendered word is a cue, every other token is not, except that in
training rows a capitalised word the lexicon does not hold and the rows never write in lower case is left
out (it may be a name no list holds). The calibration sentences (:mod:`crawd.mitigation.calibration`) add
sentence forms and capitalised words that are not names; every
other example starts with the tokenizer's start token, as the evaluation's texts do. LoRA moves the states
while it trains, so the probe is fitted before training and again every ``gender_cue_refit_steps``
steps (:class:`CueCallback`). The names it is fitted with are the lexicon's; the evaluation measures it on
names no crawd list holds (:mod:`crawd.metrics.heldout`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback

from crawd.mitigation.calibration import calibration_sentences
from crawd.mitigation.lexicon import gendered_spans
from crawd.mitigation.probes import encode, probe_text

#: Training rows the probe is fitted on, its L2 strength, and the ramp from "given" to the readout's share
#: (1 below the first value, 0 above the second): chosen on validation.
FIT_ROWS, INVERSE_L2, OPEN_RAMP = 64, 0.02, (0.1, 0.4)
#: Examples per forward pass of a fit.
FIT_BATCH = 16
_CAPITALISED = re.compile(r"[A-Z][A-Za-z]*")
#: A capitalised word right after a first name: with it, the name written in full.
_SURNAME = re.compile(" " + _CAPITALISED.pattern)


class CueTokens(nn.Module):
    """Which tokens may be cues: those inside a capitalised word, and the words of ``words`` (the lexicon's
    gendered words, in lower case) as single tokens or as a word's last piece ("grand" + "mother"). A token
    starts a word when the tokenizer writes a space before it after a letter, or when the token before it does
    not end in a letter; so the flags are the tokenizer's own, and generation a token at a time gives the same
    as the whole text (``state``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, words: Collection[str]) -> None:
        super().__init__()
        ids = list(range(len(tokenizer)))
        texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
        letter = next(i for i in ids if texts[i].strip().isalpha())
        after = tokenizer.batch_decode([[letter, i] for i in ids], clean_up_tokenization_spaces=False)
        offset = len(texts[letter])
        flags = {
            "spaced": [a[offset:offset + 1].isspace() for a in after],
            "upper": [x.strip()[:1].isupper() for x in texts],
            "ends_in_letter": [x[-1:].isalpha() for x in texts],
            "word": [x.strip().lower() in words for x in texts],
        }
        for name, values in flags.items():
            self.register_buffer(name, torch.tensor(values), persistent=False)

    def may_cue(self, ids: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """(B, n) bool for ``ids`` (B, n); ``state`` carries the last word across the steps of cached generation."""
        ends_in_letter = self.ends_in_letter[ids]
        before = None if state is None else state.get("ends_in_letter")
        before = torch.zeros_like(ends_in_letter[:, :1]) if before is None else before
        starts = self.spaced[ids] | ~torch.cat([before, ends_in_letter[:, :-1]], 1)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        last_start = torch.where(starts, positions, -1).cummax(1).values
        capitalised = self.upper[ids].gather(1, last_start.clamp(min=0))
        if state is not None:
            if "capitalised" in state:
                capitalised = torch.where(last_start >= 0, capitalised, state["capitalised"])
            state["ends_in_letter"], state["capitalised"] = ends_in_letter[:, -1:], capitalised[:, -1:]
        return capitalised | self.word[ids]


class GenderCues(nn.Module):
    """P(a token gives a gender) of its state (d,): ``sigmoid(w . (x - mean) / scale + b)``; all buffers, saved
    with the adapter. Before :meth:`fit` every token is a cue (the readout does nothing: a fresh model is its
    base)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.ones(hidden_size))
        self.register_buffer("weight", torch.zeros(hidden_size))
        self.register_buffer("bias", torch.full((), 30.0))

    @property
    def fitted(self) -> bool:
        return bool(self.weight.any())

    @torch.no_grad()
    def probabilities(self, states: torch.Tensor) -> torch.Tensor:
        """(...,) P(cue) of states (..., d)."""
        # A product and a sum, not `@`: a matrix-vector product's kernel (and so its last bits) depends on how
        # many tokens there are, and cached generation, a token at a time, must give what the whole text does.
        return torch.sigmoid((((states.float() - self.mean) / self.scale) * self.weight).sum(-1) + self.bias)

    @torch.no_grad()
    def given(self, states: torch.Tensor, mask: torch.Tensor, state: dict | None = None,
              may_cue: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n): how far the text up to each position has given a gender: the running largest P(cue) over
        the valid (``mask``) tokens so far that may be cues (``may_cue``, :class:`CueTokens`; None: all);
        ``state`` carries it across the steps of cached generation."""
        cue = self.probabilities(states) * mask[:, -states.shape[1]:].to(torch.float32)
        if may_cue is not None:
            cue = cue * may_cue.to(torch.float32)
        earlier = None if state is None else state.get("given")
        if earlier is not None:
            cue = torch.cat([earlier, cue], 1)
        given = cue.cummax(1).values[:, -states.shape[1]:]
        if state is not None:
            state["given"] = given[:, -1:]
        return given

    def open_share(self, given: torch.Tensor) -> torch.Tensor:
        """The readout's share where the text has given a gender ``given``: 1 up to :data:`OPEN_RAMP`'s low
        end, 0 from its high end, linear between."""
        low, high = OPEN_RAMP
        return ((high - given) / (high - low)).clamp(0.0, 1.0)

    @torch.no_grad()
    def fit(self, states: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit on ``states`` (N, d) with labels (N,) in {0, 1}, both present."""
        if len(set(labels.tolist())) < 2:
            raise ValueError("the gender cues need tokens that give a gender and tokens that do not; the fit rows "
                             "gave only one kind")
        x = states.double().cpu().numpy()
        mean, scale = x.mean(0), x.std(0) + 1e-6
        model = LogisticRegression(C=INVERSE_L2, class_weight="balanced", max_iter=3000)
        model.fit((x - mean) / scale, labels.cpu().numpy())
        for buffer, value in ((self.mean, mean), (self.scale, scale), (self.weight, model.coef_[0]),
                              (self.bias, model.intercept_[0])):
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype))


def _labels(text: str, offsets: Sequence[tuple[int, int]], swaps: dict[str, str], names: dict[str, str],
            common: frozenset[str] | None) -> list[int]:
    """Per token: 1 where it ends a gendered span or a listed first name's surname (the capitalised word right
    after it), 0 elsewhere; -100 (left out) inside a capitalised word that is neither in the lexicon nor, in
    lower case, in ``common`` (the words the fit texts write in lower case: "The", "Based"), since it may be a
    name no list holds. ``common`` None: every word is known."""
    cues = set()
    for match in gendered_spans(text, swaps, names):
        cues.add(match.end())
        surname = _SURNAME.match(text, match.end()) if match.group(0) in names else None
        if surname:
            cues.add(surname.end())
    unknown = [] if common is None else [m.span() for m in _CAPITALISED.finditer(text)
                                         if m.group(0) not in names and m.group(0).lower() not in swaps
                                         and m.group(0).lower() not in common]
    labels = []
    for start, end in offsets:
        if end in cues:
            labels.append(1)
        elif any(a < end and start < b for a, b in unknown):
            labels.append(-100)
        else:
            labels.append(0)
    return labels


def cue_examples(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, swaps: dict[str, str],
                 names: dict[str, str], known_words: bool = False) -> list[tuple[list[int], list[int]]]:
    """(ids, per-token labels) of ``texts`` and of their probes (see the module doc); ``known_words``: every
    capitalised word of ``texts`` is known (a name of the lexicon, or no name)."""
    common = None if known_words else frozenset(w for text in texts for w in re.findall(r"\b[a-z]+\b", text))
    out = []
    for text in texts:
        for version in dict.fromkeys([text, probe_text(text, swaps, names)[0]]):
            if not version:
                continue
            encoded = tokenizer(version, add_special_tokens=False, return_offsets_mapping=True)
            out.append((encoded["input_ids"], _labels(version, encoded["offset_mapping"], swaps, names, common)))
    return out


def fit_examples(rows: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase, swaps: dict[str, str],
                 names: dict[str, str]) -> list[tuple[list[int], list[int]]]:
    """The training rows (token ids) and the calibration sentences as (ids, labels), every other one after the
    tokenizer's start token (BOS, else EOS), which is no cue."""
    texts = [tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) for ids in rows]
    examples = cue_examples(texts, tokenizer, swaps, names)
    examples += cue_examples(calibration_sentences(), tokenizer, swaps, names, known_words=True)
    start = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    if start is None:
        return examples
    return [([start] + ids, [0] + labels) if i % 2 else (ids, labels) for i, (ids, labels) in enumerate(examples)]


class CueCallback(TrainerCallback):
    """Fit the model's gender cues before training and again every ``every`` steps (0: once)."""

    def __init__(self, fit: Callable[[], None], fitted: Callable[[], bool], every: int) -> None:
        self.fit, self.fitted, self.every = fit, fitted, every

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0 or not self.fitted():
            self.fit()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.fit()
