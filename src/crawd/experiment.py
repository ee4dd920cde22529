"""Experiments: methods x seeds on one model, task and dataset, trained and scored alike.

Every run starts from a freshly loaded base model, is trained with the same
settings and seed as the others (``base`` is not trained), and is scored by the
same benchmarks. Results are written after each run, and a rerun of the same
command resumes: finished runs are read back, an interrupted training resumes
from its newest checkpoint.

Resuming reuses only what was asked the same way. Each run folder records its
request (:func:`run_request`: model, task, a hash of the data, method, CrawdConfig,
training settings, benchmarks, evaluation options). When the request changed, the
rerun says so in one line and
* trains again when the training part changed (model, task, data, method, config,
  settings other than ``progress`` / ``save_steps`` / ``logging_steps``): the old run
  folder is first renamed to ``<run>.replaced-<k>``, so nothing written is lost;
* scores the trained model again when only the evaluation part changed (benchmarks,
  evaluation options, data folder): training resumes from its last checkpoint, which
  takes no step.
A folder written before requests were recorded counts as changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from rich.console import Console
from transformers import set_seed

from crawd.config import CrawdConfig
from crawd.methods import get_method
from crawd.metrics import run_benchmarks
from crawd.metrics.loglik import model_device
from crawd.models import load_model
from crawd.storage import write_json
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
    """Score ``model`` on ``benchmarks`` (data-dependent ones on ``split``); returns
    ``{"metrics": headline figures, "benchmarks": all}``.

    A model on the CPU is moved to the current CUDA device when there is one (a trained model is
    there already): the benchmarks then batch by tokens (:mod:`crawd.metrics.loglik`).
    """
    model.eval()
    if torch.cuda.is_available() and model_device(model).type == "cpu":
        model.to(torch.device("cuda", torch.cuda.current_device()))
    kind = "decoder" if task == "lm" else "classifier"
    full = run_benchmarks(model, tokenizer, benchmarks, data_dir=data_dir, model_kind=kind,
                          **evaluation_options(task, data, split), **(options or {}))
    metrics: dict[str, Any] = {}
    for name, entry in full.items():
        if entry["status"] == "ok":
            metrics.update(headline(name, entry["result"]))
    return {"metrics": metrics, "benchmarks": full}


#: Training settings that do not change the trained model (left out of a run's request).
SETTINGS_NOT_IN_REQUEST = ("progress", "save_steps", "logging_steps")
REQUEST_FILE = "request.json"


def data_fingerprint(data: DatasetDict | Dataset) -> str:
    """SHA-256 of every split's name, schema and rows: changes with the data or the data options."""
    digest = hashlib.sha256()
    splits = data.items() if isinstance(data, DatasetDict) else [("data", data)]
    for name, split in sorted(splits):
        table = split.with_format("arrow")[:]  # the selected rows only (indices mappings applied)
        digest.update(f"{name}\n{table.schema}\n{table.num_rows}\n".encode())
        for column in table.columns:
            for chunk in column.chunks:
                for buffer in chunk.buffers():
                    if buffer is not None:
                        digest.update(buffer)
    return digest.hexdigest()


def run_request(model_name: str, task: str, data_hash: str, spec: RunSpec, config: CrawdConfig,
                settings: TrainSettings, trains: bool, benchmarks: list[str], data_dir: str | Path | None,
                eval_options: dict[str, Any] | None, eval_split: str = "test") -> dict[str, Any]:
    """What a run was asked to do, as plain JSON: ``{"train": ..., "eval": ...}`` (see the module doc)."""
    train_part: dict[str, Any] = {"model": model_name, "task": task, "data": data_hash, "method": spec.method,
                                  "seed": spec.seed}
    if trains:
        train_part["config"] = config.to_dict()
        train_part["settings"] = {k: v for k, v in asdict(replace(settings, seed=spec.seed)).items()
                                  if k not in SETTINGS_NOT_IN_REQUEST}
    request = {"train": train_part, "eval": {"benchmarks": list(benchmarks), "eval_options": eval_options or {},
                                             "data_dir": str(data_dir) if data_dir is not None else None,
                                             "split": eval_split}}
    return json.loads(json.dumps(request, default=str))  # tuples as lists: compares equal to its JSON


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two requests."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _earlier_request(run_dir: Path) -> dict[str, Any] | None:
    """The request recorded in ``run_dir``; config fields added to crawd since then read as their
    defaults (a new field's default keeps the old behaviour, so such a run was asked the same way)."""
    for name in ("run.json", REQUEST_FILE):
        path = run_dir / name
        if path.is_file():
            stored = json.loads(path.read_text())
            request = stored.get("request") if name == "run.json" else stored
            if request and isinstance(request.get("train", {}).get("config"), dict):
                defaults = json.loads(json.dumps(CrawdConfig().to_dict(), default=str))
                request["train"]["config"] = {**defaults, **request["train"]["config"]}
            return request
    return None


def _scored_under_another_seed(out_dir: Path, spec: RunSpec, request: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run of the same untrained method (``base``), asked the same way but under another
    seed: the seed changes nothing in what is scored, so its record holds for this seed too."""
    for done in sorted((out_dir / "runs").glob(f"{spec.name}-seed*/run.json")):
        record = json.loads(done.read_text())
        other = record.get("request") or {}
        if ({**other.get("train", {}), "seed": spec.seed} == request["train"]
                and other.get("eval") == request["eval"]):
            return record
    return None


def _set_aside(run_dir: Path) -> Path:
    """Rename a run folder to the first free ``<name>.replaced-<k>`` beside it."""
    k = 1
    while (target := run_dir.with_name(f"{run_dir.name}.replaced-{k}")).exists():
        k += 1
    run_dir.rename(target)
    return target


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
    data_hash = data_fingerprint(data)
    for spec in runs:
        run_dir = out_dir / "runs" / f"{spec.name}-seed{spec.seed}"
        done_file = run_dir / "run.json"
        method = get_method(spec.method)
        run_config = CrawdConfig.from_dict({**config.to_dict(), **spec.overrides})
        request = run_request(model_name, task, data_hash, spec, run_config, settings, method.trains, benchmarks,
                              data_dir, eval_options, eval_split)
        earlier = _earlier_request(run_dir)
        if done_file.is_file() and earlier == request:
            console.print(f"[dim]{spec.name} (seed {spec.seed}): finished earlier, read from {done_file}[/dim]")
            results["runs"].append(json.loads(done_file.read_text()))
            continue
        trained_earlier = None
        if run_dir.is_dir() and any(run_dir.iterdir()):
            if earlier is None or earlier["train"] != request["train"]:
                what = ("was written without a record of its settings" if earlier is None else
                        "was trained with other settings (" + ", ".join(changed_keys(earlier["train"], request["train"])) + ")")
                console.print(f"{spec.name} (seed {spec.seed}): {run_dir} {what}; moved to "
                              f"{_set_aside(run_dir).name}, training again", highlight=False, soft_wrap=True)
            elif done_file.is_file():
                console.print(f"{spec.name} (seed {spec.seed}): scored with other settings ("
                              + ", ".join(changed_keys(earlier["eval"], request["eval"]))
                              + "); scoring the trained model again", highlight=False, soft_wrap=True)
                trained_earlier = json.loads(done_file.read_text()).get("train")
        same = None if method.trains else _scored_under_another_seed(out_dir, spec, request)
        if same is not None:
            console.print(f"[dim]{spec.name} (seed {spec.seed}): not trained, so the scores of seed {same['seed']} "
                          "hold; copied[/dim]")
            write_json(run_dir / REQUEST_FILE, request)
            _finish({**same, "seed": spec.seed, "request": request}, done_file, results, out_dir)
            continue
        write_json(run_dir / REQUEST_FILE, request)
        console.rule(f"{spec.name} (seed {spec.seed})")
        set_seed(spec.seed)
        base, tokenizer = load_model(model_name, task, num_labels=num_labels)
        record: dict[str, Any] = {"method": spec.name, "base_method": spec.method, "seed": spec.seed,
                                  "overrides": spec.overrides, "request": request}
        model = base
        if method.trains:
            model = method.build(base, tokenizer, run_config)
            train_data = method.transform(data, run_config) if method.transform else data
            trained = train(model, tokenizer, train_data, run_dir, replace(settings, seed=spec.seed))
            record["train"] = trained_earlier or {
                "steps": trained.steps, "seconds": trained.seconds, "final_loss": trained.final_loss,
                "seconds_per_step": trained.seconds / max(trained.steps, 1), "adapter": trained.adapter_dir}
        start = time.perf_counter()
        record.update(evaluate(model, tokenizer, task, benchmarks, data, data_dir, eval_options, eval_split))
        record["eval_seconds"] = time.perf_counter() - start
        _finish(record, done_file, results, out_dir)
    return results


def _finish(record: dict[str, Any], done_file: Path, results: dict[str, Any], out_dir: Path) -> None:
    """Write a run's record (which marks it done) and the experiment's results so far."""
    write_json(done_file, record)
    results["runs"].append(record)
    write_json(out_dir / "results.json", results)
