"""The ``blind`` baseline: the sensitive words of the training texts replaced by a neutral word (vanilla's model).

The words are the gender lexicon of ``cda`` plus the reference words ``CrawdConfig.words``
(or ``extra["blind_words"]``), replaced by ``extra["blind_token"]`` (default ``"person"``)
in the TRAIN texts only: the test split is the shared yardstick, so the model is blind
to these words during fine-tuning only.
"""

from __future__ import annotations

import re
from typing import Any

from datasets import DatasetDict

from crawd.config import CrawdConfig
from crawd.mitigation.lexicon import _PRONOUNS, _WORD, gender_lexicon
from crawd.methods.registry import register_method
from crawd.methods.vanilla import adapt

DEFAULTS: dict[str, Any] = {
    "blind_token": "person",
    "blind_words": None,  # None: gender lexicon + CrawdConfig.words
}


def blind_transform(data: DatasetDict, config: CrawdConfig) -> DatasetDict:
    """The sensitive words of the train texts replaced by ``blind_token`` (see the module doc)."""
    words = config.extra.get("blind_words", DEFAULTS["blind_words"])
    if words is None:
        swaps, names = gender_lexicon()
        words = set(swaps) | _PRONOUNS | {w.lower() for w in config.words}
        name_set = set(names)
    else:
        words, name_set = {w.lower() for w in words}, set()
    token = config.extra.get("blind_token", DEFAULTS["blind_token"])
    phrases = sorted((w for w in words if " " in w), key=len, reverse=True)
    phrase_re = re.compile(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b", re.IGNORECASE) if phrases else None

    def blind(text: str) -> str:
        if phrase_re is not None:
            text = phrase_re.sub(token, text)
        return _WORD.sub(lambda m: token if m.group(0).lower() in words or m.group(0) in name_set else m.group(0),
                         text)

    train = data["train"].map(lambda row: {"text": blind(row["text"])}, desc="blinding")
    return DatasetDict({**data, "train": train})


register_method("blind", "sensitive words replaced by a neutral word in the training texts (naive baseline)",
                transform=blind_transform)(adapt)
