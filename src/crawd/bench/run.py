"""The benchmark itself: build the variants, time them, measure their memory and parameters; one JSON-ready dict."""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

from crawd.bench.memory import measure_memory
from crawd.bench.parameters import PAPER_PARAMETER_SHARE, REFERENCE_SHAPES, count_parameters, parameter_table
from crawd.bench.timing import TrainStep, log, ratio, summary, time_generation, time_training
from crawd.bench.variants import (
    build_variant,
    load_base,
    random_reference,
    resolve_device,
    resolve_dtype,
    set_reference,
)

#: Every option of :func:`run_bench`, with its meaning (the ``crawd bench`` flags mirror them).
BENCH_OPTIONS: dict[str, str] = {
    "model": "base model: an alias (smollm2-135m), a local folder or a hub id (default smollm2-135m)",
    "random_config": "build a random-weights Llama instead of loading `model`: 'tiny' (tests), "
                     "'llama-1b' (~1.1B parameters, for GPUs) or a dict of LlamaConfig fields",
    "heads": "CrAWD variants to compare with vanilla: the head types residual and concat (default both), "
             "self (mode='self', the in-attention decay) and debias (the debias preset, its loss term included)",
    "batch": "training batch size B (default 8)",
    "seq_len": "training sequence length n (default 128)",
    "padding": "share of a training row that may be padding: rows get random lengths in [n (1 - padding), n] "
               "(row 0: n), right-padded, as a collated batch of real texts (default 0: every token valid)",
    "ref_len": "reference length m: None uses the words of the config ('he she'), an integer replaces "
               "the reference sequence by m random token ids (the cost depends on m only)",
    "repeats": "timed training rounds, each one step of every model (default 5)",
    "warmup": "untimed training steps per model first (default 1)",
    "gen_tokens": "new tokens per generation run, greedy with the KV cache; 0 skips generation (default 64)",
    "gen_repeats": "timed generation rounds (default 3)",
    "gen_prompt_len": "prompt length for generation (default 32)",
    "gen_batch": "prompts per generation run (default 1)",
    "memory": "measure peak memory, one fresh subprocess per variant (default True; slower)",
    "mem_steps": "training steps in each memory subprocess (default 2)",
    "device": "cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)",
    "dtype": "float32, bfloat16, float16 (default: float32 on CPU, bfloat16 on CUDA)",
    "threads": "torch CPU threads (default 2)",
    "timer": "clock of the step times: 'wall' (default) or 'cpu' (this process's CPU time, robust to other "
             "processes on a shared machine; use it with threads=1)",
    "compile": "torch.compile the CrAWD block (default False)",
    "ffn_dims": "FFN widths for the parameter table (default: 1, d/4, d, 4d)",
    "seed": "seed of the random batch and the block's initialisation (default 0)",
    "verbose": "print progress to stderr (default True)",
}

#: Target ratios of issue 6 (name -> (comparison, bound)).
TARGETS = {"train_time": ("<=", 1.03), "peak_memory": ("<=", 1.05), "gen_tokens_per_s": (">=", 0.97)}
#: the debias preset adds a loss term; its step may cost more (issue 12)
PRESET_TARGETS = {"debias": {"train_time": ("<=", 1.3)}}
HEADS = ("residual", "concat", "self", "debias")


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Where the figures come from: CPU, cores, threads, load, GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("crawd", "torch", "transformers", "peft", "accelerate"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def run_bench(
    model: str = "smollm2-135m",
    heads: Sequence[str] = ("residual", "concat"),
    batch: int = 8,
    seq_len: int = 128,
    padding: float = 0.0,
    ref_len: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    gen_tokens: int = 64,
    gen_repeats: int = 3,
    gen_prompt_len: int = 32,
    gen_batch: int = 1,
    memory: bool = True,
    mem_steps: int = 2,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    threads: int | None = 2,
    random_config: str | dict | None = None,
    compile: bool = False,
    ffn_dims: Sequence[int] | None = None,
    seed: int = 0,
    verbose: bool = True,
    timer: str = "wall",
) -> dict[str, Any]:
    """Measure CrAWD's overhead against vanilla LoRA; options in :data:`BENCH_OPTIONS`.

    Returns a JSON-ready dict with the keys ``machine``, ``versions``, ``settings``,
    ``train`` (per-variant step times in seconds: min / median / max), ``generate``
    (tokens per second), ``memory`` (bytes; None when ``memory=False``), ``parameters``,
    ``ratios`` (one row per measured ratio: ``name``, ``head``, ``median``, ``min``,
    ``max``, ``target``, ``met``) and ``seconds`` (the benchmark's own wall time).
    """
    heads = tuple(heads)
    if not 0 <= padding < 1:
        raise ValueError(f"padding must be in [0, 1), got {padding}")
    for h in heads:
        if h not in HEADS:
            raise ValueError(f"unknown head {h!r}: use {', '.join(HEADS)}")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_bench(model, heads, batch, seq_len, ref_len, repeats, warmup, gen_tokens, gen_repeats,
                          gen_prompt_len, gen_batch, memory, mem_steps, device, dtype, random_config, compile,
                          ffn_dims, seed, verbose, timer, padding)
    finally:
        torch.set_num_threads(previous_threads)


def _run_bench(model, heads, batch, seq_len, ref_len, repeats, warmup, gen_tokens, gen_repeats, gen_prompt_len,
               gen_batch, memory, mem_steps, device, dtype, random_config, compile, ffn_dims, seed, verbose, timer,
               padding):
    t_start = time.perf_counter()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    log(verbose, f"loading {random_config or model} on {dev} ({dt})")
    base, tok = load_base(model, random_config, dev, dt, seed)
    vocab = base.config.vocab_size
    base_total = sum(p.numel() for p in base.parameters())
    ref_ids = random_reference(ref_len, vocab, seed) if ref_len else None

    variants = {"vanilla": build_variant(base, tok, "vanilla", seed=seed)}
    for h in heads:
        variants[h] = build_variant(base, tok, h, ref_ids, seed, compile_block=compile)
    m = int(variants[heads[0]].reference_ids.shape[1]) if heads else 0
    params = {k: count_parameters(v, base_total) for k, v in variants.items()}
    d = base.config.hidden_size
    del base
    gc.collect()

    settings = {"model": model if random_config is None else f"random:{random_config}", "heads": list(heads),
                "batch": batch, "seq_len": seq_len, "padding": padding, "ref_len": m, "repeats": repeats, "warmup": warmup,
                "gen_tokens": gen_tokens, "gen_repeats": gen_repeats, "gen_prompt_len": gen_prompt_len,
                "gen_batch": gen_batch, "device": str(dev), "dtype": str(dt).replace("torch.", ""),
                "threads": torch.get_num_threads(), "compile": compile, "base_parameters": base_total,
                "timer": timer}
    log(verbose, f"training: {len(variants)} models, B={batch} n={seq_len} m={m}, {warmup} warm-up + {repeats} rounds")
    train = time_training(variants, batch, seq_len, vocab, dev, repeats, warmup, seed, verbose, timer=timer,
                          padding=padding)

    gen = None
    if gen_tokens > 0:
        log(verbose, f"generation: {gen_tokens} tokens, {gen_repeats} rounds")
        gen = time_generation(variants, gen_tokens, gen_prompt_len, gen_batch, vocab, dev, gen_repeats, seed, verbose,
                              timer)

    del variants
    gc.collect()
    mem = None
    if memory:
        spec = {"model": model, "random_config": random_config, "device": str(dev), "dtype": settings["dtype"],
                "seed": seed, "batch": batch, "seq_len": seq_len, "padding": padding, "steps": mem_steps,
                "threads": torch.get_num_threads(), "ref_ids": ref_ids.tolist() if ref_ids is not None else None}
        mem = {}
        for kind in ("vanilla", *heads):
            log(verbose, f"memory: {kind} in a fresh process")
            mem[kind] = measure_memory(kind, spec)

    ratios = []
    for h in heads:
        r = ratio(train[h], train["vanilla"])
        ratios.append({"name": "train step time", "key": "train_time", "head": h, **r})
        if mem is not None:
            key = "cuda_peak_allocated" if dev.type == "cuda" else "peak_rss"
            value = mem[h][key] / mem["vanilla"][key]
            ratios.append({"name": "peak memory", "key": "peak_memory", "head": h, "median": value, "min": value,
                           "max": value, "pair_median": value})
            if dev.type != "cuda":
                extra = ((mem[h]["peak_rss"] - mem[h]["rss_after_imports"])
                         / (mem["vanilla"]["peak_rss"] - mem["vanilla"]["rss_after_imports"]))
                ratios.append({"name": "peak memory w/o libraries", "key": "peak_memory", "head": h,
                               "median": extra, "min": extra, "max": extra, "pair_median": extra})
        if gen is not None:
            r = ratio(gen[h], gen["vanilla"])
            ratios.append({"name": "generation tokens/s", "key": "gen_tokens_per_s", "head": h, **r})
    for row in ratios:
        op, bound = PRESET_TARGETS.get(row["head"], {}).get(row["key"], TARGETS[row["key"]])
        row["target"] = f"{op} {bound:g}"
        met = row["median"] <= bound if op == "<=" else row["median"] >= bound
        # the faithful concat head is not held to the targets (issue 6): reported only
        row["met"] = bool(met) if row["head"] != "concat" else None

    return {
        "machine": machine_info(dev),
        "versions": versions(),
        "settings": settings,
        "train": {k: summary(v) for k, v in train.items()},
        "train_times": train,
        "generate": {k: summary(v) for k, v in gen.items()} if gen else None,
        "memory": mem,
        "parameters": {
            "base": base_total,
            "paper_share": PAPER_PARAMETER_SHARE,
            "variants": params,
            "ffn_table": parameter_table(d, vocab, base_total, ffn_dims),
            "reference_shapes": {name: parameter_table(*shape, ffn_dims=None)
                                 for name, shape in REFERENCE_SHAPES.items()},
        },
        "ratios": ratios,
        "seconds": time.perf_counter() - t_start,
    }


def run_scaling(model: str = "smollm2-135m", seq_lens: Sequence[int] = (32, 128, 512),
                ref_lens: Sequence[int] = (2, 21, 64), head: str = "residual", batch: int = 8, repeats: int = 3,
                warmup: int = 1, device: str | None = None, dtype: str | None = None, threads: int | None = 2,
                random_config: str | dict | None = None, seed: int = 0, verbose: bool = True,
                timer: str = "wall") -> dict[str, Any]:
    """Step-time ratio CrAWD / vanilla for every (n, m): one vanilla and one CrAWD model, reused."""
    t_start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_scaling(model, seq_lens, ref_lens, head, batch, repeats, warmup, device, dtype, random_config,
                            seed, verbose, t_start, timer)
    finally:
        torch.set_num_threads(previous_threads)


def _run_scaling(model, seq_lens, ref_lens, head, batch, repeats, warmup, device, dtype, random_config, seed,
                 verbose, t_start, timer):
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    base, tok = load_base(model, random_config, dev, dt, seed)
    vocab = base.config.vocab_size
    vanilla = build_variant(base, tok, "vanilla", seed=seed)
    ours = build_variant(base, tok, head, seed=seed)
    del base
    gc.collect()
    trainers = {"vanilla": TrainStep(vanilla, dev, timer), head: TrainStep(ours, dev, timer)}
    cells = []
    for n in seq_lens:
        for m in ref_lens:
            set_reference(ours, random_reference(m, vocab, seed))
            times = time_training({}, batch, n, vocab, dev, repeats, warmup, seed, verbose, trainers=trainers)
            cells.append({"seq_len": n, "ref_len": m, "vanilla": summary(times["vanilla"]),
                          head: summary(times[head]), "ratio": ratio(times[head], times["vanilla"])})
            log(verbose, f"n={n} m={m}: ratio {cells[-1]['ratio']['median']:.3f}")
    return {"machine": machine_info(dev), "versions": versions(),
            "settings": {"model": model if random_config is None else f"random:{random_config}", "head": head,
                         "batch": batch, "repeats": repeats, "warmup": warmup, "device": str(dev),
                         "dtype": str(dt).replace("torch.", ""), "threads": torch.get_num_threads(), "timer": timer},
            "cells": cells, "seconds": time.perf_counter() - t_start}
