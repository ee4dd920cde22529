"""The first names of the synthetic bios: one list per gender, paired by position.

The synthetic bios (:mod:`crawd.data.bios`) draw their people from these lists; the gender lexicon
(:mod:`crawd.mitigation.lexicon`) swaps and hides the same names in training texts. The evaluation's
held-out names (:mod:`crawd.metrics.heldout`) are disjoint from them (tested).
"""

from __future__ import annotations

__all__ = ["FEMALE_NAMES", "MALE_NAMES", "name_pairs"]

# fmt: off
FEMALE_NAMES = [
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah", "Karen", "Nancy", "Lisa",
    "Emily", "Michelle", "Laura", "Amanda", "Rachel", "Hannah", "Olivia", "Sofia", "Grace", "Chloe", "Maria",
    "Aisha", "Mei", "Priya", "Fatima", "Elena", "Julia", "Claire", "Naomi",
]
MALE_NAMES = [
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Daniel", "Matthew",
    "Anthony", "Mark", "Steven", "Andrew", "Joshua", "Kevin", "Brian", "Ryan", "Jacob", "Ethan", "Samuel",
    "Carlos", "Ahmed", "Wei", "Raj", "Omar", "Lucas", "Martin", "Noah",
]
# fmt: on


def name_pairs() -> list[tuple[str, str]]:
    """(male, female) first-name pairs, by position in the two lists."""
    return list(zip(MALE_NAMES, FEMALE_NAMES))
