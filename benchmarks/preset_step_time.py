"""Training-step time of each preset against vanilla LoRA, on real bios batches through each preset's own
collator (so the probes and twins a preset adds are in the batch, unlike `crawd bench`'s random ids).

    OMP_NUM_THREADS=1 python benchmarks/preset_step_time.py                  # SmolLM2-135M, 8 x 48, CPU time
    OMP_NUM_THREADS=1 python benchmarks/preset_step_time.py --presets debias,neutral --rounds 7
    OMP_NUM_THREADS=1 python benchmarks/preset_step_time.py --presets neutral,neutral@probe_share=0.5

One step = forward, backward and an AdamW update (fused, the Trainer's default). The variants take turns,
one step each per round, so a slower stretch of a shared machine hits them alike; the figure is the median
per variant. A preset with gender cues fits them once before its first step (timed): training refits them
every ``gender_cue_refit_steps`` steps, so the last column adds a fit's share to each step. Float32 linear
layers take ``crawd train``'s route (:mod:`crawd.onednn`: oneDNN on AMD CPUs with AVX-512; ``CRAWD_CPU_LINEAR``
chooses).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from crawd import CrawdConfig, adapt, wrap
from crawd.data.bios import synthetic_bios
from crawd.models import load_model
from crawd.onednn import onednn_linear
from crawd.train import Collator


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, local folder or hub id")
    p.add_argument("--presets", default="debias,neutral",
                   help="comma-separated preset names, each optionally with @key=value overrides (neutral@probe_share=0.5)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timer", default="cpu", choices=("wall", "cpu"),
                   help="this process's CPU time (robust on a shared machine with OMP_NUM_THREADS=1), or wall clock")
    return p.parse_args(argv)


def preset_config(variant: str) -> CrawdConfig:
    """``neutral@probe_share=0.5@equalize=0.3``: the preset with those fields overridden (values as YAML)."""
    name, *overrides = variant.split("@")
    fields = {key: yaml.safe_load(value) for key, value in (o.split("=", 1) for o in overrides)}
    return CrawdConfig.preset(name, "lm", **fields)


@onednn_linear()
def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    texts = synthetic_bios(n_train=max(28, args.batch * (args.rounds + args.warmup)), n_test=28)["train"]["text"]
    variants, fits = {}, {}
    for name in ["vanilla", *args.presets.split(",")]:
        torch.manual_seed(0)
        base, tokenizer = load_model(args.model, "lm")
        model = adapt(base, tokenizer) if name == "vanilla" else wrap(base, tokenizer, preset_config(name))
        collate = Collator(tokenizer, "lm")
        if model.mitigation is not None:
            collate = model.mitigation.collator(collate, tokenizer)
        if model.mitigation is not None and model.mitigation.cues is not None:
            rows = [tokenizer(t, truncation=True, max_length=args.seq_len)["input_ids"] for t in texts]
            fit = model.mitigation.cue_callback(model, tokenizer, rows).fit
            start = clock()
            fit()
            fits[name] = (clock() - start, model.config.gender_cue_refit_steps)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=True)
        variants[name] = (model.train(), collate, optimizer, tokenizer, [])
    for step in range(args.warmup + args.rounds):
        rows = texts[step * args.batch:(step + 1) * args.batch]
        for name, (model, collate, optimizer, tokenizer, times) in variants.items():
            batch = collate([dict(tokenizer(t, truncation=True, max_length=args.seq_len)) for t in rows])
            start = clock()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup:
                times.append(clock() - start)
    vanilla = statistics.median(variants["vanilla"][-1])
    print(f"{args.model}, {args.batch} x {args.seq_len} tokens, {args.timer} time, median of {args.rounds} steps")
    print("| variant | step (s) | x vanilla | cue fit (s) | step with the fits' share | x vanilla |\n|---|---|---|---|---|---|")
    for name, (*_, times) in variants.items():
        step = statistics.median(times)
        fit, every = fits.get(name, (0.0, 0))
        amortized = step + fit / every if every else step
        print(f"| {name} | {step:.3f} | {step / vanilla:.2f} | {fit:.2f} | {amortized:.3f} | {amortized / vanilla:.2f} |")


if __name__ == "__main__":
    main()
