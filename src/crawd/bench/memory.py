"""Peak memory of one variant, measured in a fresh process (nothing else in it)."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from typing import Any

import torch

from crawd.bench.timing import TrainStep, random_batch
from crawd.bench.variants import build_variant, load_base, resolve_dtype


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: build one variant, train ``mem_steps`` steps, return its peak memory."""
    torch.set_num_threads(spec["threads"])
    rss_imports = _rss_bytes()
    device = torch.device(spec["device"])
    dtype = resolve_dtype(spec["dtype"], device)
    base, tok = load_base(spec["model"], spec["random_config"], device, dtype, spec["seed"])
    ref = torch.tensor(spec["ref_ids"]) if spec["ref_ids"] is not None else None
    torch.manual_seed(spec["seed"])
    model = build_variant(base, tok, spec["kind"], ref, spec["seed"])
    del base
    gc.collect()
    trainer = TrainStep(model, device)
    ids, mask = random_batch(spec["batch"], spec["seq_len"], model.hf.config.vocab_size, device, spec["seed"],
                       spec.get("padding", 0.0))
    rss_model = _rss_bytes()
    reset_ok = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["steps"]):
        trainer.step(ids, mask)
    out = {"peak_rss": _peak_rss_bytes(reset_ok), "rss_after_imports": rss_imports, "rss_model_built": rss_model,
           "method": "VmHWM after clear_refs" if reset_ok else "ru_maxrss"}
    if device.type == "cuda":
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)
    return out


def measure_memory(kind: str, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Start :func:`memory_worker` for one variant in a fresh interpreter."""
    code = ("import json, sys\nfrom crawd.bench.memory import memory_worker\n"
            "print('@@' + json.dumps(memory_worker(json.loads(sys.argv[1]))))")
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps({**spec, "kind": kind})], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    if proc.returncode or not lines:
        raise RuntimeError(f"memory subprocess for {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][2:])
