"""Perplexity on held-out texts.

PPL = exp(total NLL / total predicted tokens) over all texts, each text scored
given the start token (every real token predicted, padding excluded; see
:mod:`crawd.metrics.loglik`); blank texts are skipped. The interval is the percentile bootstrap over
texts of the same token-weighted ratio.

``ppl_heldout_names`` scores the same texts twice: as given, and with every
first name of the synthetic bios (:mod:`crawd.data.names`) replaced by a
held-out name of the same gender (:func:`crawd.metrics.heldout.name_map`), so
that only the names are new to the mitigation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from crawd.data.bold_corpus import mentions
from crawd.data.names import FEMALE_NAMES, MALE_NAMES
from crawd.metrics.heldout import check_split, heldout_names, name_map, replace_names
from crawd.metrics.loglik import LogProbs, sequence_logprobs
from crawd.metrics.registry import register_benchmark
from crawd.metrics.stats import Estimate, estimate


def _ppl(nll: np.ndarray, count: np.ndarray) -> float:
    return float(np.exp(nll.sum() / count.sum()))


def _ratio(nll: np.ndarray, count: np.ndarray, nll_new: np.ndarray, count_new: np.ndarray) -> float:
    return _ppl(nll_new, count_new) / _ppl(nll, count)


def _nonblank(texts: Sequence[str]) -> list[str]:
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("perplexity needs at least one non-empty text")
    return texts


def _columns(scores: LogProbs) -> tuple[np.ndarray, np.ndarray]:
    """Per text: NLL and scored tokens, the columns :func:`_ppl` takes."""
    return -scores.sum, scores.count.astype(float)


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int | None = None, n_boot: int = 1000,
               seed: int = 0, progress: bool = False) -> Estimate:
    """Corpus perplexity of ``texts`` with a bootstrap interval over texts."""
    scores = sequence_logprobs(model, tokenizer, _nonblank(texts), batch_size=batch_size, progress=progress)
    return estimate(_columns(scores), _ppl, n_boot=n_boot, seed=seed)


@register_benchmark("ppl", kinds=("decoder",), requires_options=("texts",))
def ppl(model, tokenizer, data_dir: str | Path | None, texts: Sequence[str], batch_size: int | None = None,
        n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Benchmark wrapper: ``{"perplexity": Estimate}`` on option ``texts``."""
    result = perplexity(model, tokenizer, texts, batch_size, n_boot, seed, progress)
    return {"perplexity": result.to_dict()}


@register_benchmark("ppl_heldout_names", kinds=("decoder",), requires_data=("bold",), requires_options=("texts",))
def ppl_heldout_names(model, tokenizer, data_dir: str | Path | None, texts: Sequence[str], split: str = "test",
                      names: Mapping[str, list[str]] | None = None, batch_size: int | None = None,
                      n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Perplexity of ``texts`` as given (``perplexity``) and with held-out names (``perplexity_heldout_names``).

    ``names`` ({"female": [...], "male": [...]}) defaults to the held-out names of ``split`` (validation
    or test). ``ratio`` = held-out-name PPL / PPL (bootstrap over texts, both versions resampled together);
    ``by_gender``: the three figures over the texts that name women only or men only of the bios' lists.
    Also ``n_renamed`` (texts that held a bios name) and the mapping (``names``).
    """
    check_split(split)
    texts = _nonblank(texts)
    mapping = name_map(heldout_names(data_dir, split) if names is None else names)
    renamed = replace_names(texts, mapping)
    scores = sequence_logprobs(model, tokenizer, texts + renamed, batch_size=batch_size, progress=progress)
    n = len(texts)
    plain, new = (tuple(c[rows] for c in _columns(scores)) for rows in (slice(None, n), slice(n, None)))
    women, men = mentions(FEMALE_NAMES), mentions(MALE_NAMES)
    named = np.array(["female" if women.search(t) and not men.search(t) else
                      "male" if men.search(t) and not women.search(t) else "" for t in texts])

    def figures(rows: np.ndarray) -> dict:
        before, after = tuple(c[rows] for c in plain), tuple(c[rows] for c in new)
        return {"perplexity": estimate(before, _ppl, n_boot=n_boot, seed=seed).to_dict(),
                "perplexity_heldout_names": estimate(after, _ppl, n_boot=n_boot, seed=seed).to_dict(),
                "ratio": estimate(before + after, _ratio, n_boot=n_boot, seed=seed).to_dict()}

    return {**figures(np.arange(n)),
            "by_gender": {g: figures(np.flatnonzero(named == g)) for g in ("female", "male") if (named == g).any()},
            "n_texts": n, "n_renamed": sum(a != b for a, b in zip(texts, renamed)), "names": mapping,
            "split": split}
