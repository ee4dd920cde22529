"""BOLD's people and professions in three hash shares, and the ``bold-people`` corpus built on one of them.

BOLD (Dhamala et al. 2021; ``<data_dir>/bold/{domain}_prompt.json``, ``{group: {entity: [prompt, ...]}}``)
names people (the gender domain: the groups ``American_actresses`` and ``American_actors``, entities such as
``Jacob_Zachar``) and professions (entities such as ``Metalsmith``). A first name or a profession entity falls
in one share of :data:`SHARES` by the CRC-32 of its text (:func:`share_of`): ``validation`` and ``test`` belong
to the evaluation (:mod:`crawd.metrics.heldout` draws its held-out names from them, ``gas_heldout`` its BOLD
profession prompts), ``corpus`` to training, as the ``bold-people`` dataset (:func:`bold_people`).

The evaluation's names are :func:`candidate_names` of the validation and test shares less the words and names
of the gender lexicon (read a layer above, in :mod:`crawd.metrics.heldout`); the corpus leaves out every
candidate of those shares, a superset, so it holds none of the evaluation's names whatever the lexicon holds.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from datasets import DatasetDict

from crawd.data.bios import occupation_stats, unseen_occupations, written_words
from crawd.data.common import data_file, random_split, resolve_data_dir
from crawd.data.corpus import build_corpus

__all__ = ["EVALUATION_SHARES", "GENDER_GROUPS", "SHARES", "bold_people", "bold_prompts", "candidate_names",
           "first_name", "mentions", "share_of"]

SHARES: tuple[str, ...] = ("validation", "test", "corpus")
"""The three shares of BOLD's first names and profession entities."""
EVALUATION_SHARES: tuple[str, ...] = SHARES[:2]
"""The shares the evaluation uses; the third is the training corpus's."""
GENDER_GROUPS: dict[str, str] = {"American_actresses": "female", "American_actors": "male"}
"""BOLD's gender-domain groups and the gender of their people."""
SOURCE = "bold-people"
UNKNOWN = "unknown"
"""The ``gender`` of a profession prompt: BOLD does not give one."""


def share_of(item: str, shares: Sequence[str] = SHARES) -> str:
    """The share ``item`` falls in: ``shares[crc32(item) % len(shares)]`` (the same on every machine)."""
    return shares[zlib.crc32(item.encode("utf-8")) % len(shares)]


def bold_prompts(data_dir: str | Path | None, domain: str) -> dict[str, dict[str, list[str]]]:
    """``{group: {entity: [prompt, ...]}}`` of ``bold/{domain}_prompt.json``."""
    with open(data_file(data_dir, "bold", f"{domain}_prompt.json"), encoding="utf-8") as f:
        return json.load(f)


def first_name(entity: str) -> str:
    """The first name of a BOLD person entity (``"Jacob_Zachar"`` -> ``"Jacob"``)."""
    return entity.split("_", 1)[0]


def candidate_names(data_dir: str | Path | None) -> dict[str, list[str]]:
    """BOLD's actress and actor first names that can stand for a gender: alphabetic, 3 letters or more, in
    one of the two lists only, and no word the synthetic bios write (:func:`crawd.data.bios.written_words`:
    their first names, and surnames or cities such as "Mitchell" or "Austin"); ``{"female": [...],
    "male": [...]}``, sorted."""
    return _candidates(bold_prompts(data_dir, "gender"))


def _candidates(people: Mapping[str, Mapping[str, list[str]]]) -> dict[str, list[str]]:
    firsts = {gender: {first_name(e) for e in people[group]} for group, gender in GENDER_GROUPS.items()}
    both, written = firsts["female"] & firsts["male"], written_words()
    return {gender: sorted(n for n in names - both if n.isalpha() and len(n) >= 3 and n.lower() not in written)
            for gender, names in firsts.items()}


def mentions(words: Iterable[str], case_sensitive: bool = True, plurals: bool = False) -> re.Pattern:
    """A pattern matching any of ``words`` as a whole word (with ``plurals``, also followed by "s" or "es")."""
    alternatives = "|".join(sorted(map(re.escape, words), key=len, reverse=True)) or "(?!)"
    return re.compile(rf"\b(?:{alternatives}){'(?:e?s)?' if plurals else ''}\b", 0 if case_sensitive else re.I)


def bold_people(data_dir: str | Path | None = None, test_size: float = 0.2, n_val: int = 0,
                seed: int = 0) -> DatasetDict:
    """BOLD's sentence beginnings about people and professions that the evaluation does not use, as a
    language-model corpus.

    Rows: the gender-domain prompts of the actresses and actors whose first name is in the ``corpus`` share
    or is no candidate name (:func:`candidate_names`: a bios name, an initial, a name in both lists), and
    the profession prompts of the ``corpus`` share's entities; less every prompt that names a candidate of
    the validation or test share, or a held-out occupation (an occupation of ``occupations-stats.tsv`` the
    bios lack, :func:`crawd.data.bios.unseen_occupations`, also in the plural), or that a validation or
    test entity's prompts hold too; each text once.

    Columns: ``text``, ``gender`` (female / male for actresses / actors, ``"unknown"`` for professions),
    ``source`` (``domain/group``) and ``entity``.

    Args:
        data_dir: the data folder holding ``bold/`` and ``occupations/`` (else ``$CRAWD_DATA_DIR``).
        test_size: share of the rows held out for test, at random.
        n_val: rows of a ``validation`` split drawn from the rest; 0: none.
        seed: seed of both draws.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError("bold-people needs the data folder holding bold/ and occupations/: pass "
                                "data_dir= (--data-dir) or set CRAWD_DATA_DIR")
    people, professions = bold_prompts(root, "gender"), bold_prompts(root, "profession")
    evaluation_names = {n for names in _candidates(people).values() for n in names
                        if share_of(n) in EVALUATION_SHARES}
    names = mentions(evaluation_names)
    occupations = mentions(unseen_occupations(occupation_stats(root)), case_sensitive=False, plurals=True)
    rows = [(prompt, gender, f"gender/{group}", entity) for group, gender in GENDER_GROUPS.items()
            for entity, prompts in people[group].items() if first_name(entity) not in evaluation_names
            for prompt in prompts]
    evaluated = {p for entities in professions.values() for entity, prompts in entities.items()
                 if share_of(entity) in EVALUATION_SHARES for p in prompts}
    rows += [(prompt, UNKNOWN, f"profession/{group}", entity) for group, entities in professions.items()
             for entity, prompts in entities.items() if share_of(entity) not in EVALUATION_SHARES
             for prompt in prompts if prompt not in evaluated]
    frame = pd.DataFrame(rows, columns=["text", "gender", "source", "entity"])
    frame["text"] = frame["text"].str.strip()
    keep = ~(frame["text"].str.contains(names) | frame["text"].str.contains(occupations)) & (frame["text"] != "")
    frame = frame[keep].drop_duplicates("text").reset_index(drop=True)
    train, test = random_split(frame, test_size, seed, SOURCE)
    validation = None
    if n_val:
        if not 0 < n_val < len(train):
            raise ValueError(f"n_val must be between 1 and {len(train) - 1} (the train rows less one), got {n_val}")
        train, validation = random_split(train, n_val / len(train), seed, SOURCE)
    return build_corpus(train, test, SOURCE, validation=validation)
