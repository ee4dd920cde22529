"""The gendered words as token pairs, and the training terms built on them.

The equalizing term (Qian et al. 2019; ``equalize``): at every position of the rows, the mean over the
paired gendered words of |log P(female side) - log P(male side)|; it trains the whole model. The
neutralizing term (``neutralize``): at the neutral probes (:mod:`crawd.mitigation.probes`), where the text
leaves the gender open, -log(1 - P(the next word is gendered)), weighed at each position by the readout's
share there (:mod:`crawd.mitigation.cues`: 0 once the text has given a gender); it trains the readout's
shift (:mod:`crawd.mitigation.readout`) and nothing else, and it is a sum over the probes divided by the
number of probes a batch is expected to have, so that a batch split over processes gives the same term.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

#: Pronouns whose counterpart depends on context (his: her, his: hers, him: her), as word pairs.
PRONOUN_PAIRS = (("his", "her"), ("him", "her"), ("his", "hers"))
#: Every gendered pronoun, in pairs: a spelling whose counterpart is several tokens is paired with the
#: counterpart's first token where that is a pronoun token itself (" Himself" with " Hers" of " Hers" "elf").
ALL_PRONOUN_PAIRS = (("he", "she"), ("himself", "herself")) + PRONOUN_PAIRS


def _single_token(tokenizer: PreTrainedTokenizerBase, form: str) -> int | None:
    ids = tokenizer(form, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


_SPELLINGS = (lambda w: w, lambda w: " " + w, lambda w: w[:1].upper() + w[1:], lambda w: " " + w[:1].upper() + w[1:])


def token_pairs(tokenizer: PreTrainedTokenizerBase, word_pairs: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """Single-token spellings of each pair (word, " word", Word, " Word"), as id pairs."""
    out = set()
    for a, b in word_pairs:
        for spell in _SPELLINGS:
            ia, ib = _single_token(tokenizer, spell(a)), _single_token(tokenizer, spell(b))
            if ia is not None and ib is not None and ia != ib:
                out.add((ia, ib))
    return sorted(out)


def pronoun_first_token_pairs(tokenizer: PreTrainedTokenizerBase, pronouns: set[int]) -> list[tuple[int, int]]:
    """For each spelling of :data:`ALL_PRONOUN_PAIRS` with one side a single token and the other several, the
    single token paired with the other's first token, where that is in ``pronouns`` (the pronoun pairs' tokens):
    the next-token distribution gives a word of several tokens by its first (as :mod:`crawd.metrics.pronoun_skew`
    reads it), so the readout and the terms see " Herself" through " Hers"."""
    out = set()
    for a, b in ALL_PRONOUN_PAIRS:
        for spell in _SPELLINGS:
            ia, ib = _single_token(tokenizer, spell(a)), _single_token(tokenizer, spell(b))
            if (ia is None) == (ib is None):
                continue
            single, several = (ia, spell(b)) if ia is not None else (ib, spell(a))
            first = tokenizer(several, add_special_tokens=False)["input_ids"][0]
            if first in pronouns and first != single:
                out.add((single, first) if ia is not None else (first, single))
    return sorted(out)


def bipartite_groups(pairs: list[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Connected groups of linked tokens, each split into its two sides ({her, hers} against {his, him});
    groups whose links are not two-sided (a token on both sides) are left out."""
    links: dict[int, set[int]] = {}
    for a, b in pairs:
        links.setdefault(a, set()).add(b)
        links.setdefault(b, set()).add(a)
    side: dict[int, int] = {}
    groups = []
    for start in sorted(links):
        if start in side:
            continue
        side[start], stack, members, ok = 0, [start], [start], True
        while stack:
            node = stack.pop()
            for other in links[node]:
                if other not in side:
                    side[other] = 1 - side[node]
                    stack.append(other), members.append(other)
                elif side[other] == side[node]:
                    ok = False
        if ok:
            groups.append((sorted(m for m in members if side[m] == 0), sorted(m for m in members if side[m] == 1)))
    return groups


class GenderedPairs(nn.Module):
    """The paired gendered words as token groups: ``pair_tokens`` (P, 2, S) with ``pair_valid``, the
    single-token spellings of each pair's two sides (he; she, or his, him; her, hers), and
    :func:`pronoun_first_token_pairs`' links (" Himself" with " Hers")."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, swaps: dict[str, str]) -> None:
        super().__init__()
        words = sorted({tuple(sorted((a, b))) for a, b in swaps.items()}) + list(PRONOUN_PAIRS)
        pairs = token_pairs(tokenizer, words)
        pronouns = {t for pair in token_pairs(tokenizer, list(ALL_PRONOUN_PAIRS)) for t in pair}
        groups = bipartite_groups(pairs + pronoun_first_token_pairs(tokenizer, pronouns))
        if not groups:
            raise ValueError("equalize / neutralize: no gendered word pair is a single token of this tokenizer "
                             "(he / she, his / her, ...)")
        width = max(len(side) for group in groups for side in group)
        tokens = torch.zeros((len(groups), 2, width), dtype=torch.long)
        valid = torch.zeros((len(groups), 2, width), dtype=torch.bool)
        for row, sides in enumerate(groups):
            for column, side in enumerate(sides):
                tokens[row, column, :len(side)] = torch.tensor(side)
                valid[row, column, :len(side)] = True
        self.register_buffer("pair_tokens", tokens, persistent=False)
        self.register_buffer("pair_valid", valid, persistent=False)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., P, 2): the logsumexp of each pair side's logits (unnormalised log-probabilities)."""
        picked = logits[..., self.pair_tokens].float().masked_fill(~self.pair_valid, float("-inf"))
        return picked.logsumexp(-1)

    def logratios(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., P): log P(one side) - log P(the other) per pair; the softmax normaliser cancels, so only
        the pairs' logits are read."""
        sides = self.scores(logits)
        return sides[..., 0] - sides[..., 1]

    def log_mass(self, logits: torch.Tensor) -> torch.Tensor:
        """(...,): log P(the next word is a paired gendered word)."""
        return self.scores(logits).flatten(-2).logsumexp(-1) - logits.float().logsumexp(-1)


def equalize_all(pairs: GenderedPairs, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Qian et al.'s term: the mean |log-ratio| over the pairs and the positions that predict a target
    (``labels`` as the task loss reads them, shifted by one), so that it is normalised like the task loss."""
    predicting = labels[:, 1:] != -100
    gaps = pairs.logratios(logits[:, :-1][predicting])
    return gaps.abs().mean() if len(gaps) else logits.new_zeros((), dtype=torch.float32)


def neutralizing(pairs: GenderedPairs, logits: torch.Tensor, mask: torch.Tensor, open_share: torch.Tensor,
                 expected_probes: float) -> torch.Tensor:
    """The sum over the probes' positions of ``open_share`` x -log(1 - P(gendered)), divided by the number of
    probes the batch is expected to have (its rows times the probe share; ``logits``: the probes' logits whose
    gradient reaches the readout's shift alone): a batch split over processes gives the same term."""
    keep = mask.bool()
    log_mass = pairs.log_mass(logits[keep])
    return (open_share.float()[keep] * -torch.log1p(-log_mass.clamp_max(-1e-6).exp())).sum() / expected_probes
