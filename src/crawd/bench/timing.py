"""Step and generation timing: models take turns, one step each, the order reversed every other round."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from crawd.bench.variants import trainable
from crawd.onednn import onednn_linear


def log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(timer: str) -> Callable[[], float]:
    if timer not in ("wall", "cpu"):
        raise ValueError(f"timer must be 'wall' or 'cpu', got {timer!r}")
    return time.perf_counter if timer == "wall" else time.process_time


class TrainStep:
    """One model, its optimizer and one full training step."""

    def __init__(self, model, device: torch.device, timer: str = "wall") -> None:
        self.model = model.train()
        self.clock = clock(timer)
        self.device = device
        self.opt = torch.optim.AdamW(trainable(model), lr=1e-5)

    def step(self, ids: torch.Tensor, mask: torch.Tensor) -> float:
        sync(self.device)
        start = self.clock()
        loss = self.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return self.clock() - start


def interleave(runs: dict[str, Callable[[], float]], repeats: int, warmup: int,
                verbose: bool = False, label: str = "") -> dict[str, list[float]]:
    """Warm each run up, then time them in turns (order reversed every other round); float32 CPU linear
    layers on the route crawd's training and scoring take (:mod:`crawd.onednn`)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    with onednn_linear():
        for name, fn in runs.items():
            for _ in range(warmup):
                fn()
        for r in range(repeats):
            for name in (order if r % 2 == 0 else order[::-1]):
                times[name].append(runs[name]())
            unit = " tokens/s" if label == "generate" else " s"
            log(verbose, f"{label} round {r + 1}/{repeats}: "
                 + ", ".join(f"{k} {v[-1]:.3f}{unit}" for k, v in times.items()))
    return times


def ratio(num: list[float], den: list[float], invert: bool = False) -> dict[str, float]:
    """CrAWD / vanilla: the ratio of medians, and min / median / max over the per-round ratios."""
    pairs = [(d / a) if invert else (a / d) for a, d in zip(num, den)]
    med = statistics.median(den) / statistics.median(num) if invert else statistics.median(num) / statistics.median(den)
    return {"median": med, "min": min(pairs), "max": max(pairs), "pair_median": statistics.median(pairs)}


def random_batch(batch: int, seq_len: int, vocab_size: int, device: torch.device, seed: int, padding: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, seq_len), generator=gen)
    lengths = seq_len - (torch.rand(batch, generator=gen) * padding * seq_len).long()
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, 0).to(device), mask.to(device)


def time_training(models: dict[str, Any], batch: int, seq_len: int, vocab_size: int, device: torch.device,
                  repeats: int, warmup: int, seed: int = 0, verbose: bool = False,
                  trainers: dict[str, TrainStep] | None = None, timer: str = "wall",
                  padding: float = 0.0) -> dict[str, list[float]]:
    """Per-step times of every model on the same fixed batch, interleaved."""
    ids, mask = random_batch(batch, seq_len, vocab_size, device, seed, padding)
    trainers = trainers or {k: TrainStep(m, device, timer) for k, m in models.items()}
    runs = {k: (lambda t=t: t.step(ids, mask)) for k, t in trainers.items()}
    return interleave(runs, repeats, warmup, verbose, f"train B={batch} n={seq_len}")


def time_generation(models: dict[str, Any], tokens: int, prompt_len: int, gen_batch: int, vocab_size: int,
                    device: torch.device, repeats: int, seed: int = 0, verbose: bool = False,
                    timer: str = "wall") -> dict[str, list[float]]:
    """Tokens per second of greedy cached generation, interleaved (one warm-up run each)."""
    ids, mask = random_batch(gen_batch, prompt_len, vocab_size, device, seed + 7)
    now = clock(timer)

    def run(model) -> float:
        sync(device)
        start = now()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, eos_token_id=-1)
        sync(device)
        assert out.shape[1] == prompt_len + tokens
        return gen_batch * tokens / (now() - start)

    for m in models.values():
        m.eval()
    with torch.no_grad():
        return interleave({k: (lambda m=m: run(m)) for k, m in models.items()}, repeats, 1, verbose, "generate")
