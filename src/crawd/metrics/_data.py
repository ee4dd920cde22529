"""Locating the shared bias-evaluation data files."""

from __future__ import annotations

from pathlib import Path


def data_file(data_dir: str | Path | None, *parts: str) -> Path:
    """``data_dir/parts...``; FileNotFoundError with one line if it is absent."""
    if data_dir is None:
        raise FileNotFoundError(f"no data_dir given; expected <data_dir>/{'/'.join(parts)}")
    path = Path(data_dir).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path
