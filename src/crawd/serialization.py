"""Deprecated: the folder format is in :mod:`crawd.storage`, ``load`` and ``AutoCrawdModel`` in
:mod:`crawd.loading` (both also as ``crawd.load``, ``crawd.AutoCrawdModel``)."""

import warnings

from crawd.loading import AutoCrawdModel, load
from crawd.storage import (
    CONFIG_NAME,
    FINGERPRINT_KEYS,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    atomic_write,
    base_fingerprint,
    check_base,
    read_adapter,
    save_adapter,
    write_json,
)

__all__ = ["CONFIG_NAME", "FINGERPRINT_KEYS", "PICKLE_SUFFIXES", "WEIGHTS_NAME", "AutoCrawdModel", "atomic_write",
           "base_fingerprint", "check_base", "load", "read_adapter", "save_adapter", "write_json"]

warnings.warn("crawd.serialization is deprecated: import from crawd.storage (folder format) or crawd.loading "
              "(load, AutoCrawdModel)", DeprecationWarning, stacklevel=2)
