"""The ``debias_tuning`` baseline: Debias Tuning, simplified (Dong et al. 2024), for causal LMs.

Loss = CE + ``debias_weight`` * mean_t [P_f(t) + P_m(t)] + ``debias_gap_weight`` * mean_t
|P_f(t) - P_m(t)|, P_f / P_m the next-token probability mass on the 14 female / 14 male GAS
words (:data:`crawd.sensitive.GENDERED_WORDS`, single-token spellings: bare and with a leading
space, lower case and capitalised) at every non-padding position t. Defaults 1.0 and 1.0.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.config import CrawdConfig
from crawd.methods.loss_term import LossTermModel
from crawd.methods.registry import register_method
from crawd.sensitive import FEMALE_WORDS, MALE_WORDS

DEFAULTS: dict[str, Any] = {"debias_weight": 1.0, "debias_gap_weight": 1.0}


def gendered_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids of the female / male GAS words: every spelling that is ONE token.

    Spellings: "word", " word", "Word", " Word". Multi-token spellings are left out (their
    first piece is often an ordinary sub-word).
    """
    def ids(words: tuple[str, ...]) -> list[int]:
        found: set[int] = set()
        unk = tokenizer.unk_token_id
        for word in words:
            for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
                pieces = tokenizer(form, add_special_tokens=False)["input_ids"]
                if len(pieces) == 1 and pieces[0] != unk:
                    found.add(pieces[0])
        return sorted(found)

    female, male = ids(FEMALE_WORDS), ids(MALE_WORDS)
    if not female or not male:
        raise ValueError("debias_tuning: the tokenizer has no single-token spelling of the gendered words")
    return female, male


def gendered_mass_penalty(logits: torch.Tensor, attention_mask: torch.Tensor, female: torch.Tensor,
                          male: torch.Tensor, weight: float, gap_weight: float) -> torch.Tensor:
    """weight * mean_t (P_f + P_m) + gap_weight * mean_t |P_f - P_m| over non-padding positions."""
    probs = logits.float().softmax(-1)
    p_f, p_m = probs[..., female].sum(-1), probs[..., male].sum(-1)  # (B, n)
    valid = attention_mask.bool()
    term = weight * (p_f + p_m) + gap_weight * (p_f - p_m).abs()
    return term[valid].mean()


@register_method("debias_tuning", "penalty on the next-token mass of gendered words (Debias Tuning, Dong et al. "
                                  "2024; causal LMs)")
class DebiasTuningModel(LossTermModel):
    """Debias Tuning (Dong et al. 2024), simplified: penalise next-token mass on gendered words."""

    def __init__(self, base: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 config: CrawdConfig | None = None) -> None:
        super().__init__(base, tokenizer, config)
        if self.task != "lm":
            raise ValueError("debias_tuning applies to causal LMs (task lm), not to classifiers")
        female, male = gendered_token_ids(tokenizer)
        self.register_buffer("female_ids", torch.tensor(female, dtype=torch.long), persistent=False)
        self.register_buffer("male_ids", torch.tensor(male, dtype=torch.long), persistent=False)
        options = {**DEFAULTS, **self.config.extra}
        self.weight = float(options["debias_weight"])
        self.gap_weight = float(options["debias_gap_weight"])

    def penalty(self, out: Any, logits: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        return gendered_mass_penalty(logits, attention_mask, self.female_ids, self.male_ids,
                                     self.weight, self.gap_weight)
