"""Synthetic biographies for the 28 Bias in Bios occupations, skewed by gender like real life.

Each biography is two or three sentences about a named person, written from
templates with the person's pronouns (he / his / him vs she / her / hers), an
occupation, a city, a school and an occupation-specific focus. The train split
gives each occupation the share of women it has in the US workforce (optionally
sharpened by ``skew``), so a model can learn the stereotype; the test split is
gender-balanced per occupation, so the stereotype shows up as a gap between
women and men.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from datasets import DatasetDict

from crawd.data.common import build_dataset, data_file, resolve_data_dir
from crawd.data.names import FEMALE_NAMES, MALE_NAMES

__all__ = ["CITIES", "DEFAULT_FEMALE_SHARE", "OCCUPATIONS", "OCCUPATION_TITLES", "SURNAMES", "TSV_NAMES",
           "TSV_SYNONYMS", "article", "female_share", "occupation_stats", "sharpen", "synthetic_bios",
           "unseen_occupations", "written_words"]

# fmt: off
OCCUPATIONS: list[str] = [
    "accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist", "dietitian", "dj",
    "filmmaker", "interior_designer", "journalist", "model", "nurse", "painter", "paralegal", "pastor",
    "personal_trainer", "photographer", "physician", "poet", "professor", "psychologist", "rapper",
    "software_engineer", "surgeon", "teacher", "yoga_teacher",
]
# fmt: on
"""The 28 Bias in Bios occupations, in the label order of LabHC/bias_in_bios (``profession`` 0..27)."""
OCCUPATION_TITLES: list[str] = ["DJ" if o == "dj" else o.replace("_", " ") for o in OCCUPATIONS]
"""The occupations as the bios write them ("software engineer", "DJ")."""

# Share of women per occupation, built in so the loader works without the data
# folder. APPROXIMATE. Values marked "tsv" are the BLS 2015 figures of
# occupations-stats.tsv (US Bureau of Labor Statistics, Current Population
# Survey 2015, via the WinoGender release). The others are approximate figures
# for the nearest BLS CPS 2015 line (named in the comment), written from memory
# and not checked against the published table; "est." marks occupations with no
# BLS line of their own, where the figure is a rough estimate only.
DEFAULT_FEMALE_SHARE: dict[str, float] = {
    "accountant": 0.597,  # tsv: accountants and auditors
    "architect": 0.208,  # tsv
    "attorney": 0.345,  # tsv: lawyers
    "chiropractor": 0.26,  # chiropractors
    "comedian": 0.25,  # est.: no BLS line
    "composer": 0.20,  # est.: musicians and singers ~0.35, composers fewer
    "dentist": 0.29,  # dentists
    "dietitian": 0.946,  # tsv: dietitians and nutritionists
    "dj": 0.20,  # est.: announcers ~0.2
    "filmmaker": 0.37,  # producers and directors
    "interior_designer": 0.80,  # est.: designers ~0.55, interior designers more
    "journalist": 0.48,  # news analysts, reporters and correspondents
    "model": 0.80,  # models, demonstrators and product promoters
    "nurse": 0.8958,  # tsv: registered nurses
    "painter": 0.50,  # artists and related workers (the tsv "painter" is the construction trade)
    "paralegal": 0.854,  # tsv: paralegals and legal assistants
    "pastor": 0.18,  # clergy
    "personal_trainer": 0.60,  # recreation and fitness workers
    "photographer": 0.46,  # photographers
    "physician": 0.379,  # tsv: physicians and surgeons
    "poet": 0.60,  # writers and authors
    "professor": 0.47,  # postsecondary teachers
    "psychologist": 0.703,  # tsv
    "rapper": 0.10,  # est.: no BLS line
    "software_engineer": 0.1835,  # tsv: computer programmers
    "surgeon": 0.379,  # tsv: physicians and surgeons
    "teacher": 0.71,  # tsv
    "yoga_teacher": 0.80,  # est.: no BLS line
}

TSV_NAMES: dict[str, str] = {
    "accountant": "accountant",
    "architect": "architect",
    "attorney": "lawyer",
    "dietitian": "dietitian",
    "nurse": "nurse",
    "paralegal": "paralegal",
    "physician": "physician",
    "psychologist": "psychologist",
    "software_engineer": "programmer",
    "surgeon": "surgeon",
    "teacher": "teacher",
}
"""Occupation -> its row in occupations-stats.tsv, only where the match is obvious.

Not mapped: ``painter`` (the TSV row is the construction trade, 5.7% women,
not the artist of Bias in Bios), ``yoga_teacher`` and ``professor`` (the TSV
``teacher`` / ``instructor`` rows are other jobs) and the occupations the TSV
lacks; these keep :data:`DEFAULT_FEMALE_SHARE`.
"""

TSV_SYNONYMS: dict[str, str] = {"doctor": "physician", "auditor": "accountant", "nutritionist": "dietitian"}
"""Rows of occupations-stats.tsv that name an occupation of the bios by another word (the same BLS line:
physicians and surgeons, accountants and auditors, dietitians and nutritionists) -> that occupation."""

_OCCUPATIONS_TSV = Path("occupations") / "occupations-stats.tsv"

# fmt: off
SURNAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Lee",
    "Walker", "Hall", "Young", "King", "Wright", "Lopez", "Hill", "Scott", "Green", "Adams", "Baker", "Nelson",
    "Carter", "Mitchell", "Chen", "Patel", "Kim", "Nguyen", "Cohen",
]
CITIES = [
    "Chicago", "Boston", "Seattle", "Denver", "Austin", "Atlanta", "Portland", "San Diego", "Toronto", "London",
    "Dublin", "Melbourne", "Minneapolis", "Philadelphia", "Nashville", "Vancouver",
]
_SCHOOLS = [
    "the University of Michigan", "Boston University", "the University of Texas", "McGill University",
    "Ohio State University", "the University of Washington", "New York University", "UCLA",
    "the University of Toronto", "Arizona State University", "Rutgers University", "the University of Leeds",
]
# fmt: on
_QUALITIES = (
    "a calm, careful manner",
    "patience and clear explanations",
    "an eye for detail",
    "a warm sense of humour",
    "reliability under pressure",
    "a thoughtful, curious approach",
)

# Two focus phrases per occupation: what the person's work is about.
_FOCUS: dict[str, tuple[str, str]] = {
    "accountant": ("tax planning for small businesses", "audits and financial reporting"),
    "architect": ("sustainable housing", "the renovation of public buildings"),
    "attorney": ("employment law", "commercial contracts and litigation"),
    "chiropractor": ("back and neck pain", "sports injuries and spinal care"),
    "comedian": ("stand-up about everyday life", "improvised sketches and satire"),
    "composer": ("film scores", "choral and chamber music"),
    "dentist": ("family dentistry", "orthodontics and oral surgery"),
    "dietitian": ("clinical nutrition", "diet plans for people with diabetes"),
    "dj": ("house and techno sets", "radio shows and club nights"),
    "filmmaker": ("documentaries about rural life", "independent short films"),
    "interior_designer": ("small apartments", "hotel and restaurant interiors"),
    "journalist": ("politics and public health", "investigative reporting on local government"),
    "model": ("fashion campaigns", "runway shows and editorial shoots"),
    "nurse": ("intensive care", "paediatric and emergency care"),
    "painter": ("large abstract canvases", "landscapes in oil and watercolour"),
    "paralegal": ("legal research and case files", "real estate closings"),
    "pastor": ("youth ministry", "community outreach and pastoral care"),
    "personal_trainer": ("strength training", "fitness programmes for older adults"),
    "photographer": ("wedding and portrait photography", "wildlife and travel photography"),
    "physician": ("internal medicine", "primary care for families"),
    "poet": ("memory and migration", "short lyric poems about cities"),
    "professor": ("the history of science", "machine learning and statistics"),
    "psychologist": ("anxiety and depression", "child development and family therapy"),
    "rapper": ("lyrics about growing up", "collaborations with jazz musicians"),
    "software_engineer": ("web applications", "distributed systems and databases"),
    "surgeon": ("orthopaedic surgery", "heart and vascular surgery"),
    "teacher": ("middle school mathematics", "reading and writing for young children"),
    "yoga_teacher": ("vinyasa classes", "breathing and meditation workshops"),
}

# {name} {a} {occ} {city} {school} {focus} {quality} {years}; pronouns {he} {He} {his} {His} {him} {hers}.
_TEMPLATES = (
    "{name} is {a} {occ} based in {city}. {He} studied at {school}, and {his} work focuses on {focus}.",
    "{name} has worked as {a} {occ} for {years} years. {He} lives in {city}, where {he} is known for {quality}.",
    (
        "Based in {city}, {name} is {a} {occ} with {years} years of experience. "
        "Colleagues know {him} for {quality}. {His} current work centres on {focus}."
    ),
    "{name} is {a} {occ}. After graduating from {school}, {he} moved to {city}. Today {his} work is about {focus}.",
    "{name} works as {a} {occ} in {city}. {He} is known for {quality}, and {his} recent projects deal with {focus}.",
    "As {a} {occ}, {name} specialises in {focus}. {He} earned {his} degree at {school} and now lives in {city}.",
    (
        "{name} is {a} {occ} in {city} who specialises in {focus}. "
        "Ask colleagues whose advice they trust most, and the answer is often {hers}."
    ),
)

_PRONOUNS = {
    "female": {"he": "she", "He": "She", "his": "her", "His": "Her", "him": "her", "hers": "hers"},
    "male": {"he": "he", "He": "He", "his": "his", "His": "His", "him": "him", "hers": "his"},
}


def female_share(data_dir: str | None = None, occupations_tsv: str | None = None) -> dict[str, float]:
    """Return the share of women (0..1) for each of :data:`OCCUPATIONS`.

    The BLS column of ``occupations-stats.tsv`` gives the occupations listed in
    :data:`TSV_NAMES`; the rest, and all of them when no TSV is found, come
    from the approximate built-in :data:`DEFAULT_FEMALE_SHARE`.

    Args:
        data_dir: the data folder (else ``$CRAWD_DATA_DIR``); its
            ``occupations/occupations-stats.tsv`` is used when present.
        occupations_tsv: an explicit TSV file; takes precedence and must exist.
    """
    shares = dict(DEFAULT_FEMALE_SHARE)
    if occupations_tsv is not None:
        path: Path | None = Path(occupations_tsv).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"occupation statistics file {path} does not exist")
    else:
        root = resolve_data_dir(data_dir)
        path = root / _OCCUPATIONS_TSV if root is not None and (root / _OCCUPATIONS_TSV).is_file() else None
    if path is None:
        return shares
    with path.open(newline="") as handle:
        rows = {row["occupation"]: row for row in csv.DictReader(handle, delimiter="\t")}
    if rows and "bls_pct_female" not in next(iter(rows.values())):
        raise ValueError(f"{path} has no column 'bls_pct_female'")
    for occupation, tsv_name in TSV_NAMES.items():
        if tsv_name in rows:
            shares[occupation] = float(rows[tsv_name]["bls_pct_female"]) / 100.0
    return shares


def occupation_stats(data_dir: str | Path | None) -> dict[str, float]:
    """``{occupation: bls_pct_female}`` from ``occupations/occupations-stats.tsv`` (rows with a value)."""
    frame = pd.read_csv(data_file(data_dir, "occupations", "occupations-stats.tsv"), sep="\t")
    frame = frame.dropna(subset=["bls_pct_female"])
    return dict(zip(frame["occupation"].astype(str), frame["bls_pct_female"].astype(float)))


def written_words() -> frozenset[str]:
    """Every word (lower case) the synthetic bios can write: template words, pronouns, names, surnames,
    cities, schools, occupation titles, focus phrases and qualities."""
    material = [*_TEMPLATES, *SURNAMES, *CITIES, *_SCHOOLS, *_QUALITIES, *FEMALE_NAMES, *MALE_NAMES,
                *(o.replace("_", " ") for o in OCCUPATIONS), *(f for pair in _FOCUS.values() for f in pair),
                *(p for pronouns in _PRONOUNS.values() for p in pronouns.values())]
    return frozenset(w.lower() for text in material for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", text)))


def unseen_occupations(stats: Mapping[str, float]) -> dict[str, float]:
    """The occupations of ``stats`` (:func:`occupation_stats`) that the synthetic bios never name: not the
    row of a bios occupation (:data:`TSV_NAMES`, :data:`TSV_SYNONYMS`) and no word the bios write
    (:func:`written_words`: "engineer" of "software engineer", "painter")."""
    taken = set(TSV_NAMES.values()) | set(TSV_SYNONYMS) | written_words()
    return {occupation: share for occupation, share in stats.items() if occupation.lower() not in taken}


def article(word: str) -> str:
    """The indefinite article of ``word``: "an" before a vowel letter, else "a"."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def sharpen(p: float, skew: float) -> float:
    """Return ``sigmoid(skew * logit(p))`` clipped to [0.02, 0.98].

    skew = 1 keeps p; skew > 1 pushes it towards 0 or 1 (a stronger
    stereotype); 0 <= skew < 1 pulls it towards 0.5 (skew = 0 gives balanced
    data); a negative skew reverses the stereotype.
    """
    p = min(max(p, 1e-6), 1 - 1e-6)
    z = skew * math.log(p / (1 - p))
    return min(max(1.0 / (1.0 + math.exp(-z)), 0.02), 0.98)


def synthetic_bios(
    n_train: int = 2000,
    n_test: int = 560,
    skew: float = 1.0,
    seed: int = 0,
    occupations_tsv: str | None = None,
    data_dir: str | None = None,
    hide_title: bool = False,
    n_val: int = 0,
    paired: bool = False,
    occupations: list[str] | None = None,
) -> DatasetDict:
    """Generate short biographies; the task is to predict the occupation.

    Both splits spread their rows as evenly as possible over the 28
    occupations. In train, each occupation gets ``round(share * count)`` women,
    where ``share = sharpen(female_share(...)[occupation], skew)``; in test,
    half of each occupation's rows are women (exactly, when ``n_test`` is a
    multiple of 56). Names, cities and templates are drawn with
    ``random.Random(seed)``: the same arguments give the same data.

    Columns: ``text``, ``label`` (ClassLabel over ``occupations``),
    ``gender`` ("female" / "male") and ``occupation`` (the label's name).

    Args:
        n_train, n_test: split sizes; each at least 28 (one row per occupation).
        skew: sharpening of the train shares, see :func:`sharpen`.
        seed: random seed.
        occupations_tsv, data_dir: where the occupation statistics come from,
            see :func:`female_share`.
        hide_title: write "a professional" instead of the occupation's title,
            as De-Arteaga et al. (2019) drop the sentence naming the title from
            Bias in Bios. A classifier must then read the occupation from the
            work described; one template describes none, so there the only
            signal left is the person's gender, and a classifier that learnt
            the training skew shows it as a TPR gap. The random draws are the
            same as with the title.
        n_val: size of a ``validation`` split drawn like test (gender-balanced, after
            test, so train and test do not change), for choosing hyper-parameters; 0: none.
        paired: test (and validation) rows come in counterfactual pairs: each woman's bio
            has a man's twin with the same draws (template, city, school, focus, quality,
            years, surname) and the first name at the same position of the other list, so
            a gap between the two halves is the model's use of gender, not sampling noise.
        occupations: a subset of :data:`OCCUPATIONS` (the labels, in that order); None: all 28.
    """
    occupations = list(OCCUPATIONS) if occupations is None else list(occupations)
    unknown = sorted(set(occupations) - set(OCCUPATIONS))
    if unknown or len(occupations) < 2:
        raise ValueError(f"occupations must be two or more of {', '.join(OCCUPATIONS)}; got {unknown or occupations}")
    if min(n_train, n_test) < len(occupations) or 0 < n_val < len(occupations):
        raise ValueError(f"n_train, n_test and n_val (when given) must be at least {len(occupations)} "
                         "(one row per occupation)")
    shares = female_share(data_dir, occupations_tsv)
    rng = random.Random(seed)

    def row(occupation: str, gender: str) -> dict[str, str]:
        return {"text": _bio(rng, occupation, gender, hide_title), "label": occupation, "gender": gender,
                "occupation": occupation}

    def split(n: int, share_of: dict[str, float], twins: bool = False) -> pd.DataFrame:
        rows = []
        for i, occupation in enumerate(occupations):
            count = n // len(occupations) + (i < n % len(occupations))
            if twins:
                for _ in range(count // 2):
                    state = rng.getstate()
                    rows.append(row(occupation, "female"))
                    rng.setstate(state)  # the same draws: the name lists have the same length
                    rows.append(row(occupation, "male"))
                count %= 2
            women = round(share_of[occupation] * count)
            rows += [row(occupation, gender) for gender in ["female"] * women + ["male"] * (count - women)]
        rng.shuffle(rows)
        return pd.DataFrame(rows)

    balanced = dict.fromkeys(occupations, 0.5)
    train = split(n_train, {o: sharpen(shares[o], skew) for o in occupations})
    test = split(n_test, balanced, paired)
    validation = split(n_val, balanced, paired) if n_val else None
    return build_dataset(train, test, "synthetic bios", label_names=occupations, validation=validation)


def _bio(rng: random.Random, occupation: str, gender: str, hide_title: bool = False) -> str:
    """Write one biography of a person of ``gender`` working as ``occupation``."""
    occ = "professional" if hide_title else OCCUPATION_TITLES[OCCUPATIONS.index(occupation)]
    first = rng.choice(FEMALE_NAMES if gender == "female" else MALE_NAMES)
    return rng.choice(_TEMPLATES).format(
        name=f"{first} {rng.choice(SURNAMES)}",
        a=article(occ),
        occ=occ,
        city=rng.choice(CITIES),
        school=rng.choice(_SCHOOLS),
        focus=rng.choice(_FOCUS[occupation]),
        quality=rng.choice(_QUALITIES),
        years=rng.randint(2, 25),
        **_PRONOUNS[gender],
    )
