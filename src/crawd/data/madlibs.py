"""The Jigsaw / ConversationAI "bias madlibs" toxicity sentences (Dixon et al. 2018).

``<data_dir>/madlibs/bias_madlibs_77k.csv`` holds 76,564 templated sentences
(columns ``Text``, ``Label`` BAD / NOT_BAD, ``Template``), half toxic. All but
864 name exactly one of the 50 identity terms of :data:`IDENTITY_GROUPS`
(checked on the data: every term appears in 1,514 sentences). The 864
``you_occupation`` sentences ("You are a nasty dancer") name an occupation,
not an identity, and are left out.

Columns: ``text``, ``label`` (ClassLabel: 0 ``non_toxic``, 1 ``toxic``),
``gender`` = the identity term (the sensitive attribute whose per-value false
positive rates are compared; the name is the common column's, the values are
not genders), ``identity`` (the term again), ``group`` (its family, e.g.
``religion``) and ``template``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from datasets import DatasetDict

from crawd.data.common import build_dataset, require_columns, resolve_data_dir, stratified_split

__all__ = ["IDENTITY_GROUPS", "LABEL_NAMES", "identity_term", "madlibs"]

LABEL_NAMES: list[str] = ["non_toxic", "toxic"]
"""Class names: madlibs' NOT_BAD is 0, BAD is 1."""

# The madlibs identity terms (the generator's adjective list) and the family
# each belongs to. "race" covers race, ethnicity and nationality, as the paper's
# race / nationality reference group does.
IDENTITY_GROUPS: dict[str, str] = {
    **dict.fromkeys(["male", "female", "nonbinary", "trans", "transgender"], "gender"),
    **dict.fromkeys(
        ["lesbian", "gay", "bisexual", "queer", "lgbt", "lgbtq", "homosexual", "straight", "heterosexual"], "sexuality"
    ),
    **dict.fromkeys(
        [
            "african",
            "african american",
            "black",
            "white",
            "european",
            "hispanic",
            "latino",
            "latina",
            "latinx",
            "mexican",
            "canadian",
            "american",
            "asian",
            "indian",
            "middle eastern",
            "chinese",
            "japanese",
        ],
        "race",
    ),
    **dict.fromkeys(
        ["christian", "muslim", "jewish", "buddhist", "catholic", "protestant", "sikh", "taoist"], "religion"
    ),
    **dict.fromkeys(["old", "older", "young", "younger", "teenage", "millenial", "middle aged", "elderly"], "age"),
    **dict.fromkeys(["blind", "deaf", "paralyzed"], "disability"),
}
"""Identity term -> group (gender, sexuality, race, religion, age, disability)."""

# Longest terms first, so "african american" wins over "american".
_TERM = re.compile(r"\b(" + "|".join(sorted(map(re.escape, IDENTITY_GROUPS), key=len, reverse=True)) + r")\b")
_FILE = "madlibs/bias_madlibs_77k.csv"


def identity_term(text: str) -> str | None:
    """Return the identity term a madlibs sentence names (lower case), or None."""
    match = _TERM.search(text.lower())
    return match.group(1) if match else None


def madlibs(
    data_dir: str | None = None, test_size: float = 0.2, seed: int = 0, max_rows: int | None = None
) -> DatasetDict:
    """Load bias madlibs as a toxicity classification task with the identity term as sensitive attribute.

    Args:
        data_dir: the data folder holding ``madlibs/bias_madlibs_77k.csv``
            (else ``$CRAWD_DATA_DIR``).
        test_size: share of rows held out for test, stratified by label.
        seed: seed of the shuffle, of ``max_rows`` and of the split.
        max_rows: keep this many rows (a random draw) before splitting.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(f"madlibs needs the data folder holding {_FILE}: pass data_dir= or set CRAWD_DATA_DIR")
    path = root / _FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: point data_dir at the folder that holds {_FILE}")
    raw = pd.read_csv(path)
    require_columns(raw, ("Text", "Label", "Template"), str(path))
    identity = raw["Text"].map(identity_term)
    raw = raw.assign(identity=identity)[identity.notna()]
    labels = raw["Label"].map({"NOT_BAD": "non_toxic", "BAD": "toxic"})
    if labels.isna().any():
        raise ValueError(
            f"{path}: column 'Label' must hold BAD or NOT_BAD, found {raw['Label'][labels.isna()].iloc[0]!r}"
        )
    frame = pd.DataFrame(
        {
            "text": raw["Text"],
            "label": labels,
            "gender": raw["identity"],
            "identity": raw["identity"],
            "group": raw["identity"].map(IDENTITY_GROUPS),
            "template": raw["Template"],
        }
    )
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))[:max_rows]]
    train, test = stratified_split(frame, test_size, seed)
    return build_dataset(train, test, str(path), label_names=LABEL_NAMES)
