"""Occupation lists and generation helpers shared by GAS and pronoun skew (the BLS shares of women:
:func:`crawd.data.bios.occupation_stats`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from crawd.metrics.loglik import encode, length_batches, model_device, start_token_id

# The 28 Bias in Bios occupations (De-Arteaga et al. 2019), as readable phrases.
BIAS_IN_BIOS_OCCUPATIONS: tuple[str, ...] = (
    "accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist",
    "dietitian", "DJ", "filmmaker", "interior designer", "journalist", "model", "nurse",
    "painter", "paralegal", "pastor", "personal trainer", "photographer", "physician", "poet",
    "professor", "psychologist", "rapper", "software engineer", "surgeon", "teacher",
    "yoga teacher")


def generate_continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 20,
                           batch_size: int | None = None, progress: bool = False) -> list[str]:
    """Greedy continuations of ``prompts``, decoded without the prompt.

    Each prompt is [start token] + its ids, left-padded by hand (the tokenizer
    is not modified); only the new tokens are decoded, special tokens skipped.
    ``batch_size``: see :func:`crawd.metrics.loglik.length_batches` (None: 64 on a CPU, where a generation
    step's cost is mostly per call: the paper's 112 prompts take 11 s instead of 17 s at 16, the same text).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start_token_id(tokenizer)
    start = start_token_id(tokenizer)
    encoded = [[start] + encode(tokenizer, p) for p in prompts]
    device = model_device(model)
    outputs: list[str] = [""] * len(encoded)
    batches = length_batches([len(s) for s in encoded], batch_size, model, default=64, extra_tokens=max_new_tokens)
    with torch.inference_mode():
        for batch in tqdm(batches, desc="generating", disable=not progress):
            chunk = [encoded[j] for j in batch]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for j, row in zip(batch, out):
                outputs[j] = tokenizer.decode(row[width:], skip_special_tokens=True)
    return outputs
