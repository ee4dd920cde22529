"""Deprecated: ``mode="self"`` is in :mod:`crawd.methods.crawd_self`; this path re-exports it."""

import warnings

from crawd.methods.crawd_self import *  # noqa: F403
from crawd.methods.crawd_self import __all__  # noqa: F401

warnings.warn("crawd.self_decay is deprecated: import from crawd.methods.crawd_self (SelfDecayModel also from crawd)",
              DeprecationWarning, stacklevel=2)
