"""Your own data from CSV, JSONL or Parquet files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from datasets import DatasetDict

from crawd.data.common import COLUMNS, build_dataset, require_columns, stratified_split

__all__ = ["SUFFIXES", "from_files", "read_table"]

SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".json", ".parquet")
"""File types :func:`from_files` reads (``.json`` must hold one object per line, like ``.jsonl``)."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSON Lines or Parquet file (chosen by suffix) into a frame.

    pandas rather than ``datasets.load_dataset``: it reads an empty file as an
    empty table (reported by the validation, not as a StopIteration) and
    leaves no Arrow cache behind.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot read {path}: use a file ending in {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        return pd.DataFrame()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True)


def from_files(
    train: str,
    test: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    sensitive_column: str = "gender",
    test_size: float = 0.2,
    seed: int = 0,
) -> DatasetDict:
    """Load a classification dataset from files, mapping its columns to the common ones.

    Args:
        train: CSV / JSONL / Parquet file with the training rows.
        test: the same for test rows; None: ``test_size`` of train is held out,
            stratified by label, deterministic for ``seed``.
        text_column, label_column, sensitive_column: the file's columns that
            hold the text, the label (any values: they become a ClassLabel,
            names sorted) and the sensitive attribute (stored as strings in
            ``gender``).

    Other columns are kept as they are, except unmapped ones already called
    ``text``, ``label`` or ``gender``, which the mapped columns replace.
    """
    columns = {text_column: "text", label_column: "label", sensitive_column: "gender"}
    if len(columns) < 3:
        raise ValueError("text_column, label_column and sensitive_column must be three different columns")
    hint = "set text_column=, label_column=, sensitive_column= to your file's column names"

    def load(path: str) -> pd.DataFrame:
        frame = read_table(path)
        if len(frame.columns):  # an empty file is reported as an empty split
            try:
                require_columns(frame, list(columns), Path(path).name)
            except ValueError as err:
                raise ValueError(f"{err}; {hint}") from None
        shadowed = [column for column in COLUMNS if column in frame.columns and column not in columns]
        return frame.drop(columns=shadowed).rename(columns=columns)

    train_frame = load(train)
    if test is not None:
        test_frame = load(test)
    elif len(train_frame):
        train_frame, test_frame = stratified_split(train_frame, test_size, seed)
    else:
        test_frame = train_frame
    names = {common: user for user, common in columns.items()}
    return build_dataset(train_frame, test_frame, Path(train).name, names=names)
