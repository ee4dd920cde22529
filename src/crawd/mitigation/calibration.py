"""The gender cues' own calibration sentences: named and unnamed people in varied sentence forms.

Training rows come in the forms of their corpus (the synthetic bios: one template family, whose only
capitalised words besides the names are a few surnames, cities and schools). These sentences add other
forms, gendered nouns (the bios have none), and other capitalised words that are not names: an opening, a
subject, a predicate and an ending. The subject is a listed first name (with a surname, or alone) or a
gendered noun of the lexicon, whose last token is a cue, or a neutral subject (:data:`NEUTRAL_SUBJECTS`). Names, surnames, cities and occupations are those of
the synthetic bios; the evaluation's held-out names, occupations and templates are none of them, and no
evaluation template is a near copy of these forms (tests/test_heldout_metrics.py).
"""

from __future__ import annotations

import random

from crawd.data.bios import CITIES, OCCUPATION_TITLES, SURNAMES, article
from crawd.data.names import FEMALE_NAMES, MALE_NAMES
from crawd.mitigation.lexicon import gender_lexicon

#: Subjects that give a gender by a word ("{w}": a gendered noun of the lexicon, e.g. "aunt").
GENDERED_SUBJECTS = ("the {w}", "my {w}", "our {w}", "a {w}")
#: Subjects that give no gender ("{o}": an occupation of the bios; "{p}": a word for a person that is no
#: occupation, so that a word for a person is not taken for a gendered one).
NEUTRAL_SUBJECTS = ("the person", "someone", "this person", "my colleague", "a friend of mine", "the new hire",
                    "the {o}", "a {o}", "our {o}", "a local {o}", "the {o} next door", "one {o}", "every {o}",
                    "the {p}", "a {p}", "our {p}", "one {p}")
PEOPLE = ("neighbour", "customer", "student", "patient", "passenger", "tenant", "guest", "stranger", "visitor",
          "child", "volunteer", "resident", "member", "fan", "player", "runner", "reader", "traveller", "driver",
          "owner", "partner", "applicant", "candidate", "winner", "speaker", "caller", "newcomer", "pupil",
          # occupations the bios lack and the evaluation's held-out ones are not (tested)
          "pilot", "farmer", "soldier", "tailor", "judge", "banker", "barber", "butcher", "dancer", "singer",
          "coach", "sailor", "gardener", "mayor", "senator", "courier", "curator", "diplomat", "editor", "florist",
          "locksmith", "novelist", "optician", "surveyor", "translator", "welder", "zoologist", "astronomer")
#: What may come before the subject: nothing, or words capitalised at a sentence's start, months and places.
OPENINGS = ("", "", "", "Yesterday, ", "According to the report, ", "Last year, ", "I think ", "In March, ",
            "By Friday, ", "Meanwhile, ", "Apparently, ", "Back in {c}, ", "Suddenly, ", "Every summer, ",
            "Today, ", "At noon, ",
            # words of two pieces or more, a capitalised piece first (as many names are): "Some" + "how"
            "Somehow, ", "Downstairs, ", "Beforehand, ", "Elsewhere, ", "Occasionally, ", "Honestly, ", "Lately, ",
            "Overnight, ", "Upstairs, ", "Afterwards, ")
PREDICATES = ("works as {a} {o} in {c}", "has been {a} {o} for {y} years", "moved to {c} last year",
              "gave a talk in {c}", "answered the phone", "filled in a long form", "arrived late to the meeting",
              "finished the project on time", "called the office", "bought a new car", "visited {c} in the spring",
              "opened the door", "read the report twice", "met the client", "wrote to the council")
#: Where the subject's pronoun may come next.
ENDINGS = (" and said that", " and told everyone that", ". Later on,", ". At the end of the week,",
           ". As usual,", ". Afterwards,", ". The next morning,", ". In the evening,", ". For years,",
           ". That afternoon,", ". Back home,", ". Without a word,")
#: How many sentences a fit adds, and their seed.
COUNT, SEED = 240, 0


def calibration_sentences(count: int = COUNT, seed: int = SEED) -> list[str]:
    """The sentences: half with a neutral subject, a third with a first name (with a surname seven times in
    ten), a sixth with a gendered noun of the lexicon."""
    rng = random.Random(seed)
    nouns = sorted(w for w in gender_lexicon()[0] if len(w) > 3 and not w.endswith("s"))
    out = []
    for i in range(count):
        occupation = rng.choice(OCCUPATION_TITLES)
        predicate = rng.choice(PREDICATES).format(a=article(occupation), o=occupation, c=rng.choice(CITIES),
                                                  y=rng.randint(2, 20))
        opening = rng.choice(OPENINGS).format(c=rng.choice(CITIES))
        if i % 6 == 4:
            subject = rng.choice(GENDERED_SUBJECTS).format(w=rng.choice(nouns))
        elif i % 2 == 0:
            name = rng.choice(FEMALE_NAMES + MALE_NAMES)
            subject = name if rng.random() < 0.3 else f"{name} {rng.choice(SURNAMES)}"
        else:
            subject = rng.choice(NEUTRAL_SUBJECTS).format(o=rng.choice(OCCUPATION_TITLES), p=rng.choice(PEOPLE))
        if not opening:
            subject = subject[:1].upper() + subject[1:]
        out.append(f"{opening}{subject} {predicate}{rng.choice(ENDINGS)}")
    return out
