"""Language-model corpora: plain text, chat (``messages``) and prompt/completion rows.

A corpus needs no label and no sensitive attribute. :func:`build_corpus` turns two
frames read from the user's files into a DatasetDict whose kind follows its columns:

* ``messages`` (a list of ``{"role", "content"}`` objects per row): chat data, trained
  through the tokenizer's chat template with the loss on the assistant turns only;
* ``prompt`` and ``completion``: instruction data, the loss on the completion only;
* otherwise the text column (``text_column``): plain documents, the loss on every token.

Every split has a ``text`` column (for chat data the turns' contents joined by new
lines; for instruction data the prompt followed by the completion), which is what
perplexity scores, and ``gender`` when a sensitive column is present.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from datasets import DatasetDict, List, Value

from crawd.data.common import frame_to_dataset, random_split

__all__ = ["KINDS", "build_corpus", "corpus_kind", "describe"]

KINDS: dict[str, str] = {
    "text": "plain text (loss on every token)",
    "messages": "chat messages through the tokenizer's chat template (loss on the assistant turns)",
    "prompt_completion": "prompt/completion pairs (loss on the completion)",
}
"""The kinds of language-model data and how each is trained."""

MESSAGE = List({"role": Value("string"), "content": Value("string")})
COLUMN_HINT = "set --text-column (text_column=) to the column that holds the text"


def corpus_kind(columns: Any) -> str:
    """``"messages"`` or ``"prompt_completion"`` when those columns are present, else ``"text"``."""
    columns = set(columns)
    if "messages" in columns:
        return "messages"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    return "text"


def describe(data: DatasetDict) -> str:
    """One line: where the corpus came from, its kind and the size of each split."""
    train = data["train"]
    sizes = ", ".join(f"{len(split)} {name}" for name, split in data.items())
    return f"{train.info.description or KINDS[corpus_kind(train.column_names)]}: {sizes} rows"


def build_corpus(
    train: pd.DataFrame,
    test: pd.DataFrame | None,
    source: str,
    text_column: str = "text",
    sensitive_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    layout: str = "",
    validation: pd.DataFrame | None = None,
) -> DatasetDict:
    """Check and encode a language-model corpus (see the module doc); one ValueError per problem.

    Args:
        train, test: the rows as read from the files; ``test`` None: ``test_size`` of
            train is held out at random (deterministic for ``seed``).
        source: the file's name, for messages.
        text_column: the column of plain documents (not used for chat or instruction data).
        sensitive_column: the sensitive attribute, stored as ``gender``; None: ``gender``
            when the file has that column, else none.
        layout: how a ``.txt`` file was split into documents, shown by :func:`describe`.
        validation: an optional third split (``"validation"``), checked as the others.
    """
    kind = corpus_kind(train.columns) if len(train.columns) else "text"
    splits = {"train": train} if test is None else {"train": train, "test": test}
    if validation is not None:
        splits["validation"] = validation
    frames = {split: _prepare(frame, kind, f"{source}: the {split} split", text_column, sensitive_column)
              for split, frame in splits.items()}
    if test is None:
        frames["train"], frames["test"] = random_split(frames["train"], test_size, seed, source)
    description = f"{source}: {KINDS[kind]}" + (f", {layout}" if layout else "")
    features = {"text": Value("string")} | ({"messages": MESSAGE} if kind == "messages" else {})
    return DatasetDict({split: frame_to_dataset(frame.reset_index(drop=True), features, description)
                        for split, frame in frames.items()})


def _prepare(frame: pd.DataFrame, kind: str, where: str, text_column: str,
             sensitive_column: str | None) -> pd.DataFrame:
    """The frame with ``text`` (and ``messages`` / ``prompt``, ``completion``) checked, ``gender`` mapped."""
    if len(frame) == 0:
        raise ValueError(f"{where} is empty: give it at least one row")
    if sensitive_column is not None and sensitive_column not in frame.columns:
        raise ValueError(f"{where} has no column {sensitive_column!r} (columns: {', '.join(map(str, frame.columns))}); "
                         "set --sensitive-column (sensitive_column=) to your file's column, or leave it out")
    sensitive = sensitive_column or ("gender" if "gender" in frame.columns else None)
    out = pd.DataFrame(index=frame.index)
    if kind == "messages":
        messages = [_messages(value, where, row) for row, value in zip(frame.index, frame["messages"])]
        out["text"] = ["\n".join(m["content"] for m in conversation) for conversation in messages]
        out["messages"] = messages
    elif kind == "prompt_completion":
        for column in ("prompt", "completion"):
            _check_strings(frame[column], where, column, allow_empty=column == "prompt")
        out["text"] = frame["prompt"].fillna("").astype(str) + frame["completion"].astype(str)
        out["prompt"], out["completion"] = frame["prompt"].fillna("").astype(str), frame["completion"].astype(str)
    else:
        if text_column not in frame.columns:
            raise ValueError(f"{where} has no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
                             f"{COLUMN_HINT}, or give chat data ('messages') or 'prompt'/'completion' columns")
        _check_strings(frame[text_column], where, text_column)
        out["text"] = frame[text_column].astype(str)
    if sensitive is not None:
        _check_strings(frame[sensitive], where, sensitive)
        out["gender"] = frame[sensitive].astype(str)
    taken = {text_column, sensitive, "messages", "prompt", "completion", "text", "gender"}
    extras = [column for column in frame.columns if column not in taken]
    return pd.concat([out, frame[extras]], axis=1)


def _check_strings(column: pd.Series, where: str, name: str, allow_empty: bool = False) -> None:
    """Raise naming the first missing (or, unless allowed, blank) value of ``column``."""
    missing = column.isna() | (False if allow_empty else column.astype(str).str.strip() == "")
    if missing.any():
        raise ValueError(
            f"{where} has {int(missing.sum())} rows with an empty {name!r} "
            f"(first: row {column.index[missing.to_numpy()][0]}, data rows counted from 0): fill or drop them"
        )


def _messages(value: Any, where: str, row: Any) -> list[dict[str, str]]:
    """One conversation as a list of ``{"role", "content"}`` dicts, checked."""
    shape = 'a list of {"role": ..., "content": ...} objects'
    if isinstance(value, np.ndarray):  # lists read back from Parquet or a saved dataset
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}, row {row}: 'messages' must be {shape}, got {_short(value)}")
    conversation = []
    for message in value:
        if not (isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))):
            raise ValueError(f"{where}, row {row}: 'messages' must be {shape}, got an element {_short(message)}")
        conversation.append({"role": message["role"], "content": message["content"]})
    roles = [m["role"] for m in conversation]
    if "assistant" not in roles:
        raise ValueError(f"{where}, row {row} has no assistant turn: the loss is on the assistant turns, "
                         "so every conversation needs one")
    if roles[0] == "assistant":
        raise ValueError(f"{where}, row {row} starts with an assistant turn: put the user (or system) message first")
    return conversation


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
