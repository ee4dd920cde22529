"""Your own data: CSV, JSONL, Parquet or plain-text files, or a ``datasets.save_to_disk`` folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, load_from_disk

from crawd.data.common import COLUMNS, build_dataset, require_columns, stratified_split
from crawd.data.corpus import build_corpus

__all__ = ["SUFFIXES", "from_disk", "from_files", "is_saved_dataset", "read_table"]

SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".json", ".parquet", ".txt")
"""File types :func:`from_files` reads (``.json`` must hold one object per line, like ``.jsonl``;
``.txt`` holds documents for ``task="lm"``)."""

TASKS = ("classification", "lm")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSON Lines, Parquet or ``.txt`` file (chosen by suffix) into a frame.

    A ``.txt`` file becomes one ``text`` column: one document per blank-line
    separated block when the file has a blank line, else one per line (which rule
    was used is in the frame's ``attrs["layout"]``). Text files must be UTF-8.

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
    try:
        if suffix == ".txt":
            return _read_txt(path)
        if suffix == ".csv":
            return pd.read_csv(path, encoding="utf-8-sig")
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}): "
                         "save it as UTF-8") from None
    except (ValueError, pd.errors.ParserError) as err:
        reason = " ".join(str(err).split())[:160]
        kind = {".csv": "CSV", ".parquet": "Parquet"}.get(suffix, "JSON Lines (one object per line)")
        raise ValueError(f"{path} is not valid {kind}: {reason}") from None


def _read_txt(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    if _BLANK_LINE.search(text.strip()):
        documents, layout = _BLANK_LINE.split(text), "one document per blank-line separated block"
    else:
        documents, layout = text.split("\n"), "one document per line"
    frame = pd.DataFrame({"text": [d.strip() for d in documents if d.strip()]})
    frame.attrs["layout"] = layout
    return frame


def is_saved_dataset(path: str | Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    path = Path(path).expanduser()
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def from_files(
    train: str,
    test: str | None = None,
    text_column: str = "text",
    label_column: str | None = None,
    sensitive_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    task: str = "classification",
) -> DatasetDict:
    """Load a dataset from files, mapping its columns to the common ones.

    Args:
        train: CSV / JSONL / Parquet / ``.txt`` file with the training rows.
        test: the same for test rows; None: ``test_size`` of train is held out
            (classification: stratified by label), deterministic for ``seed``.
        text_column, label_column, sensitive_column: the file's columns that
            hold the text, the label (any values: they become a ClassLabel,
            names sorted) and the sensitive attribute (stored as strings in
            ``gender``). None: ``label`` and ``gender``.
        task: ``"classification"`` (label and sensitive column required, a label
            needs two classes) or ``"lm"`` (a corpus, see :mod:`crawd.data.corpus`:
            no label; the sensitive column is used when present or named).

    Other columns are kept as they are, except unmapped ones already called
    ``text``, ``label`` or ``gender``, which the mapped columns replace.
    """
    train_frame = read_table(train)
    test_frame = read_table(test) if test is not None else None
    return from_frames(train_frame, test_frame, Path(train).name, text_column, label_column, sensitive_column,
                       test_size, seed, task)


def from_disk(folder: str, **options: Any) -> DatasetDict:
    """Load a folder written by ``save_to_disk``: its ``train`` split and its ``test`` (else
    ``validation``) split, or one Dataset split like a file. ``options``: those of :func:`from_files`
    after ``test`` (``text_column``, ``label_column``, ``sensitive_column``, ``test_size``, ``seed``, ``task``)."""
    path = Path(folder).expanduser()
    if not is_saved_dataset(path):
        raise ValueError(f"{path} is not a folder written by datasets' save_to_disk (no dataset_dict.json or "
                         "state.json in it)")
    saved = load_from_disk(str(path))
    if isinstance(saved, Dataset):
        train, test = saved, None
    else:
        if "train" not in saved:
            raise ValueError(f"{path} has splits {', '.join(saved)}; crawd trains on a split named 'train'")
        train, test = saved["train"], saved.get("test", saved.get("validation"))
    return from_frames(_frame(train), _frame(test) if test is not None else None, path.name, **options)


def _frame(split: Dataset) -> pd.DataFrame:
    """A split as a frame, ClassLabel columns as their names."""
    frame = split.to_pandas()
    for name, feature in split.features.items():
        if isinstance(feature, ClassLabel):
            frame[name] = frame[name].map(lambda i, names=feature.names: names[i] if i >= 0 else None)
    return frame


def from_frames(
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame | None,
    source: str,
    text_column: str = "text",
    label_column: str | None = None,
    sensitive_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    task: str = "classification",
) -> DatasetDict:
    """The common end of :func:`from_files` and :func:`from_disk` (``source`` names the data in messages)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use 'lm' or 'classification'")
    if task == "lm":
        return build_corpus(train_frame, test_frame, source, text_column, sensitive_column, test_size, seed,
                            layout=train_frame.attrs.get("layout", ""))
    label_column, sensitive_column = label_column or "label", sensitive_column or "gender"
    columns = {text_column: "text", label_column: "label", sensitive_column: "gender"}
    if len(columns) < 3:
        raise ValueError("text_column, label_column and sensitive_column must be three different columns")
    hint = ("set --text-column, --label-column, --sensitive-column (text_column=, label_column=, sensitive_column=) "
            "to your file's column names")

    def prepare(frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame.columns):  # an empty file is reported as an empty split
            try:
                require_columns(frame, list(columns), source)
            except ValueError as err:
                raise ValueError(f"{err}; {hint}") from None
        shadowed = [column for column in COLUMNS if column in frame.columns and column not in columns]
        return frame.drop(columns=shadowed).rename(columns=columns)

    train_frame = prepare(train_frame)
    if len(train_frame) and train_frame["label"].nunique() == 1:
        raise ValueError(f"{source}: column {label_column!r} has one class ({train_frame['label'].iloc[0]!r}); "
                         "classification needs at least two (for a corpus without labels use --task lm)")
    if test_frame is not None:
        test_frame = prepare(test_frame)
    elif len(train_frame):
        train_frame, test_frame = stratified_split(train_frame, test_size, seed)
    else:
        test_frame = train_frame
    names = {common: user for user, common in columns.items()}
    return build_dataset(train_frame, test_frame, source, names=names)
