"""One entry point that picks a loader from a short spec string."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import DatasetDict

from crawd.data.bias_in_bios import bias_in_bios
from crawd.data.bios import synthetic_bios
from crawd.data.bold_corpus import bold_people
from crawd.data.files import SUFFIXES, from_disk, from_files, is_saved_dataset
from crawd.data.madlibs import madlibs

__all__ = ["SPECS", "is_user_data", "load_data"]

SPECS: dict[str, str] = {
    "synthetic-bios": "generated biographies, 28 occupations, train skewed by real gender statistics",
    "bias-in-bios": "real Bias in Bios (LabHC/bias_in_bios); 'bias-in-bios:PATH_OR_HUB_ID' for another copy",
    "madlibs": "bias madlibs toxicity sentences, identity term as sensitive attribute (needs the data folder)",
    "bold-people": "BOLD prompts about people and professions that the held-out evaluation does not use, for "
                   "--task lm (needs the data folder)",
    "PATH": f"your own file ({', '.join(SUFFIXES)}), see from_files",
    "FOLDER": "a folder written by datasets' save_to_disk, see from_disk",
}
"""Accepted specs and a one-line description of each."""


def load_data(spec: str = "synthetic-bios", data_dir: str | None = None, **kwargs: Any) -> DatasetDict:
    """Load a dataset by spec; ``kwargs`` go to the loader.

    ``"synthetic-bios"`` -> :func:`synthetic_bios`, ``"bias-in-bios"`` or
    ``"bias-in-bios:SOURCE"`` -> :func:`bias_in_bios`, ``"madlibs"`` ->
    :func:`madlibs`, ``"bold-people"`` -> :func:`bold_people`, a path ending
    in a known suffix -> :func:`from_files`, a ``save_to_disk`` folder ->
    :func:`from_disk` (``data_dir`` is not used for either).
    """
    name, _, source = spec.partition(":")
    if spec == "synthetic-bios":
        return synthetic_bios(data_dir=data_dir, **kwargs)
    if name == "bias-in-bios":
        if source:
            kwargs["source"] = source
        return bias_in_bios(data_dir=data_dir, **kwargs)
    if spec == "madlibs":
        return madlibs(data_dir, **kwargs)
    if spec == "bold-people":
        return bold_people(data_dir, **kwargs)
    if Path(spec).suffix.lower() in SUFFIXES:
        return from_files(spec, **kwargs)
    if Path(spec).expanduser().is_dir():
        return from_disk(spec, **kwargs)
    raise ValueError(f"unknown dataset {spec!r}: use synthetic-bios, bias-in-bios[:SOURCE], madlibs, bold-people, "
                     f"a data file ({', '.join(SUFFIXES)}) or a save_to_disk folder")


def is_user_data(spec: str) -> bool:
    """True when ``spec`` names the user's own data (a file or a folder) rather than a built-in dataset."""
    name = spec.partition(":")[0]
    if spec in ("synthetic-bios", "madlibs", "bold-people") or name == "bias-in-bios":
        return False
    return Path(spec).suffix.lower() in SUFFIXES or Path(spec).expanduser().is_dir()
