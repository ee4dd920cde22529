"""The registry of methods: a name -> how to build its model (and rewrite its training data).

The name is what ``--method``, a compare entry and a saved adapter's ``crawd_config.json``
say. A method module registers itself with the :func:`register_method` decorator; the
package :mod:`crawd.methods` imports every module it holds, so import :func:`get_method`
from there to see them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from datasets import DatasetDict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crawd.config import CrawdConfig

Build = Callable[[PreTrainedModel, PreTrainedTokenizerBase, CrawdConfig], nn.Module]
Transform = Callable[[DatasetDict, CrawdConfig], DatasetDict]
B = TypeVar("B", bound=Callable[..., Any])


@dataclass(frozen=True)
class Method:
    """How one method builds its model (``None``: nothing is trained) and optionally rewrites the training data."""

    name: str
    build: Build | None
    description: str
    transform: Transform | None = None

    @property
    def trains(self) -> bool:
        return self.build is not None


METHODS: dict[str, Method] = {}


def _add(method: Method) -> None:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method


def register_method(name: str, description: str, transform: Transform | None = None) -> Callable[[B], B]:
    """Decorator: register the decorated model class or builder ``(base, tokenizer, config) -> model`` as ``name``.

    ``transform`` rewrites the training data first (the train split only). A method that trains
    vanilla's model on other data registers vanilla's builder again:
    ``register_method("cda", "...", transform=cda_transform)(adapt)``.
    """

    def decorate(build: B) -> B:
        _add(Method(name, build, description, transform))
        return build

    return decorate


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


_add(Method("base", None, "the pretrained model as it is, not fine-tuned"))
