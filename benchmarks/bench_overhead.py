"""CrAWD's overhead against vanilla LoRA: the `crawd bench` figures plus the (n, m) scaling grid.

    python benchmarks/bench_overhead.py                         # SmolLM2-135M, CPU, everything
    python benchmarks/bench_overhead.py --skip-grid --json out.json
    python benchmarks/bench_overhead.py --skip-bench --grid-batch 2
    # GPU, random-weights 1.1B Llama, no downloads (see docs/performance.md):
    accelerate launch --num_processes 1 benchmarks/bench_overhead.py \
        --random-config llama-1b --device cuda --dtype bfloat16 --seq-len 512 --grid-batch 8

Prints the tables to stdout, progress to stderr; --json writes both results to a file.
"""

from __future__ import annotations

import argparse
import json
import sys

from crawd.bench import format_bench, format_scaling, run_bench, run_scaling


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, local folder or hub id")
    p.add_argument("--random-config", default=None, help="random-weights Llama: tiny | llama-1b")
    p.add_argument("--heads", default="residual,concat", help="comma-separated head types")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ref-len", type=int, default=None, help="reference length m (default: the config's words)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timer", default="wall", choices=("wall", "cpu"),
                   help="wall clock, or this process's CPU time (robust on a shared machine, with --threads 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the CrAWD block")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--grid-seq-lens", default="32,128,512")
    p.add_argument("--grid-ref-lens", default="2,21,64")
    p.add_argument("--grid-batch", type=int, default=2, help="batch of the grid (default 2: keeps n=512 affordable)")
    p.add_argument("--grid-repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    results = {}
    common = {"model": a.model, "random_config": a.random_config, "device": a.device, "dtype": a.dtype, "threads": a.threads,
                  "timer": a.timer}
    if not a.skip_bench:
        results["bench"] = run_bench(heads=tuple(a.heads.split(",")), batch=a.batch, seq_len=a.seq_len,
                                     ref_len=a.ref_len, repeats=a.repeats, warmup=a.warmup,
                                     gen_tokens=a.gen_tokens, gen_repeats=a.gen_repeats, memory=not a.no_memory,
                                     compile=a.compile, **common)
        print(format_bench(results["bench"]), flush=True)
    if not a.skip_grid:
        results["scaling"] = run_scaling(seq_lens=[int(x) for x in a.grid_seq_lens.split(",")],
                                         ref_lens=[int(x) for x in a.grid_ref_lens.split(",")],
                                         batch=a.grid_batch, repeats=a.grid_repeats, warmup=a.warmup, **common)
        print("\n" + format_scaling(results["scaling"]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
