"""The real Bias in Bios corpus (De-Arteaga et al. 2019), from the hub or a local copy.

The default source is the hub dataset ``LabHC/bias_in_bios`` (MIT licence):
columns ``hard_text`` (the biography without its first sentence, which names
the occupation), ``profession`` (0..27, the order of :data:`OCCUPATIONS`) and
``gender`` (0 male, 1 female); splits train / dev / test. A local copy is a
folder of data files that ``datasets.load_dataset`` recognises by name
(``train*.parquet``, ``test*.csv``, ...) or a ``save_to_disk`` folder. The dev
split is not used.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from datasets import DatasetDict, load_dataset, load_from_disk

from crawd.data.bios import OCCUPATIONS
from crawd.data.common import build_dataset, require_columns, resolve_data_dir

__all__ = ["bias_in_bios"]

_GENDERS = {0: "male", 1: "female"}


def bias_in_bios(
    source: str = "LabHC/bias_in_bios", data_dir: str | None = None, max_rows: int | None = None, seed: int = 0
) -> DatasetDict:
    """Load Bias in Bios with the common columns.

    Columns: ``text`` (``hard_text``), ``label`` (ClassLabel over
    :data:`OCCUPATIONS`), ``gender`` ("female" / "male") and ``occupation``.

    Args:
        source: a hub id, a local folder, or a folder name inside the data
            folder (``data_dir`` or ``$CRAWD_DATA_DIR``).
        max_rows: keep at most this many rows per split, drawn at random with
            ``seed``; None keeps all (257k train, 99k test).
    """
    raw = _load_raw(source, data_dir)
    frames = {}
    for split in ("train", "test"):
        if split not in raw:
            raise ValueError(f"{source} has no {split!r} split (it has: {', '.join(raw)})")
        dataset = raw[split]
        if max_rows is not None and len(dataset) > max_rows:
            dataset = dataset.shuffle(seed=seed).select(range(max_rows))
        frame = dataset.to_pandas()
        where = f"{source}: the {split} split"
        require_columns(frame, ("hard_text", "profession", "gender"), where)
        for column, allowed in (("profession", range(len(OCCUPATIONS))), ("gender", _GENDERS)):
            bad = ~frame[column].isin(list(allowed))
            if bad.any():
                raise ValueError(
                    f"{where} has {column} values outside {min(allowed)}..{max(allowed)}, "
                    f"e.g. {frame[column][bad].iloc[0]!r}"
                )
        occupation = frame["profession"].map(dict(enumerate(OCCUPATIONS)))
        frames[split] = pd.DataFrame(
            {
                "text": frame["hard_text"],
                "label": occupation,
                "gender": frame["gender"].map(_GENDERS),
                "occupation": occupation,
            }
        )
    return build_dataset(frames["train"], frames["test"], source, label_names=OCCUPATIONS)


def _load_raw(source: str, data_dir: str | None) -> DatasetDict:
    """Open ``source`` as a local copy when one exists, else as a hub dataset."""
    path = Path(source).expanduser()
    root = resolve_data_dir(data_dir)
    if not path.exists() and root is not None and (root / source).exists():
        path = root / source
    if path.exists():
        if (path / "dataset_dict.json").is_file():
            return load_from_disk(str(path))
        if not path.is_dir():
            raise ValueError(f"{path} is not a folder: give a folder of train/test data files or a save_to_disk folder")
        return load_dataset(str(path))
    try:
        return load_dataset(source)
    except (OSError, ValueError) as err:  # ConnectionError and DatasetNotFoundError are OSErrors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"could not load Bias in Bios from {source!r} (no such local folder, and the hub said: {reason})"
        ) from err
