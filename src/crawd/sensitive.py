"""Reference sensitive sequences: the paper's word groups and their tokenisation."""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: The reference words the paper lists per group (one token per group is enough).
GROUPS: dict[str, tuple[str, ...]] = {
    "gender": ("he", "she"),
    "sexual_orientation": ("gay", "straight"),
    "age": ("young", "old"),
    "race": ("black", "white", "Asian", "European", "American", "Mexican"),
    "disability": ("disabled", "abled"),
    "religion": ("Muslim", "Christian", "Jewish"),
    "body": ("fat", "thin"),
    "class": ("rich", "poor"),
}

#: The 28 gendered words of the paper's GAS metric, female then male (also the ``debias_tuning`` penalty's words).
FEMALE_WORDS: tuple[str, ...] = ("she", "her", "hers", "woman", "female", "girl", "mother",
                                 "daughter", "sister", "queen", "actress", "wife", "aunt", "madam")
MALE_WORDS: tuple[str, ...] = ("he", "him", "his", "man", "male", "boy", "father", "son",
                               "brother", "king", "actor", "husband", "uncle", "sir")
GENDERED_WORDS: tuple[str, ...] = FEMALE_WORDS + MALE_WORDS


def word_token_ids(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """Token ids of ``word`` as it appears inside running text (after a space).

    Byte-level BPE tokenizers (GPT-2, Llama-3, SmolLM2) encode " he" differently from
    "he" at the start of a text; the in-text form is the one the model sees next to an
    occupation, so that is the one used. A lone leading space token is dropped.
    """
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
        ids = ids[1:]
    return list(ids)


def reference_ids(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...] | list[str]) -> list[int]:
    """Token ids of the reference sensitive sequence b built from ``words``.

    Raises:
        ValueError: the list is empty, or a word maps to the unknown token.
    """
    if not words:
        raise ValueError("the sensitive word list is empty: give at least one word (e.g. --sensitive-words he,she)")
    ids: list[int] = []
    split: list[str] = []
    for word in words:
        pieces = word_token_ids(tokenizer, word)
        if not pieces:
            raise ValueError(f"sensitive word {word!r} encodes to no token; remove it from the list")
        unk = tokenizer.unk_token_id
        if unk is not None and unk in pieces:
            raise ValueError(
                f"sensitive word {word!r} is not in the tokenizer's vocabulary (it becomes "
                f"{tokenizer.unk_token!r}); remove it or choose another spelling"
            )
        if len(pieces) > 1:
            split.append(f"{word!r} -> {[tokenizer.decode([p]) for p in pieces]}")
        ids += pieces
    if split:
        logger.warning("sensitive words split into several tokens (all pieces are kept in b): %s", "; ".join(split))
    return ids
