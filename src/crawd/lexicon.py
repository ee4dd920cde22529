"""The gender lexicon: paired gendered words and first names, and the two-sided text swap.

Used by counterfactual data augmentation (``cda``), the ``blind`` baseline and the
counterfactual consistency loss (:mod:`crawd.counterfactual`). Word pairs come from
built-in core pairs and the shared word lists (Bolukbasi et al. 2016; gn_glove, Zhao
et al. 2018); first names from the synthetic bios' lists.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from functools import lru_cache
from pathlib import Path

from crawd.config import CrawdConfig
from crawd.data import bios
from crawd.data.common import resolve_data_dir

logger = logging.getLogger(__name__)


#: Pronouns and other pairs whose swap needs a rule or must win over the word lists.
_CORE_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"), ("himself", "herself"), ("man", "woman"), ("men", "women"), ("male", "female"),
    ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("son", "daughter"), ("brother", "sister"),
    ("king", "queen"), ("actor", "actress"), ("husband", "wife"), ("uncle", "aunt"), ("sir", "madam"),
    ("mr", "mrs"), ("males", "females"), ("husbands", "wives"), ("fathers", "mothers"), ("sons", "daughters"),
    ("brothers", "sisters"), ("kings", "queens"), ("actors", "actresses"), ("uncles", "aunts"),
)
#: Function words: after them "her" is an object ("him"), "his" stands alone ("hers").
_FUNCTION_WORDS = frozenset(
    ["a", "an", "the", "this", "that", "these", "those", "and", "or", "but", "nor", "so", "yet", "for", "to", "of", "in", "on", "at", "by", "with", "from", "about", "as", "into", "onto", "over", "under", "after", "before", "because", "since", "while", "when", "where", "if", "than", "then", "is", "was", "are", "were", "be", "been", "am", "do", "does", "did", "has", "have", "had", "will", "would", "can", "could", "should", "may", "might", "must", "not", "no", "too", "very", "also", "just", "again", "up", "down", "out", "off", "there", "here", "who", "whom", "which", "what", "how", "why"]
)
_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")


def _read_pairs(data_dir: Path | None) -> list[tuple[str, str]]:
    """Gendered word pairs from the shared word lists (gn_glove, Bolukbasi et al.); [] without them."""
    if data_dir is None:
        return []
    root = data_dir / "wordlists"
    pairs: list[tuple[str, str]] = []
    definitional = root / "bolukbasi" / "definitional_pairs.json"
    if definitional.is_file():
        pairs += [tuple(p) for p in json.loads(definitional.read_text())]
    male, female = root / "gn_glove" / "male_word_file.txt", root / "gn_glove" / "female_word_file.txt"
    if male.is_file() and female.is_file():
        pairs += [(m.strip(), f.strip()) for m, f in zip(male.read_text().splitlines(), female.read_text().splitlines())
                  if m.strip() and f.strip()]
    equalize = root / "bolukbasi" / "equalize_pairs.json"
    if equalize.is_file():
        pairs += [tuple(p) for p in json.loads(equalize.read_text())]
    return pairs


def _name_pairs() -> list[tuple[str, str]]:
    return list(zip(bios._MALE_NAMES, bios._FEMALE_NAMES))


_PRONOUNS = frozenset({"her", "his", "him", "hers"})
#: First names in Bolukbasi's definitional pairs (swapped as names, not as words).
_LISTED_NAMES = frozenset({"Mary", "John"})


@lru_cache(maxsize=8)
def gender_lexicon(data_dir: str | None, extra: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """(word swaps in lower case, first-name swaps in exact case).

    Priority when a word occurs in several pairs: the core pairs above, then ``extra``,
    then Bolukbasi's definitional pairs, gn_glove, Bolukbasi's equalize pairs; a word
    already taken keeps its first partner. Entries with an underscore (multi-word) and
    pairs of identical words are skipped. "her", "his", "him" and "hers" are handled by
    :func:`swap_text`'s rule, not by the table. Names: the synthetic bios' first-name
    lists (:mod:`crawd.data.bios`, female and male lists paired by position) first, then
    Mary / John where both are still free.
    """
    swaps: dict[str, str] = {}
    names: dict[str, str] = {}
    for male, female in _name_pairs():
        names[male], names[female] = female, male
    listed = list(_CORE_PAIRS) + list(extra) + _read_pairs(Path(data_dir) if data_dir else None)
    for a, b in listed:
        if any(c in a + b for c in "_ "):
            continue
        if a in _LISTED_NAMES or b in _LISTED_NAMES:
            if a not in names and b not in names:  # a name keeps its first partner: swaps stay involutions
                names[a], names[b] = b, a
            continue
        a, b = a.lower(), b.lower()
        if a == b or a in _PRONOUNS or b in _PRONOUNS or a in swaps or b in swaps:
            continue
        swaps[a], swaps[b] = b, a
    return swaps, names


def wordlist_dir(config: CrawdConfig | None = None) -> str | None:
    """Folder holding ``wordlists/``: ``extra["data_dir"]``, else ``$CRAWD_DATA_DIR``, else
    ``../shared/data`` beside the checkout (as the tests find it), else None (then CDA and
    blind use the core pairs and the names only, with a warning)."""
    given = (config.extra.get("data_dir") if config is not None else None)
    found = resolve_data_dir(given)
    if found is None:
        guess = Path(__file__).resolve().parents[3] / "shared" / "data"
        found = guess if guess.is_dir() else None
    if found is None or not (found / "wordlists").is_dir():
        logger.warning(
            "no wordlists/ folder found (set CRAWD_DATA_DIR or extra.data_dir): CDA / blind use the built-in "
            "core gender pairs and first names only")
        return None
    return str(found)


def _match_case(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _next_word(text: str, end: int) -> str | None:
    """The word right after position ``end`` (only spaces between), else None (punctuation, end)."""
    match = re.match(r"\s*([A-Za-z]+)", text[end:])
    return match.group(1).lower() if match else None


def _sentence_start(text: str, start: int) -> bool:
    """True when only spaces, quotes or brackets follow a sentence end (or the text start) before ``start``."""
    before = text[:start].rstrip(" \t\n\"'(\u201c\u2018")
    return not before or before[-1] in ".!?:;\n"


def swap_text(text: str, swaps: dict[str, str], names: dict[str, str]) -> str:
    """``text`` with every gendered word and first name swapped (two-sided, case kept).

    Rule for the ambiguous pronouns: "her" becomes "his" when a content word follows
    (possessive: "her work" -> "his work"), else "him" (object: "told her that",
    "met her."); "his" becomes "her" before a content word, else "hers" ("the book is
    his."); "him" -> "her"; "hers" -> "his". Names swap only in their capitalised form;
    other listed words swap in any case, except capitalised inside a sentence (taken for
    a proper noun: the surname "King" stays).
    """
    return _WORD.sub(lambda match: _swapped(text, match, swaps, names), text)


def first_gendered(text: str, swaps: dict[str, str], names: dict[str, str]) -> int | None:
    """Character offset of the first word :func:`swap_text` would change, else None."""
    for match in _WORD.finditer(text):
        if _swapped(text, match, swaps, names) != match.group(0):
            return match.start()
    return None


#: Gender-neutral first names (:func:`neutral_names`).
NEUTRAL_NAMES = ("Alex", "Sam", "Jordan", "Taylor", "Casey", "Morgan", "Riley", "Jamie", "Avery", "Quinn",
                 "Robin", "Charlie", "Drew", "Jesse", "Cameron", "Skyler")


def neutral_names(text: str, names: dict[str, str]) -> str:
    """``text`` with every listed first name replaced by a gender-neutral one (the same one for a
    name and for its counterpart)."""
    def replace(match: re.Match) -> str:
        word = match.group(0)
        if word not in names:
            return word
        return NEUTRAL_NAMES[zlib.crc32(min(word, names[word]).encode()) % len(NEUTRAL_NAMES)]

    return _WORD.sub(replace, text)


_SURNAME = re.compile(r"\s+[A-Z][a-z]+(?:-[A-Z][a-z]+)*\b")


def unnamed(text: str, names: dict[str, str]) -> str:
    """``text`` with every listed first name, and the capitalised surname right after it, replaced
    by "the person" ("The person" at a sentence start)."""
    out, last = [], 0
    for match in _WORD.finditer(text):
        if match.start() < last or match.group(0) not in names:
            continue
        surname = _SURNAME.match(text, match.end())
        out += [text[last:match.start()], "The person" if _sentence_start(text, match.start()) else "the person"]
        last = surname.end() if surname else match.end()
    return "".join(out) + text[last:]


def _swapped(text: str, match: re.Match, swaps: dict[str, str], names: dict[str, str]) -> str:
    word = match.group(0)
    low = word.lower()
    if word in names:
        return names[word]
    if low in _PRONOUNS:
        after = _next_word(text, match.end())
        content = after is not None and after not in _FUNCTION_WORDS
        new = {"her": "his" if content else "him", "his": "her" if content else "hers",
               "him": "her", "hers": "his"}[low]
        return _match_case(new, word)
    if low in swaps:
        if word[:1].isupper() and not _sentence_start(text, match.start()):
            return word  # a capitalised word inside a sentence is a proper noun ("Raj King", "Dr. Mann")
        return _match_case(swaps[low], word)
    return word
