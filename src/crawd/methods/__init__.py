"""Every fine-tuning method, one module each, behind the registry of :mod:`crawd.methods.registry`.

Importing this package imports every module in it, and each registers its method: a new
method is one new file here (and its tests), nothing else changes. See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import pkgutil

from crawd.methods.registry import METHODS, Method, get_method, register_method

#: modules kept only so that old import paths work (they warn when imported)
DEPRECATED = ("baselines",)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in DEPRECATED:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "get_method", "register_method"]
