"""What every loader shares: the data folder, validation, label encoding and splitting.

Every loader returns a ``datasets.DatasetDict`` with splits ``train`` and
``test`` and at least these columns:

* ``text``: the input text;
* ``label``: the task label, a ``ClassLabel`` int whose names are in
  ``dataset["train"].features["label"].names``;
* ``gender``: the sensitive attribute as a string (``"female"`` / ``"male"``
  for biographies; the identity term for madlibs).

Loaders build pandas frames with these columns (plus their own extras) and
hand them to :func:`build_dataset`, which validates and encodes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value

COLUMNS: tuple[str, ...] = ("text", "label", "gender")
"""The columns every loader returns, in this order, before its extras."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Return the folder of real datasets (``madlibs/``, ``occupations/``, ...).

    The argument wins, else the ``CRAWD_DATA_DIR`` environment variable, else
    None (no data folder). A folder that is named but missing is an error.
    """
    value = data_dir if data_dir is not None else os.environ.get("CRAWD_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder {path} does not exist: pass data_dir= or set CRAWD_DATA_DIR to an existing folder"
        )
    return path


def data_file(data_dir: str | os.PathLike | None, *parts: str) -> Path:
    """``data_dir/parts...``; FileNotFoundError with one line if it is absent."""
    if data_dir is None:
        raise FileNotFoundError(f"no data_dir given; expected <data_dir>/{'/'.join(parts)}")
    path = Path(data_dir).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise ValueError naming the first of ``columns`` that ``frame`` lacks."""
    for column in columns:
        if column not in frame.columns:
            raise ValueError(f"{where} has no column {column!r} (columns: {', '.join(map(str, frame.columns))})")


def validate(train: pd.DataFrame, test: pd.DataFrame, source: str, names: Mapping[str, str] | None = None) -> None:
    """Check two splits before encoding; raise ValueError with one line on the first problem.

    Checked: the common columns exist, no split is empty, no text is empty, no
    label or sensitive value is missing, and every test label occurs in train.
    ``names`` maps a common column to the user's column name, for the messages.
    """
    names = {column: (names or {}).get(column, column) for column in COLUMNS}
    for split, frame in (("train", train), ("test", test)):
        where = f"{source}: the {split} split"
        if len(frame) == 0:
            raise ValueError(f"{where} is empty: give it at least one row")
        require_columns(frame, COLUMNS, where)
        text = frame["text"]
        empty = text.isna() | (text.astype(str).str.strip() == "")
        for column, bad in (("text", empty), ("label", frame["label"].isna()), ("gender", frame["gender"].isna())):
            if bad.any():
                raise ValueError(
                    f"{where} has {int(bad.sum())} rows with an empty {names[column]!r} "
                    f"(first: row {frame.index[bad.to_numpy()][0]}, data rows counted from 0): fill or drop them"
                )
    unseen = set(test["label"]) - set(train["label"])
    if unseen:
        shown = ", ".join(map(str, sorted(unseen, key=str)[:10]))
        raise ValueError(
            f"{source}: test labels never seen in train in column {names['label']!r}: {shown}; "
            "add train rows for them or drop them from test"
        )


def build_dataset(
    train: pd.DataFrame,
    test: pd.DataFrame,
    source: str,
    label_names: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    validation: pd.DataFrame | None = None,
) -> DatasetDict:
    """Validate two splits and return them as a DatasetDict with a ``ClassLabel`` label.

    Args:
        train, test: frames with the common columns (and any extras).
        source: what the data came from, for error messages.
        label_names: the class names, in id order; the frames' ``label`` holds
            these names. None: the names are the sorted distinct train labels
            (so integer labels 0..k-1 keep their ids).
        names: common column -> the user's column name, for error messages.
        validation: an optional third split (``"validation"``), checked as ``test`` is.
    """
    validate(train, test, source, names)
    if validation is not None:
        validate(train, validation, f"{source} (validation)", names)
    if label_names is None:
        label_names = sorted(train["label"].unique())
    index = {value: i for i, value in enumerate(label_names)}
    unknown = (set(train["label"]) | set(test["label"])) - set(index)
    if validation is not None:
        unknown |= set(validation["label"]) - set(index)
    if unknown:
        raise ValueError(
            f"{source}: unknown labels {sorted(map(str, unknown))[:10]}; expected one of {list(label_names)}"
        )
    class_label = ClassLabel(names=[str(name) for name in label_names])

    def encode(frame: pd.DataFrame) -> Dataset:
        extras = [column for column in frame.columns if column not in COLUMNS]
        frame = frame[list(COLUMNS) + extras].assign(
            text=frame["text"].astype(str), label=frame["label"].map(index), gender=frame["gender"].astype(str)
        )
        return frame_to_dataset(frame, {"label": class_label})

    splits = {"train": train, "test": test, **({"validation": validation} if validation is not None else {})}
    return DatasetDict({name: encode(frame) for name, frame in splits.items()})


def frame_to_dataset(frame: pd.DataFrame, features: Mapping[str, Any] | None = None,
                     description: str = "") -> Dataset:
    """``frame`` as a Dataset; ``features`` fixes some columns' types, the others are inferred."""
    inferred = Features.from_arrow_schema(pa.Schema.from_pandas(frame, preserve_index=False))
    merged = Features(  # pandas' str dtype arrives as large_string; plain string is what HF data uses
        {name: Value("string") if feature == Value("large_string") else feature for name, feature in inferred.items()}
    )
    merged.update(features or {})
    return Dataset.from_pandas(frame, preserve_index=False, info=DatasetInfo(description=description, features=merged))


def stratified_split(frame: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` into train and test, the same share of every label in test.

    Each label keeps at least one train row, so the test labels are always seen
    in train. Deterministic for a seed.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    rng = np.random.default_rng(seed)
    test_rows: list[int] = []
    for rows in frame.groupby("label", sort=True).indices.values():
        rows = rng.permutation(rows)
        test_rows.extend(rows[: min(round(test_size * len(rows)), len(rows) - 1)])
    is_test = np.zeros(len(frame), dtype=bool)
    is_test[test_rows] = True
    return frame[~is_test], frame[is_test]


def random_split(frame: pd.DataFrame, test_size: float, seed: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split unlabelled rows into train and test (``test_size`` of them, at least one each); deterministic."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    if len(frame) < 2:
        raise ValueError(f"{source} holds one document: give at least two (one is held out for testing) "
                         "or a separate test file")
    n_test = min(max(1, round(test_size * len(frame))), len(frame) - 1)
    is_test = np.zeros(len(frame), dtype=bool)
    is_test[np.random.default_rng(seed).permutation(len(frame))[:n_test]] = True
    return frame[~is_test], frame[is_test]
