"""Perplexity on held-out texts.

PPL = exp(total NLL / total predicted tokens) over all texts, each text scored
given the start token (every real token predicted, padding excluded; see
:mod:`crawd.metrics.loglik`); blank texts are skipped. The interval is the percentile bootstrap over
texts of the same token-weighted ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crawd.metrics.loglik import sequence_logprobs
from crawd.metrics.registry import register_benchmark
from crawd.metrics.stats import Estimate, estimate


def _ppl(nll: np.ndarray, count: np.ndarray) -> float:
    return float(np.exp(nll.sum() / count.sum()))


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int | None = None, n_boot: int = 1000,
               seed: int = 0, progress: bool = False) -> Estimate:
    """Corpus perplexity of ``texts`` with a bootstrap interval over texts."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("perplexity needs at least one non-empty text")
    scores = sequence_logprobs(model, tokenizer, texts, batch_size=batch_size, progress=progress)
    return estimate((-scores.sum, scores.count.astype(float)), _ppl, n_boot=n_boot, seed=seed)


@register_benchmark("ppl", kinds=("decoder",), requires_options=("texts",))
def ppl(model, tokenizer, data_dir: str | Path | None, texts: Sequence[str], batch_size: int | None = None,
        n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Benchmark wrapper: ``{"perplexity": Estimate}`` on option ``texts``."""
    result = perplexity(model, tokenizer, texts, batch_size, n_boot, seed, progress)
    return {"perplexity": result.to_dict()}
