"""Experiments: methods x seeds on one model, task and dataset, trained and scored alike.

Every run starts from a freshly loaded base model, is trained with the same
settings and seed as the others (``base`` is not trained), and is scored by the
same benchmarks. Results are written after each run, and a rerun of the same
command resumes: finished runs are read back, an interrupted training resumes
from its newest checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from rich.console import Console
from transformers import set_seed

from crawd.config import CrawdConfig
from crawd.methods import get_method
from crawd.metrics import run_benchmarks
from crawd.models import load_model
from crawd.serialization import write_json
from crawd.train import TrainSettings, train

#: Headline figures of each benchmark: (display name, path into the benchmark's result).
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "gas": [("gas", ("gas",))],
    "ppl": [("ppl", ("perplexity",))],
    "pronoun_skew": [("pronoun_skew", ("pronoun_skew",)), ("pronoun_bls_r", ("bls_correlation",))],
    "crows_pairs": [("crows_pct_stereo", ("pct_stereotype",)),
                    ("crows_gender", ("by_bias_type", "gender"))],
    "stereoset": [("ss", ("all", "overall", "ss")), ("lms", ("all", "overall", "lms")),
                  ("icat", ("all", "overall", "icat")), ("ss_gender", ("all", "by_bias_type", "gender", "ss")),
                  ("lms_gender", ("all", "by_bias_type", "gender", "lms"))],
    "weat": [("weat6", ("weat6", "effect_size")), ("weat7", ("weat7", "effect_size")),
             ("weat8", ("weat8", "effect_size"))],
    "bold_gas": [("bold_gas", ("gas",))],
    # fpr_gap: binary labels only (madlibs toxicity): the largest |FPR_g - FPR_all| over groups
    "tpr_gap": [("accuracy", ("accuracy",)), ("rms_tpr_gap", ("tpr_gap_rms",)), ("fpr_gap", ("fpr_max_gap",))],
}


@dataclass
class RunSpec:
    """One run: a method, a seed and CrawdConfig overrides; ``label`` names it in reports."""

    method: str
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.method


def headline(benchmark: str, result: dict) -> dict[str, Any]:
    """The headline estimates of one benchmark's result (missing paths are left out)."""
    out = {}
    for name, path in HEADLINES.get(benchmark, []):
        node: Any = result
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            out[name] = node
    return out


def evaluation_options(task: str, data: DatasetDict, split: str = "test") -> dict[str, Any]:
    """Options the data-dependent benchmarks need, from ``split`` (test, or validation to choose settings)."""
    if split not in data:
        raise ValueError(f"the data has no {split!r} split (it has {', '.join(data)})")
    test = data[split]
    if task == "lm":
        return {"texts": list(test["text"])}
    return {"texts": list(test["text"]), "labels": list(test["label"]), "groups": list(test["gender"])}


def evaluate(model: Any, tokenizer: Any, task: str, benchmarks: list[str], data: DatasetDict,
             data_dir: str | Path | None, options: dict[str, Any] | None = None,
             split: str = "test") -> dict[str, Any]:
    """Score ``model`` on ``benchmarks``; returns ``{"metrics": headline figures, "benchmarks": all}``."""
    model.eval()
    kind = "decoder" if task == "lm" else "classifier"
    full = run_benchmarks(model, tokenizer, benchmarks, data_dir=data_dir, model_kind=kind,
                          **evaluation_options(task, data, split), **(options or {}))
    metrics: dict[str, Any] = {}
    for name, entry in full.items():
        if entry["status"] == "ok":
            metrics.update(headline(name, entry["result"]))
    return {"metrics": metrics, "benchmarks": full}


def run_experiment(
    model_name: str,
    task: str,
    data: DatasetDict,
    runs: list[RunSpec],
    out_dir: str | Path,
    config: CrawdConfig,
    settings: TrainSettings,
    benchmarks: list[str],
    data_dir: str | Path | None = None,
    eval_options: dict[str, Any] | None = None,
    console: Console | None = None,
    eval_split: str = "test",
) -> dict[str, Any]:
    """Train and score every run on ``eval_split``; write ``out_dir/results.json`` after each. Returns the results."""
    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_labels = data["train"].features["label"].num_classes if task == "classification" else None
    results: dict[str, Any] = {"model": model_name, "task": task, "benchmarks": benchmarks,
                               "settings": asdict(settings), "config": config.to_dict(), "eval_split": eval_split,
                               "runs": []}
    for spec in runs:
        run_dir = out_dir / "runs" / f"{spec.name}-seed{spec.seed}"
        done_file = run_dir / "run.json"
        if done_file.is_file():
            console.print(f"[dim]{spec.name} (seed {spec.seed}): finished earlier, read from {done_file}[/dim]")
            results["runs"].append(json.loads(done_file.read_text()))
            continue
        console.rule(f"{spec.name} (seed {spec.seed})")
        method = get_method(spec.method)
        run_config = CrawdConfig.from_dict({**config.to_dict(), **spec.overrides})
        set_seed(spec.seed)
        base, tokenizer = load_model(model_name, task, num_labels=num_labels)
        record: dict[str, Any] = {"method": spec.name, "base_method": spec.method, "seed": spec.seed,
                                  "overrides": spec.overrides}
        model = base
        if method.trains:
            model = method.build(base, tokenizer, run_config)
            train_data = method.transform(data, run_config) if method.transform else data
            trained = train(model, tokenizer, train_data, run_dir, replace(settings, seed=spec.seed))
            record["train"] = {"steps": trained.steps, "seconds": trained.seconds, "final_loss": trained.final_loss,
                               "seconds_per_step": trained.seconds / max(trained.steps, 1),
                               "adapter": trained.adapter_dir}
        start = time.perf_counter()
        record.update(evaluate(model, tokenizer, task, benchmarks, data, data_dir, eval_options, eval_split))
        record["eval_seconds"] = time.perf_counter() - start
        write_json(done_file, record)
        results["runs"].append(record)
        write_json(out_dir / "results.json", results)
    return results
