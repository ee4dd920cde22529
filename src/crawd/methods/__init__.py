"""Fine-tuning methods behind one small interface.

A method turns a freshly loaded base model into the model that is trained
(``build``) and may rewrite the training data first (``transform``). ``base`` is
the untouched model, evaluated as it is. Register a new method with
:func:`register_method`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import DatasetDict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.adapted import AdaptedModel
from crawd.config import CrawdConfig
from crawd.model import wrap


@dataclass(frozen=True)
class Method:
    """How one method builds its model and (optionally) rewrites the training data."""

    name: str
    build: Callable[[PreTrainedModel, PreTrainedTokenizerBase, CrawdConfig], nn.Module] | None
    description: str
    transform: Callable[[DatasetDict, CrawdConfig], DatasetDict] | None = None

    @property
    def trains(self) -> bool:
        return self.build is not None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


register_method(Method("base", None, "the pretrained model as it is, not fine-tuned"))
register_method(Method("vanilla", AdaptedModel, "plain fine-tuning with the same LoRA, no block"))
register_method(Method("crawd", wrap, "CrAWD: decayed cross-attention to the sensitive reference sequence "
                                          "(mode='self': decayed self-attention to associated tokens)"))

from crawd.methods import baselines  # noqa: F401  (registers the baselines)
