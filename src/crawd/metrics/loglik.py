"""Batched log-likelihood scoring shared by the intrinsic metrics.

Scoring follows lm-evaluation-harness: every text is preceded by ONE start
token (``tokenizer.bos_token_id`` if set, else ``eos_token_id``) so that its
first real token is also predicted; the score of a text is the sum of
log p(token_t | tokens_<t) over its tokens. Texts are tokenised without the
tokenizer's own special tokens, sorted by length, right-padded and run in
batches; padded positions never enter a score.

Batching (:func:`length_batches`, shared by the other metrics): items are sorted
longest first, so a batch holds items of similar length, and every result is
written back to its item's index (the order of the inputs is kept). A batch
holds ``batch_size`` items when one is given; otherwise a fixed number on a CPU
(the metric's former default) and, on a CUDA device, as many as fit a token
budget derived from the free memory (:func:`token_budget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm


class LogProbs(NamedTuple):
    """Per-text summed log-probability and number of scored tokens."""

    sum: np.ndarray
    count: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Mean log-probability per scored token."""
        return self.sum / self.count


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less model)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def token_budget(model: torch.nn.Module) -> int | None:
    """Tokens per batch on a CUDA device (None on other devices, which use fixed batch sizes).

    A quarter of the free device memory over what one token costs at most: its logits three
    times in float32 (logits, their float copy, the log-softmax) plus 64 KiB of activations;
    between 256 and 65,536 tokens.
    """
    device = model_device(model)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    config = getattr(getattr(model, "hf", model), "config", None)
    vocab = getattr(config, "vocab_size", None) or 2**16
    return int(min(max(free // 4 // (12 * vocab + 2**16), 256), 65536))


def length_batches(lengths: Sequence[int], batch_size: int | None, model: torch.nn.Module,
                   default: int, extra_tokens: int = 0) -> list[list[int]]:
    """Item indices grouped into batches, longest items first (see the module doc).

    ``batch_size``: items per batch; None: ``default`` on a CPU, or on a CUDA device as many
    items as :func:`token_budget` allows, each counted at its batch's longest length plus
    ``extra_tokens`` (e.g. the tokens a generation adds).
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = None if batch_size is not None else token_budget(model)
    if budget is None:
        size = batch_size or default
        return [order[i:i + size] for i in range(0, len(order), size)]
    batches, i = [], 0
    while i < len(order):
        rows = max(1, budget // (lengths[order[i]] + extra_tokens))
        batches.append(order[i:i + rows])
        i += rows
    return batches


def start_token_id(tokenizer, prefix_token_id: int | None = None) -> int:
    """``prefix_token_id`` if given, else the tokenizer's BOS id, else its EOS id."""
    for candidate in (prefix_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("tokenizer has neither a BOS nor an EOS token; pass prefix_token_id")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_tokens(model, sequences: Sequence[Sequence[int]], n_context: Sequence[int],
                 batch_size: int | None = None, progress: bool = False, desc: str = "scoring") -> LogProbs:
    """Sum of log p(ids[t] | ids[:t]) over t >= ``n_context[i]`` for each sequence.

    ``n_context[i]`` >= 1 is the number of leading tokens that are conditioned
    on but not scored (the start token and any context). ``batch_size``: see
    :func:`length_batches` (None: 16 on a CPU, by tokens on a GPU).
    """
    if any(c < 1 or c >= len(s) for s, c in zip(sequences, n_context)):
        raise ValueError("each sequence needs a context of >= 1 token and >= 1 token to score")
    device = model_device(model)
    sums, counts = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=int)
    batches = length_batches([len(s) for s in sequences], batch_size, model, default=16)
    with torch.inference_mode():
        for batch in tqdm(batches, desc=desc, disable=not progress):
            width = len(sequences[batch[0]])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            scored = torch.zeros(len(batch), width - 1, dtype=torch.bool)  # target positions
            for row, i in enumerate(batch):
                seq = sequences[i]
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
                scored[row, n_context[i] - 1:len(seq) - 1] = True
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
            target = torch.where(scored, target, torch.zeros_like(target))
            sums[batch] = target.sum(dim=1).double().numpy()
            counts[batch] = scored.sum(dim=1).numpy()
    return LogProbs(sums, counts)


def sequence_logprobs(model, tokenizer, texts: Sequence[str], prefix_token_id: int | None = None,
                      batch_size: int | None = None, progress: bool = False) -> LogProbs:
    """Total log-likelihood of each text, every token scored given the start token."""
    start = start_token_id(tokenizer, prefix_token_id)
    sequences = [[start] + encode(tokenizer, t) for t in texts]
    if any(len(s) < 2 for s in sequences):
        raise ValueError("cannot score an empty text")
    return score_tokens(model, sequences, [1] * len(sequences), batch_size, progress,
                        desc="log-likelihood")


def continuation_logprobs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                          prefix_token_id: int | None = None, batch_size: int | None = None,
                          progress: bool = False) -> LogProbs:
    """Log-likelihood of each continuation's tokens given start token + context.

    Context and continuation are tokenised separately and concatenated, so the
    scored tokens are exactly the continuation's (put any separating space at
    the start of the continuation, e.g. ``" The people..."``).
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    start = start_token_id(tokenizer, prefix_token_id)
    sequences, n_context = [], []
    for context, continuation in zip(contexts, continuations):
        ctx, cont = [start] + encode(tokenizer, context), encode(tokenizer, continuation)
        if not cont:
            raise ValueError(f"empty continuation after context {context!r}")
        sequences.append(ctx + cont)
        n_context.append(len(ctx))
    return score_tokens(model, sequences, n_context, batch_size, progress,
                        desc="continuation log-likelihood")
