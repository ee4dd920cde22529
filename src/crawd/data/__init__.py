"""Datasets for fairness fine-tuning: each loader returns a DatasetDict with train and test splits.

Common columns: ``text``, ``label`` (ClassLabel) and ``gender`` (the sensitive
attribute, a string); loaders add their own extras. See :mod:`crawd.data.common`.
Your own language-model data (``task="lm"``) needs a text column only, or chat
(``messages``) or ``prompt``/``completion`` columns: see :mod:`crawd.data.corpus`.
"""

from crawd.data.bias_in_bios import bias_in_bios
from crawd.data.bios import OCCUPATIONS, female_share, sharpen, synthetic_bios
from crawd.data.bold_corpus import bold_people
from crawd.data.common import COLUMNS, resolve_data_dir, validate
from crawd.data.corpus import describe
from crawd.data.files import from_disk, from_files
from crawd.data.load import SPECS, is_user_data, load_data
from crawd.data.madlibs import IDENTITY_GROUPS, identity_term, madlibs

__all__ = [
    "COLUMNS",
    "IDENTITY_GROUPS",
    "OCCUPATIONS",
    "SPECS",
    "bias_in_bios",
    "bold_people",
    "describe",
    "female_share",
    "from_disk",
    "from_files",
    "identity_term",
    "is_user_data",
    "load_data",
    "madlibs",
    "resolve_data_dir",
    "sharpen",
    "synthetic_bios",
    "validate",
]
