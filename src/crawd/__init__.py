"""crawd: Cross-Attention-based Weight Decay (Haque et al., EMNLP Findings 2025) for bias mitigation."""

import importlib
from typing import Any

from crawd.adapted import AdaptedModel
from crawd.block import CrossAttentionBlock, topk_decay
from crawd.config import CrawdConfig
from crawd.loading import AutoCrawdModel, load
from crawd.methods.crawd import wrap
from crawd.methods.crawd_cross import CrawdModel
from crawd.methods.crawd_self import SelfDecayModel
from crawd.methods.vanilla import adapt
from crawd.sensitive import GROUPS

__version__ = "0.1.0"
__all__ = ["AdaptedModel", "AutoCrawdModel", "CrawdConfig", "CrawdModel", "CrossAttentionBlock", "GROUPS",
           "SelfDecayModel", "adapt", "load", "topk_decay", "wrap"]

#: old module paths, still importable (they warn): ``crawd.model.CrawdModel`` keeps working after ``import crawd``
_DEPRECATED_MODULES = ("model", "self_decay", "serialization")


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED_MODULES:
        return importlib.import_module(f"crawd.{name}")
    raise AttributeError(f"module 'crawd' has no attribute {name!r}")
