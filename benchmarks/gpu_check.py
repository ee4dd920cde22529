#!/usr/bin/env python3
"""The GPU measurements of issue 13 in one run: a timeout per step, every figure in one folder.

On any CUDA machine, from the repository root:

    python3 benchmarks/gpu_check.py --out gpu-figures [--data-dir DIR] [--tokenizer DIR] [--wheels DIR]

and, to check the plumbing of every step on a CPU in a few minutes (tiny models, no install):

    nice -n 15 env OMP_NUM_THREADS=1 python3 benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-check-smoke

Steps, in order (each one a subprocess with its own timeout; a failed or skipped step is
recorded and the next one runs):

1. ``env``: GPU, driver, torch / transformers / peft versions.
2. ``install``: ``pip install -e .`` from this working tree without the CPU constraint file and
   without build isolation; on an offline machine the dependencies that do not import are
   installed from ``--wheels DIR`` (pure-Python wheels, ``--no-index --no-deps``), else
   ``pip install`` is tried for them. torch itself is never installed.
3. ``bench``: ``crawd bench --random-config llama-1b --heads residual,concat,self,debias --batch 8
   --seq-len 512`` (bf16, memory phase included) -> ``bench.json``.
4. ``train``: ``crawd train`` on a SmolLM2-shaped model with random weights (saved once to a
   work folder), ``--bf16``, 100 steps of 8 x 48 synthetic bios, for vanilla, crawd concat,
   crawd residual, mode=self and the two presets (the neutral one's probes and cue refits
   included), plus vanilla without mid-run checkpoints; steps/s from
   each run's ``train_summary.json`` (the Trainer's loop, checkpoints included).
5. ``crows``: ``crawd eval --benchmarks crows_pairs`` (all 1,508 pairs) on that model and on
   the concat adapter of step 4; seconds from each run's record. Needs ``--data-dir`` (a
   folder with ``crows_pairs/crows_pairs_anonymized.csv``).
6. ``qlora``: where ``import bitsandbytes`` works, ``crawd train --qlora --bf16`` (20 steps)
   for each variant; otherwise the step says why it was skipped.
7. ``pytest``: ``python -m pytest -x -q`` (the whole suite, on this machine's CUDA).

Figures: ``OUT/summary.md`` (tables against the issue's targets), ``OUT/summary.json`` (all
figures), ``OUT/bench.json`` (the full bench result) and ``OUT/log.txt`` (each step's
command, exit status, time and the end of its output). ``OUT`` is ``--out``, else ``$OUT``.
Large files (the random model, checkpoints) go to ``--work``.

One call of the device tool may run 10 minutes: split the steps over calls, e.g.
``--steps env,install,bench,train``, then ``--steps install,crows,qlora,pytest`` (the
timeouts are sized for that: bench 7 min, each training run 2.5 min, CrowS 4 min,
pytest 9 min; ``--timeout-scale`` multiplies them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: SmolLM2-135M's shape (its config.json without the name); the weights are random.
SMOLLM2_SHAPE = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
TINY_SHAPE = {**SMOLLM2_SHAPE, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
              "max_position_embeddings": 1024}
VARIANTS = {"vanilla": ["--method", "vanilla"], "concat": ["--method", "crawd", "--head", "concat"],
            "residual": ["--method", "crawd", "--head", "residual"], "self": ["--method", "crawd", "--mode", "self"],
            "debias": ["--method", "crawd", "--preset", "debias"], "neutral": ["--method", "crawd", "--preset", "neutral"]}
#: Targets of issue 13 on an H200 (bench: CrAWD / vanilla step time and peak memory).
TARGETS = {"residual": 1.10, "concat": 1.15, "self": 1.03, "debias": 1.15, "neutral": 1.15, "peak_memory": 1.05,
           "vanilla_steps_per_s": 20.0,
           "crows_seconds": 10.0}
#: Imported module -> pip distribution, for the dependencies an offline machine may lack.
DEPENDENCIES = {"transformers": "transformers", "peft": "peft", "accelerate": "accelerate", "datasets": "datasets",
                "safetensors": "safetensors", "fairlearn": "fairlearn", "sklearn": "scikit-learn",
                "pandas": "pandas", "matplotlib": "matplotlib", "typer": "typer", "rich": "rich", "yaml": "pyyaml",
                "gguf": "gguf", "tqdm": "tqdm", "dill": "dill", "multiprocess": "multiprocess", "xxhash": "xxhash"}


class Check:
    """Runs the steps, keeps every figure and writes the output folder after each step."""

    def __init__(self, out: Path, work: Path, smoke: bool, timeout_scale: float) -> None:
        self.out, self.work, self.smoke, self.scale = out, work, smoke, timeout_scale
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, Any] = {"mode": "cpu-smoke" if smoke else "gpu", "started": time.strftime("%F %T"),
                                        "steps": {}}
        self.env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", CRAWD_CACHE=str(work / "cache"))
        if smoke:  # nothing is installed: the package is imported from this tree
            self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), self.env.get("PYTHONPATH", "")])
        (self.out / "log.txt").write_text("")

    def log(self, text: str) -> None:
        print(text, flush=True)
        with open(self.out / "log.txt", "a") as handle:
            handle.write(text + "\n")

    def run(self, name: str, cmd: list[str], timeout: float, cwd: Path = ROOT) -> tuple[int, str, float]:
        """One subprocess with a timeout; returns (exit status or 124 on timeout, output, seconds)."""
        timeout *= self.scale
        self.log(f"\n$ {' '.join(map(str, cmd))}   [{name}, timeout {timeout:.0f} s]")
        start = time.perf_counter()
        try:
            proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            code = 124
            output = ((err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or "")
            output += ((err.stderr or b"").decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or "")
        seconds = time.perf_counter() - start
        self.log(f"-> exit {code} after {seconds:.1f} s\n" + output[-3000:])
        return code, output, seconds

    def record(self, step: str, **figures: Any) -> None:
        self.summary["steps"].setdefault(step, {}).update(figures)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2, default=str))
        (self.out / "summary.md").write_text(summary_markdown(self.summary))

    def python(self, *args: Any) -> list[str]:
        return [sys.executable, *map(str, args)]


# ---- steps --------------------------------------------------------------------------------
def step_env(check: Check) -> None:
    code, output, _ = check.run("env", check.python("-c", (
        "import json, platform, torch, transformers, peft\n"
        "info = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
        "        'transformers': transformers.__version__, 'peft': peft.__version__,\n"
        "        'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,\n"
        "        'cpus': __import__('os').cpu_count()}\n"
        "print('@@' + json.dumps(info))")), 120)
    info = next((json.loads(line[2:]) for line in output.splitlines() if line.startswith("@@")), {})
    smi = shutil.which("nvidia-smi")
    if smi:
        info["nvidia_smi"] = check.run("env", [smi, "--query-gpu=name,driver_version,memory.total",
                                               "--format=csv,noheader"], 60)[1].strip()
    check.record("env", status="ok" if code == 0 else "failed", **info)


def step_install(check: Check, wheels: Path | None) -> None:
    if check.smoke:
        check.record("install", status="skipped", reason="--cpu-smoke imports crawd from this tree (PYTHONPATH)")
        return
    pip = check.python("-m", "pip", "install", "--no-build-isolation", "--disable-pip-version-check")
    code, _, seconds = check.run("install", [*pip, "--no-deps", "-e", "."], 300)
    if code != 0:  # e.g. an environment whose own setuptools is too old: build in isolation (needs an index)
        code = check.run("install", [*pip[:4], "--disable-pip-version-check", "--no-deps", "-e", "."], 300)[0]
    missing = [dist for module, dist in DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    extra = "none missing"
    if missing and wheels is not None:
        files = sorted(str(p) for p in wheels.glob("*.whl"))
        extra_code = check.run("install", [*pip, "--no-index", "--no-deps", *files], 300)[0] if files else 1
        extra = f"from {wheels}: exit {extra_code}"
    elif missing:
        extra_code = check.run("install", [*pip, "--timeout", "10", "--retries", "0", *missing], 300)[0]
        extra = f"pip install {' '.join(missing)}: exit {extra_code}"
    if code != 0:  # measure the tree anyway, and say so
        check.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), check.env.get("PYTHONPATH", "")])
    still = check.run("install", check.python("-c", "import crawd, crawd.cli, crawd.metrics, crawd.data; "
                                               "print(crawd.__file__)"), 120)
    status = "ok" if code == 0 else "failed: pip install -e . (crawd is imported from src/ through PYTHONPATH)"
    check.record("install", status=status if still[0] == 0 else "failed: crawd does not import",
                 missing_before=missing, dependencies=extra, crawd_imports=still[0] == 0, seconds=seconds)


def step_bench(check: Check) -> None:
    out = check.work / "bench.json"
    args = (["--random-config", "tiny", "--device", "cpu", "--batch", "2", "--seq-len", "16", "--threads", "1",
             "--repeats", "2", "--gen-tokens", "4"] if check.smoke else
            ["--random-config", "llama-1b", "--batch", "8", "--seq-len", "512", "--repeats", "10"])
    code, output, seconds = check.run("bench", check.python("-m", "crawd", "bench", "--heads", "residual,concat,self,debias",
                                                            *args, "--json", out), 420)
    if code != 0 or not out.is_file():
        check.record("bench", status="failed", exit=code, seconds=seconds)
        return
    shutil.copy(out, check.out / "bench.json")
    result = json.loads(out.read_text())
    ratios = {f"{r['name']} {r['head']}": round(r["median"], 3) for r in result["ratios"]}
    memory_phase = result["seconds"] - sum(sum(v) for v in result["train_times"].values())
    check.record("bench", status="ok", seconds=seconds, ratios=ratios,
                 step_seconds={k: round(v["median"], 4) for k, v in result["train"].items()},
                 peak_memory={k: v.get("cuda_peak_allocated", v["peak_rss"]) for k, v in (result["memory"] or {}).items()},
                 bench_seconds=round(result["seconds"], 1), seconds_outside_timed_steps=round(memory_phase, 1))


def make_model(check: Check, tokenizer: Path | None) -> Path:
    """A SmolLM2-shaped causal LM with random weights (tiny in the smoke run) and a tokenizer, saved once."""
    folder = check.work / "model"
    if (folder / "config.json").is_file():
        return folder
    shape = TINY_SHAPE if check.smoke else SMOLLM2_SHAPE
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig\n"
        "folder, shape, tok_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "torch.manual_seed(0)\n"
        "with torch.device('cuda' if torch.cuda.is_available() else 'cpu'):\n"
        "    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=torch.float32)\n"
        "if tok_dir:\n"
        "    tok = AutoTokenizer.from_pretrained(tok_dir)\n"
        "else:\n"
        "    from crawd.bench.variants import word_tokenizer\n"
        "    tok = word_tokenizer(shape['vocab_size'])\n"
        "    model.config.pad_token_id = model.config.eos_token_id = model.config.bos_token_id = tok.eos_token_id\n"
        "model.save_pretrained(folder)\n"
        "tok.save_pretrained(folder)\n"
        "print('tokenizer', type(tok).__name__, len(tok))\n")
    result = check.run("model", check.python("-c", code, folder, json.dumps(shape), tokenizer or ""), 300)
    if result[0] != 0:
        raise RuntimeError("could not build the SmolLM2-shaped model")
    return folder


def train_cmd(model: Path, out: Path, variant: str, steps: int, extra: list[str], smoke: bool) -> list[str]:
    size = ["--batch-size", "2", "--seq-len", "16"] if smoke else ["--batch-size", "8", "--seq-len", "48"]
    return ["-m", "crawd", "train", "--model", str(model), "--data", "synthetic-bios", "--out", str(out),
            "--max-steps", str(steps), *size, *VARIANTS[variant], *extra]


def step_train(check: Check, model: Path) -> None:
    steps = 3 if check.smoke else 100
    bf16 = [] if check.smoke else ["--bf16"]
    figures: dict[str, Any] = {}
    runs = [(v, v, []) for v in VARIANTS] + [("vanilla, no mid-run checkpoint", "vanilla", ["--save-steps", "100000"])]
    for label, variant, extra in runs:
        out = check.work / f"train-{label.split(',')[0]}{'-nockpt' if extra else ''}"
        shutil.rmtree(out, ignore_errors=True)
        code, _, seconds = check.run("train", check.python(*train_cmd(model, out, variant, steps, bf16 + extra,
                                                                      check.smoke)), 150)
        summary = out / "train_summary.json"
        if code == 0 and summary.is_file():
            s = json.loads(summary.read_text())
            figures[label] = {"steps": s["steps"], "train_seconds": round(s["seconds"], 2),
                              "steps_per_s": round(s["steps"] / s["seconds"], 2), "process_seconds": round(seconds, 1)}
        else:
            figures[label] = {"status": f"failed (exit {code})"}
        check.record("train", status="ok", runs=figures)
    base = figures.get("vanilla", {}).get("steps_per_s")
    if base:
        check.record("train", ratios={v: round(base / f["steps_per_s"], 3) for v, f in figures.items()
                                      if v in VARIANTS and "steps_per_s" in f})


def step_crows(check: Check, model: Path, data_dir: Path | None) -> None:
    if data_dir is None or not (data_dir / "crows_pairs" / "crows_pairs_anonymized.csv").is_file():
        check.record("crows", status="skipped", reason="no crows_pairs/crows_pairs_anonymized.csv under --data-dir")
        return
    out = check.work / "eval"
    shutil.rmtree(out, ignore_errors=True)
    adapter = check.work / "train-concat" / "adapter"
    options = ["--eval-options", json.dumps({"crows_pairs": {"max_pairs": 40}})] if check.smoke else []
    code, _, seconds = check.run("crows", check.python(
        "-m", "crawd", "eval", "--model", model, *(["--adapter", adapter] if adapter.is_dir() else []),
        "--benchmarks", "crows_pairs", "--data-dir", data_dir, "--out", out, *options), 240)
    figures = {}
    for record in sorted((out / "runs").glob("*.json")):
        entry = json.loads(record.read_text())["benchmarks"]["crows_pairs"]
        figures[record.stem] = {"seconds": round(entry.get("seconds", float("nan")), 2), "status": entry["status"],
                                "n_pairs": entry.get("result", {}).get("n_pairs")}
    check.record("crows", status="ok" if code == 0 else f"failed (exit {code})", seconds=seconds, runs=figures)


def step_qlora(check: Check, model: Path) -> None:
    probe = check.run("qlora", check.python("-c", "import torch, bitsandbytes; "
                                            "print('bitsandbytes', bitsandbytes.__version__, torch.cuda.is_available())"),
                      120)
    if probe[0] != 0 or check.smoke:
        reason = ("bitsandbytes does not import: " + probe[1].strip().splitlines()[-1][:200] if probe[0] != 0
                  else "--cpu-smoke: 4-bit needs CUDA")
        check.record("qlora", status="skipped", reason=reason)
        return
    figures = {}
    for variant in VARIANTS:
        out = check.work / f"qlora-{variant}"
        shutil.rmtree(out, ignore_errors=True)
        code, output, seconds = check.run("qlora", check.python(*train_cmd(model, out, variant, 20,
                                                                           ["--qlora", "--bf16"], False)), 150)
        summary = out / "train_summary.json"
        figures[variant] = ({"status": "ok", **{k: json.loads(summary.read_text())[k] for k in ("steps", "final_loss")},
                             "seconds": round(seconds, 1)} if code == 0 and summary.is_file()
                            else {"status": f"failed (exit {code})", "error": output.strip().splitlines()[-1][:300]
                                  if output.strip() else ""})
        check.record("qlora", status="ran", runs=figures)


def step_pytest(check: Check) -> None:
    # the tests find ../shared/data themselves (or skip): a partial --data-dir would fail the ones it lacks
    target = ["tests/test_bench.py"] if check.smoke else []
    code, output, seconds = check.run("pytest", check.python("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                                             *target), 540)
    last = next((line for line in reversed(output.splitlines()) if " passed" in line or " failed" in line
                 or " error" in line), "")
    check.record("pytest", status="ok" if code == 0 else f"failed (exit {code})", seconds=round(seconds, 1),
                 result=last.strip("= "))


# ---- report -------------------------------------------------------------------------------
def summary_markdown(summary: dict[str, Any]) -> str:
    steps = summary["steps"]
    lines = [f"# crawd GPU check ({summary['mode']}, {summary['started']})", ""]
    env = steps.get("env", {})
    lines += [f"GPU: {env.get('gpu')} ({env.get('nvidia_smi', '-')}); torch {env.get('torch')} (CUDA "
              f"{env.get('cuda')}), transformers {env.get('transformers')}, peft {env.get('peft')}", ""]
    lines += ["| step | status | figures | target |", "|---|---|---|---|"]
    bench = steps.get("bench", {})
    for key, value in bench.get("ratios", {}).items():
        head = key.split()[-1]
        target = TARGETS["peak_memory"] if key.startswith("peak memory") else TARGETS.get(head)
        lines.append(f"| bench | {bench['status']} | {key}: x{value} | "
                     f"{'<= ' + str(target) if target and not key.startswith('generation') else '-'} |")
    if bench:
        lines.append(f"| bench | {bench['status']} | step seconds {bench.get('step_seconds')}; whole bench "
                     f"{bench.get('bench_seconds')} s | - |")
    train = steps.get("train", {})
    for label, fig in train.get("runs", {}).items():
        ratio = train.get("ratios", {}).get(label)
        target = (f">= {TARGETS['vanilla_steps_per_s']} steps/s" if label == "vanilla"
                  else f"x <= {TARGETS.get(label)}" if label in TARGETS else "-")
        lines.append(f"| train | {fig.get('status', 'ok')} | {label}: {fig.get('steps_per_s', '-')} steps/s"
                     f"{f' (x{ratio} of vanilla time)' if ratio else ''} | {target} |")
    crows = steps.get("crows", {})
    for label, fig in crows.get("runs", {}).items():
        lines.append(f"| crows | {fig['status']} | {label}: {fig['seconds']} s for {fig['n_pairs']} pairs | "
                     f"<= {TARGETS['crows_seconds']} s |")
    for label, fig in steps.get("qlora", {}).get("runs", {}).items():
        lines.append(f"| qlora | {fig['status']} | {label}: {fig.get('steps', '-')} steps, final loss "
                     f"{fig.get('final_loss', '-')} {fig.get('error', '')} | runs |")
    for name, info in steps.items():  # whole-step outcomes: install, pytest, and any skipped or broken step
        status = str(info.get("status", ""))
        if name in ("install", "pytest") or status.startswith(("skipped", "error", "failed")):
            details = {k: v for k, v in info.items() if k not in ("status", "runs", "ratios")}
            lines.append(f"| {name} | {status} | {details} | - |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="folder for the figures (default: $OUT)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "crawd-gpu-check",
                        help="folder for the model and checkpoints, reused by a later call (default: TMP/crawd-gpu-check)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="shared data folder (CrowS-Pairs; default: $CRAWD_DATA_DIR or ../shared/data)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="folder with SmolLM2's tokenizer files (default: the crawd cache's, else a word tokenizer)")
    parser.add_argument("--wheels", type=Path, default=None, help="pure-Python wheels for missing dependencies")
    parser.add_argument("--steps", default="env,install,bench,train,crows,qlora,pytest", help="comma-separated steps")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step, tiny, on the CPU (checks the plumbing)")
    args = parser.parse_args()
    if args.out is None:
        parser.error("give --out (or set $OUT)")
    data_dir = args.data_dir or Path(os.environ.get("CRAWD_DATA_DIR") or ROOT.parent / "shared" / "data")
    data_dir = data_dir if data_dir.is_dir() else None
    tokenizer = args.tokenizer
    cached = Path(os.environ.get("CRAWD_CACHE") or Path.home() / ".cache" / "crawd") / "models" / "smollm2-135m"
    if tokenizer is None and not args.cpu_smoke and (cached / "tokenizer.json").is_file():
        tokenizer = cached
    check = Check(args.out, args.work, args.cpu_smoke, args.timeout_scale)
    check.record("setup", data_dir=str(data_dir), tokenizer=str(tokenizer or "word-level (built in)"), work=str(args.work))
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    model = None
    for step in steps:
        start = time.perf_counter()
        try:
            if step == "env":
                step_env(check)
            elif step == "install":
                step_install(check, args.wheels)
            elif step == "bench":
                step_bench(check)
            elif step in ("train", "crows", "qlora"):
                model = model or make_model(check, tokenizer)
                {"train": lambda: step_train(check, model), "crows": lambda: step_crows(check, model, data_dir),
                 "qlora": lambda: step_qlora(check, model)}[step]()
            elif step == "pytest":
                step_pytest(check)
            else:
                raise ValueError(f"unknown step {step!r}")
        except Exception as err:  # one broken step must not cost the figures of the others
            check.record(step, status=f"error: {type(err).__name__}: {err}")
        check.log(f"== {step} done in {time.perf_counter() - start:.0f} s")
    check.log("\n" + (check.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
