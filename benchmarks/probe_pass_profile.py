"""Where the `neutral` preset's extra step time goes: the rows' forward and backward against the probes'
forward alone, their forward and backward, and a backward through the last few layers only.

    OMP_NUM_THREADS=1 python benchmarks/probe_pass_profile.py

Real bios batches through the preset's own collator (SmolLM2-135M, 8 x 48 tokens); CPU time of this
process, median over batches after two warm-up batches. The truncated backward detaches the hidden
states entering layer N - L, so the gradient of the probes' terms reaches the last L layers only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from crawd import CrawdConfig, wrap
from crawd.data.bios import synthetic_bios
from crawd.models import load_model
from crawd.train import Collator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--last-layers", default="2,4,8", help="comma-separated L for the truncated backward")
    args = parser.parse_args()
    texts = synthetic_bios(n_train=8 * (args.batches + 2), n_test=28)["train"]["text"]
    base, tokenizer = load_model("smollm2-135m", "lm")
    model = wrap(base, tokenizer, CrawdConfig.preset("neutral", "lm")).train()
    collate = model.objective.collator(Collator(tokenizer, "lm"), tokenizer)
    times: dict[str, list[float]] = {}

    def timed(name: str, run: Callable[[], object], keep: bool) -> None:
        start = time.process_time()
        run()
        if keep:
            times.setdefault(name, []).append(time.process_time() - start)

    def probe_terms(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = model.head(model.encode(ids, mask).last_hidden_state, mask)
        return model.objective.classes.open_terms(logits[mask.bool()])[0].mean()

    for index in range(args.batches + 2):
        keep = index >= 2
        batch = collate([dict(tokenizer(t, truncation=True, max_length=48)) for t in texts[index * 8:(index + 1) * 8]])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        probe_ids, probe_mask = batch["probe_input_ids"], batch["probe_attention_mask"]
        timed("rows: forward and backward", lambda: model.head(model.encode(ids, mask).last_hidden_state, mask)
              .float().logsumexp(-1).mean().backward(), keep)
        with torch.no_grad():
            timed("probes: forward alone", lambda: probe_terms(probe_ids, probe_mask), keep)
        timed("probes: forward and backward", lambda: probe_terms(probe_ids, probe_mask).backward(), keep)
        for last in map(int, args.last_layers.split(",")):
            with model.gradient_through_last(last):  # what probe_backward_layers=last does
                timed(f"probes: backward through the last {last} layers", lambda: probe_terms(probe_ids, probe_mask)
                      .backward(), keep)
        model.zero_grad(set_to_none=True)
    print(f"SmolLM2-135M, rows {tuple(ids.shape)}, probes {tuple(probe_ids.shape)} in the last batch; "
          f"CPU time, median of {args.batches} batches")
    print("| pass | s |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
