"""Deprecated: CrawdModel is in :mod:`crawd.methods.crawd_cross`, ``wrap`` in :mod:`crawd.methods.crawd`,
``adapt`` in :mod:`crawd.methods.vanilla` (all three also as ``crawd.CrawdModel``, ``crawd.wrap``, ``crawd.adapt``)."""

import warnings

from crawd.methods.crawd import wrap
from crawd.methods.crawd_cross import CrawdModel
from crawd.methods.vanilla import adapt

__all__ = ["CrawdModel", "adapt", "wrap"]

warnings.warn("crawd.model is deprecated: import CrawdModel, wrap and adapt from crawd", DeprecationWarning,
              stacklevel=2)
