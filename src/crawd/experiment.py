"""Experiments: methods x seeds on one model, task and dataset, trained and scored alike.

Every run starts from a freshly loaded base model, is trained with the same
settings and seed as the others (``base`` is not trained), and is scored by the
same benchmarks. Runs go ``jobs`` at a time, each in a worker process of one torch
thread (:mod:`crawd.pool`), whatever ``jobs`` is, so the figures do not depend on it;
runs that train go first. Results are written after each run, in the order of the
runs, and a rerun of the same command resumes: finished runs are read back, an
interrupted training resumes from its newest checkpoint. An untrained run (``base``)
is scored once: its other seeds copy its scores.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from rich.console import Console
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from crawd.config import CrawdConfig
from crawd.methods import get_method
from crawd.metrics import run_benchmarks
from crawd.metrics.loglik import model_device
from crawd.models import load_model
from crawd.pool import Board, default_jobs, report, run_tasks
from crawd.storage import write_json
from crawd.train import TrainSettings, train


def _per_gender(prefix: str) -> list[tuple[str, tuple[str, ...]]]:
    """A misgendering result's headlines: each gender's accuracy and right-pronoun log-probability."""
    figures = (("acc", "accuracy"), ("logprob", "right_logprob"))
    return [(f"{prefix}_{name}_{g[0]}", ("by_gender", g, key)) for name, key in figures for g in ("female", "male")]


#: Headline figures of each benchmark: (display name, path into the benchmark's result).
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "gas": [("gas", ("gas",)), ("gas_ext", ("gas_extended",))],
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
    # held-out: names, occupations, templates and words the mitigation never read (crawd.metrics.heldout)
    "misgendering": [*_per_gender("misgender"), ("misgender_gap", ("accuracy_gap",))],
    "misgendering_first_name": _per_gender("first_name"),
    "pronoun_skew_heldout": [("heldout_skew", ("pronoun_skew",)), ("heldout_bls_r", ("bls_correlation",))],
    "gas_heldout": [("heldout_gas", ("gas",)), ("heldout_gas_ext", ("gas_extended",))],
    "ppl_heldout_names": [("ppl_heldout_names", ("perplexity_heldout_names",)), ("ppl_names_ratio", ("ratio",))],
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
    """Score ``model`` on ``benchmarks`` (data-dependent ones on ``split``), one after another, each announced
    with :func:`crawd.pool.report`; returns ``{"metrics": headline figures, "benchmarks": all}``.

    A model on the CPU is moved to the current CUDA device when there is one (a trained model is
    there already): the benchmarks then batch by tokens (:mod:`crawd.metrics.loglik`).
    """
    model.eval()
    if torch.cuda.is_available() and model_device(model).type == "cpu":
        model.to(torch.device("cuda", torch.cuda.current_device()))
    kind = "decoder" if task == "lm" else "classifier"
    shared = {**evaluation_options(task, data, split), "split": split}
    full: dict[str, Any] = {}
    for name in benchmarks:
        report(f"scoring {name}")
        full.update(run_benchmarks(model, tokenizer, [name], data_dir=data_dir, model_kind=kind, **shared,
                                   **(options or {})))
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


def _same_but_seed(request: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two requests differ in their seed at most."""
    return ({**other.get("train", {}), "seed": request["train"]["seed"]} == request["train"]
            and other.get("eval") == request["eval"])


def _scored_under_another_seed(out_dir: Path, spec: RunSpec, request: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run of the same untrained method (``base``), asked the same way but under another
    seed: the seed changes nothing in what is scored, so its record holds for this seed too."""
    for done in sorted((out_dir / "runs").glob(f"{spec.name}-seed*/run.json")):
        record = json.loads(done.read_text())
        if _same_but_seed(request, record.get("request") or {}):
            return record
    return None


def _run_dir(out_dir: Path, spec: RunSpec) -> Path:
    return out_dir / "runs" / f"{spec.name}-seed{spec.seed}"


def _set_aside(run_dir: Path) -> Path:
    """Rename a run folder to the first free ``<name>.replaced-<k>`` beside it."""
    k = 1
    while (target := run_dir.with_name(f"{run_dir.name}.replaced-{k}")).exists():
        k += 1
    run_dir.rename(target)
    return target


@dataclass(frozen=True)
class _Shared:
    """What every run of an experiment shares: sent once to each worker."""

    model_name: str
    task: str
    num_labels: int | None
    data: DatasetDict
    benchmarks: list[str]
    data_dir: str | Path | None
    eval_options: dict[str, Any] | None
    eval_split: str


@dataclass(frozen=True)
class _Run:
    """One run to train and score: a worker's task."""

    spec: RunSpec
    config: CrawdConfig
    settings: TrainSettings
    run_dir: Path
    request: dict[str, Any]
    trained_earlier: dict[str, Any] | None  # the training record of a run scored again


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
    jobs: int | None = None,
) -> dict[str, Any]:
    """Train and score every run on ``eval_split``, ``jobs`` at a time (default: the machine's cores, at most
    one per run); write ``out_dir/results.json`` after each. Returns the results.

    The runs go to spawned worker processes, which import the main module: a script that calls this needs
    the ``if __name__ == "__main__":`` guard.
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_labels = data["train"].features["label"].num_classes if task == "classification" else None
    results: dict[str, Any] = {"model": model_name, "task": task, "benchmarks": benchmarks,
                               "settings": asdict(settings), "config": config.to_dict(), "eval_split": eval_split,
                               "runs": []}
    data_hash = data_fingerprint(data)
    board = Board([f"{spec.name} (seed {spec.seed})" for spec in runs])
    finished: dict[int, dict[str, Any]] = {}  # by the run's place in ``runs``
    todo: dict[int, _Run] = {}
    copies: dict[int, list[int]] = {}  # an untrained run to score -> its other seeds, which copy its scores
    requests: list[dict[str, Any]] = []

    def finish(index: int, record: dict[str, Any]) -> None:
        """Write a run's record (which marks it done), the results so far, and the copies of its scores."""
        write_json(_run_dir(out_dir, runs[index]) / "run.json", record)
        finished[index] = record
        results["runs"] = [finished[k] for k in sorted(finished)]
        write_json(out_dir / "results.json", results)
        for other in copies.pop(index, []):
            copy(other, record)

    def copy(index: int, source: dict[str, Any]) -> None:
        """Finish an untrained run with the scores of ``source``, the same run under another seed."""
        spec = runs[index]
        console.print(f"[dim]{spec.name} (seed {spec.seed}): not trained, so the scores of seed {source['seed']} "
                      "hold; copied[/dim]")
        write_json(_run_dir(out_dir, spec) / REQUEST_FILE, requests[index])
        finish(index, {**source, "seed": spec.seed, "request": requests[index]})
        board.set(index, f"copied from seed {source['seed']}")

    for index, spec in enumerate(runs):
        run_dir = _run_dir(out_dir, spec)
        done_file = run_dir / "run.json"
        method = get_method(spec.method)
        run_config = CrawdConfig.from_dict({**config.to_dict(), **spec.overrides})
        request = run_request(model_name, task, data_hash, spec, run_config, settings, method.trains, benchmarks,
                              data_dir, eval_options, eval_split)
        requests.append(request)
        earlier = _earlier_request(run_dir)
        if done_file.is_file() and earlier == request:
            console.print(f"[dim]{spec.name} (seed {spec.seed}): finished earlier, read from {done_file}[/dim]")
            finished[index] = json.loads(done_file.read_text())
            board.set(index, "read back")
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
        if not method.trains:
            same = _scored_under_another_seed(out_dir, spec, request)
            if same is not None:
                copy(index, same)
                continue
            scorer = next((k for k, run in todo.items() if _same_but_seed(request, run.request)), None)
            if scorer is not None:  # scored in this experiment: copied once it is
                copies.setdefault(scorer, []).append(index)
                board.set(index, f"waiting for seed {runs[scorer].seed}")
                continue
        write_json(run_dir / REQUEST_FILE, request)
        todo[index] = _Run(spec, run_config, replace(settings, seed=spec.seed, progress=False), run_dir, request,
                           trained_earlier)
    if todo:
        # runs that train first: an untrained one (base) is the shortest, it fills the worker left idle at the end
        todo = dict(sorted(todo.items(), key=lambda item: not get_method(item[1].spec.method).trains))
        shared = _Shared(model_name, task, num_labels, data, benchmarks, data_dir, eval_options, eval_split)
        run_tasks(_train_and_score, shared, todo, min(jobs or default_jobs(), len(todo)), finish, board, console)
    results["runs"] = [finished[k] for k in sorted(finished)]
    return results


def _train_and_score(shared: _Shared, run: _Run) -> dict[str, Any]:
    """Train (unless the method trains nothing) and score one run, from a freshly loaded base: a worker's
    work. Returns the run's record."""
    spec, method = run.spec, get_method(run.spec.method)
    set_seed(spec.seed)
    base, tokenizer = load_model(shared.model_name, shared.task, num_labels=shared.num_labels)
    record: dict[str, Any] = {"method": spec.name, "base_method": spec.method, "seed": spec.seed,
                              "overrides": spec.overrides, "request": run.request}
    model = base
    if method.trains:
        model = method.build(base, tokenizer, run.config)
        train_data = method.transform(shared.data, run.config) if method.transform else shared.data
        with _steps_reported(run.run_dir, run.settings.max_steps):
            trained = train(model, tokenizer, train_data, run.run_dir, run.settings)
        record["train"] = run.trained_earlier or {
            "steps": trained.steps, "seconds": trained.seconds, "final_loss": trained.final_loss,
            "seconds_per_step": trained.seconds / max(trained.steps, 1), "adapter": trained.adapter_dir}
    start = time.perf_counter()
    options = {"progress": False, **(shared.eval_options or {})}  # no progress bars in a worker
    record.update(evaluate(model, tokenizer, shared.task, shared.benchmarks, shared.data, shared.data_dir, options,
                           shared.eval_split))
    record["eval_seconds"] = time.perf_counter() - start
    return record


@contextmanager
def _steps_reported(run_dir: Path, max_steps: int) -> Iterator[None]:
    """Report "training step k/N" after each optimizer step, counted from the checkpoint training resumes
    from (:func:`crawd.train.train` takes no callback; a worker trains one run at a time)."""
    last = get_last_checkpoint(str(run_dir))
    step = int(last.rsplit("-", 1)[1]) if last else 0
    report(f"training step {step}/{max_steps}")

    def count(*_: Any) -> None:
        nonlocal step
        step += 1
        report(f"training step {step}/{max_steps}")

    handle = register_optimizer_step_post_hook(count)
    try:
        yield
    finally:
        handle.remove()
