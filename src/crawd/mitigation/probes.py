"""Neutral probes: each training row's text with its person hidden, cut before its first gendered word.

A probe asks what the mitigation is about: the next word after a context that does not give the
person's gender. The row's listed first names (and the capitalised surname after one) become a
neutral subject, one of :data:`PROBE_SUBJECTS` chosen by the text, so that no single phrase stands for
"the gender is open"; the text is then cut just before its first gendered word (a pronoun, "mother",
...), so that no position of a probe has seen one. A row whose person is not named by a listed first
name keeps the name: its probe then still tells the gender, and the gender cues, which weigh every
probe position, give it little weight once the name has come (:mod:`crawd.mitigation.cues`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from crawd.mitigation.lexicon import first_gendered, unnamed

#: What a probe calls its person (none of them gives a gender).
PROBE_SUBJECTS = ("the person", "someone", "this person", "my colleague", "a friend of mine", "the new hire")
#: The batch keys the probes add (:class:`ProbeCollator`).
PROBE_KEYS = ("probe_input_ids", "probe_attention_mask")


def probe_text(text: str, swaps: dict[str, str], names: dict[str, str]) -> tuple[str, bool]:
    """(``text`` with its listed first names and their surnames replaced by a neutral subject and cut before
    its first gendered word, whether a name was replaced)."""
    subject = PROBE_SUBJECTS[zlib.crc32(text.encode()) % len(PROBE_SUBJECTS)]
    hidden = unnamed(text, names, subject)
    cut = first_gendered(hidden, swaps, names)
    return (hidden if cut is None else hidden[:cut]).rstrip(), hidden != text


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def padded(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-padded (len(rows), longest) ids; rows of no token still get one column."""
    out = torch.full((len(rows), max(1, max(map(len, rows), default=0))), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def gets_probe(ids: list[int], share: float) -> bool:
    """Whether a row (its token ids) gets a probe: a share ``share`` of the rows, chosen by a hash of the row
    itself, so that the choice does not depend on how a batch is split over processes."""
    return zlib.crc32(repr(ids).encode()) % 10_000 < share * 10_000


class ProbeCollator:
    """Wrap a causal-LM collator: add the probes of the rows that get one (:func:`gets_probe`; about ``share``
    of them): ``probe_input_ids``, ``probe_attention_mask``, right-padded (a row that opens with a gendered
    word has an empty probe; a batch may have none)."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
                 tokenizer: PreTrainedTokenizerBase, swaps: dict[str, str], names: dict[str, str],
                 share: float) -> None:
        self.collate, self.tokenizer, self.swaps, self.names, self.share = collate, tokenizer, swaps, names, share

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate(features)
        probes = []
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"].bool()):
            row = ids[mask].tolist()
            if gets_probe(row, self.share):
                text = self.tokenizer.decode(row, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                probes.append(encode(self.tokenizer, probe_text(text, self.swaps, self.names)[0]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch["probe_input_ids"] = padded(probes, pad)
        batch["probe_attention_mask"] = padded([[1] * len(p) for p in probes], 0)
        return batch
