"""The gender lexicon: paired gendered words and first names, and the two-sided text swap.

Used by counterfactual data augmentation (``cda``), the ``blind`` baseline and the mitigation's
training terms (:mod:`crawd.mitigation`). Word pairs come from built-in core pairs and two published
word lists shipped inside this package (``wordlists/``, read with :mod:`importlib.resources`, so an
installed crawd reads the same lexicon wherever it runs): Bolukbasi et al. (2016, MIT) and gn_glove
(Zhao et al. 2018, Apache-2.0), each with its LICENSE beside it. First names: the synthetic bios'
lists (:mod:`crawd.data.names`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache
from importlib.resources import files

from crawd.data.names import name_pairs

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
WORDLISTS = files("crawd.mitigation") / "wordlists"


def listed_pairs() -> list[tuple[str, str]]:
    """(male, female) word pairs of the shipped word lists, in priority order: Bolukbasi et al.'s definitional
    pairs (written female first), gn_glove's aligned lists, Bolukbasi et al.'s equalize pairs."""
    bolukbasi, gn_glove = WORDLISTS / "bolukbasi", WORDLISTS / "gn_glove"
    pairs = [(m, f) for f, m in json.loads((bolukbasi / "definitional_pairs.json").read_text())]
    male = (gn_glove / "male_word_file.txt").read_text().splitlines()
    female = (gn_glove / "female_word_file.txt").read_text().splitlines()
    pairs += [(m.strip(), f.strip()) for m, f in zip(male, female) if m.strip() and f.strip()]
    pairs += [tuple(p) for p in json.loads((bolukbasi / "equalize_pairs.json").read_text())]
    return pairs


_PRONOUNS = frozenset({"her", "his", "him", "hers"})
#: First names in Bolukbasi's definitional pairs (swapped as names, not as words).
_LISTED_NAMES = frozenset({"Mary", "John"})


@lru_cache(maxsize=8)
def gender_lexicon(extra: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """(word swaps in lower case, first-name swaps in exact case); :func:`word_genders` says which side is which.

    Priority when a word occurs in several pairs: the core pairs above, then ``extra``,
    then the shipped lists (:func:`listed_pairs`); a word already taken keeps its first
    partner. Entries with an underscore (multi-word) and pairs of identical words are
    skipped. "her", "his", "him" and "hers" are handled by :func:`swap_text`'s rule, not by
    the table. Names: the synthetic bios' first-name lists (:mod:`crawd.data.names`, female
    and male lists paired by position) first, then Mary / John where both are still free.
    """
    swaps, names, _ = _lexicon(extra)
    return swaps, names


@lru_cache(maxsize=8)
def word_genders(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """``"female"`` or ``"male"`` for every word of :func:`gender_lexicon` (lower case), the four context
    pronouns and every first name (exact case). ``extra`` pairs are (male, female), as the core pairs."""
    return _lexicon(extra)[2]


def _lexicon(extra: tuple[tuple[str, str], ...]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    swaps: dict[str, str] = {}
    names: dict[str, str] = {}
    genders = {"her": "female", "hers": "female", "his": "male", "him": "male"}
    for male, female in name_pairs():
        names[male], names[female] = female, male
    for a, b in list(_CORE_PAIRS) + list(extra) + listed_pairs():
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
        genders[a], genders[b] = "male", "female"
    for male, female in name_pairs():
        genders[male], genders[female] = "male", "female"
    for a, b in listed_pairs():
        if a in names and b in names:
            genders[a], genders[b] = "male", "female"
    return swaps, names, genders


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


def gendered_spans(text: str, swaps: dict[str, str], names: dict[str, str]) -> Iterator[re.Match]:
    """The words of ``text`` that :func:`swap_text` would change (gendered words and listed first names), in order."""
    return (match for match in _WORD.finditer(text) if _swapped(text, match, swaps, names) != match.group(0))


def first_gendered(text: str, swaps: dict[str, str], names: dict[str, str]) -> int | None:
    """Character offset of the first word :func:`swap_text` would change, else None."""
    return next((match.start() for match in gendered_spans(text, swaps, names)), None)


_SURNAME = re.compile(r"\s+[A-Z][a-z]+(?:-[A-Z][a-z]+)*\b")


def unnamed(text: str, names: dict[str, str], subject: str = "the person") -> str:
    """``text`` with every listed first name, and the capitalised surname right after it, replaced
    by ``subject`` (capitalised at a sentence start)."""
    out, last = [], 0
    for match in _WORD.finditer(text):
        if match.start() < last or match.group(0) not in names:
            continue
        surname = _SURNAME.match(text, match.end())
        out += [text[last:match.start()], subject[:1].upper() + subject[1:] if _sentence_start(text, match.start())
                else subject]
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
