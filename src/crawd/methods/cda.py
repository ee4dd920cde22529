"""The ``cda`` baseline: counterfactual data augmentation of the training texts, then vanilla's training.

Two-sided CDA (Zmigrod et al. 2019, ACL; Webster et al. 2020, arXiv:2010.06032): every
training text also appears with its gendered words and first names swapped
(:func:`crawd.mitigation.lexicon.swap_text`). ``cda_mode="append"`` (default, Webster et al.: original +
swapped copy, the data doubles) or ``"replace"`` (each row swapped with probability 1/2).
Options in ``CrawdConfig.extra`` (defaults: :data:`DEFAULTS`).
"""

from __future__ import annotations

import random
from typing import Any

from datasets import DatasetDict, concatenate_datasets

from crawd.config import CrawdConfig
from crawd.mitigation.lexicon import gender_lexicon, swap_text
from crawd.methods.registry import register_method
from crawd.methods.vanilla import adapt

DEFAULTS: dict[str, Any] = {
    "cda_mode": "append",  # "append" (two-sided, data doubles) or "replace"
    "cda_seed": 0,         # rows swapped in "replace" mode
    "cda_pairs": [],       # extra [word, word] pairs, e.g. race terms
}


def _swap_value(value: Any, swaps: dict[str, str]) -> Any:
    return swaps.get(value.lower(), value) if isinstance(value, str) else value


def cda_transform(data: DatasetDict, config: CrawdConfig) -> DatasetDict:
    """Counterfactual data augmentation of the train split (see the module doc)."""
    extra = tuple(tuple(p) for p in config.extra.get("cda_pairs", DEFAULTS["cda_pairs"]))
    swaps, names = gender_lexicon(extra)
    mode = config.extra.get("cda_mode", DEFAULTS["cda_mode"])
    if mode not in ("append", "replace"):
        raise ValueError(f"cda_mode must be 'append' or 'replace', got {mode!r}")
    train = data["train"]

    def swapped(row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        row["text"] = swap_text(row["text"], swaps, names)
        for column in ("gender", "identity"):  # the attribute follows the text
            if column in row:
                row[column] = _swap_value(row[column], swaps)
        return row

    if mode == "append":
        flipped = train.map(swapped, desc="CDA")
        new_train = concatenate_datasets([train, flipped.cast(train.features)])
    else:
        rng = random.Random(config.extra.get("cda_seed", DEFAULTS["cda_seed"]))
        chosen = [rng.random() < 0.5 for _ in range(len(train))]
        new_train = train.map(lambda row, i: swapped(row) if chosen[i] else row, with_indices=True, desc="CDA")
    return DatasetDict({**data, "train": new_train})


register_method("cda", "counterfactual data augmentation: train texts plus their gender-swapped copies "
                       "(Zmigrod et al. 2019; Webster et al. 2020)", transform=cda_transform)(adapt)
