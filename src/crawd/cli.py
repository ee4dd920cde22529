"""The ``crawd`` command: demo, train, eval, compare, export, inspect, bench.

User mistakes (bad values, missing files or columns, unknown config keys) end with
one red ``error:`` line and exit status 2; set ``CRAWD_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click
import typer
import yaml
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models with Cross-Attention-based Weight Decay (CrAWD) and measure bias.")
console = Console()
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, FloatingPointError,
               KeyError)

TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m", "data": "synthetic-bios", "task": "lm", "method": "crawd", "out": None,
    "top_k": 0.4, "decay": 0.2, "sensitive_words": "he,she", "groups": "", "head": "concat", "mode": "cross",
    "max_steps": 60, "seed": 0, "batch_size": 8, "learning_rate": 2e-4, "seq_len": 32, "save_steps": 20,
    "data_dir": None, "trust_remote_code": False, "test_data": None, "dropout": 0.1, "lora_dropout": 0.1,
    "bf16": False, "qlora": False, "text_column": None, "label_column": None, "sensitive_column": None,
    "long_docs": "chunk", "preset": None,
}
#: train settings that are CrawdConfig fields (a --preset gives the others)
CONFIG_KEYS = ("sensitive_words", "groups", "top_k", "decay", "head", "mode", "dropout", "lora_dropout")
PATH_KEYS = ("config", "model", "data", "test_data", "data_dir", "out")


def check_cuda_options(values: dict[str, Any]) -> None:
    """--bf16 and --qlora switch on only with a CUDA device (and bitsandbytes for QLoRA)."""
    import importlib.util

    import torch

    if values.get("qlora"):
        if not torch.cuda.is_available():
            raise ValueError("--qlora needs a CUDA device and bitsandbytes; none found")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--qlora needs a CUDA device and bitsandbytes; bitsandbytes is not installed "
                             "(pip install bitsandbytes)")
    if values.get("bf16") and not torch.cuda.is_available():
        raise ValueError("--bf16 needs a CUDA device; none found (train in float32 on CPU: drop --bf16)")


def report_paths(values: dict[str, Any], config: Optional[Path]) -> dict[str, Any]:
    """Resolve the file paths among ``values`` (relative to the current folder) and print each."""
    values = dict(values)
    shown = {"config": config, **values}
    for key in PATH_KEYS:
        value = shown.get(key)
        if value is None or value == "":
            continue
        path = Path(str(value)).expanduser()
        if key in ("model", "data") and not (path.exists() or str(value).startswith((".", "/", "~"))):
            continue  # an alias, a hub id or a built-in dataset name
        resolved = path.resolve()
        if key != "config":
            values[key] = str(resolved) if key != "out" else resolved
        console.print(f"{key}: {resolved}", highlight=False, soft_wrap=True)
    return values


def read_yaml(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """A YAML mapping whose keys (dashes or underscores) must all be in ``allowed``."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(allowed))}"
            raise ValueError(f"unknown key {key!r} in {path}{hint}")
    return data


def merged(flags: dict[str, Any], config: Optional[Path], defaults: dict[str, Any],
           keep_defaults: bool = True) -> dict[str, Any]:
    """Defaults, then the YAML file, then the flags given on the command line (only the last two
    with ``keep_defaults=False``)."""
    values = dict(defaults) if keep_defaults else {}
    if config is not None:
        values.update(read_yaml(config, set(defaults)))
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


def crawd_config(values: dict[str, Any], given: dict[str, Any] | None = None):
    """The CrawdConfig of ``values``; with a preset, its settings, then only the fields the user gave."""
    from crawd.config import CrawdConfig

    fields = {key: values[key] for key in CONFIG_KEYS if key in values}
    fields["groups"] = fields.get("groups") or ()
    if not values.get("preset"):
        return CrawdConfig(**fields)
    given = given or {}
    return CrawdConfig.preset(values["preset"], values.get("task", "lm"),
                              **{key: fields[key] for key in CONFIG_KEYS if given.get(key) is not None})


def train_settings(values: dict[str, Any], progress: bool = True):
    from crawd.train import TrainSettings

    return TrainSettings(max_steps=values["max_steps"], batch_size=values["batch_size"],
                         learning_rate=values["learning_rate"], seq_len=values["seq_len"], seed=values["seed"],
                         save_steps=values["save_steps"], bf16=bool(values.get("bf16")), progress=progress,
                         long_docs=values.get("long_docs", "truncate"))


COLUMN_KEYS = ("text_column", "label_column", "sensitive_column")


def user_data_options(data: str, task: str, values: dict[str, Any]) -> dict[str, Any]:
    """Loader options for ``data``: the task and the column names for the user's own file or folder;
    column names given for a built-in dataset are an error (its columns are fixed)."""
    from crawd.data import is_user_data

    columns = {key: values[key] for key in COLUMN_KEYS if values.get(key)}
    if is_user_data(data):
        return {"task": task, **columns}
    if columns:
        flags = ", ".join("--" + key.replace("_", "-") for key in columns)
        raise ValueError(f"{flags} name the columns of your own data file; {data!r} is a built-in dataset with fixed "
                         "columns")
    return {}


@app.command()
def train(
    model: Optional[str] = typer.Option(None, help="alias (smollm2-135m, minilm-l6), local folder or hub id"),
    data: Optional[str] = typer.Option(None, help="synthetic-bios, bias-in-bios[:path], madlibs, a csv/jsonl/parquet/"
                                       "txt file or a save_to_disk folder (see above)"),
    task: Optional[str] = typer.Option(None, help="lm or classification"),
    method: Optional[str] = typer.Option(None, help="vanilla, crawd (see `crawd compare` for baselines)"),
    out: Optional[Path] = typer.Option(None, help="output folder (checkpoints, adapter/)"),
    top_k: Optional[float] = typer.Option(None, "--top-k", help="share K of weights decayed, in [0, 1]"),
    decay: Optional[float] = typer.Option(None, help="decay factor lambda, in [0, 1]"),
    sensitive_words: Optional[str] = typer.Option(None, "--sensitive-words", help="comma-separated, e.g. he,she"),
    groups: Optional[str] = typer.Option(None, help="built-in word groups, e.g. gender,race"),
    head: Optional[str] = typer.Option(None, help="concat (paper) or residual (light)"),
    mode: Optional[str] = typer.Option(None, help="cross (paper) or self"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    seed: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", "--lr"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    save_steps: Optional[int] = typer.Option(None, "--save-steps"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="folder of the shared datasets"),
    trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code/--no-trust-remote-code"),
    test_data: Optional[str] = typer.Option(None, "--test-data", help="test split file (else part of --data)"),
    dropout: Optional[float] = typer.Option(None, help="dropout of the CrAWD block (paper: 0.1)"),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help="LoRA dropout (paper: 0.1)"),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bfloat16 mixed precision (CUDA only)"),
    qlora: Optional[bool] = typer.Option(None, "--qlora/--no-qlora",
                                         help="4-bit base through bitsandbytes (CUDA only)"),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="your file's text column (default: text)"),
    label_column: Optional[str] = typer.Option(None, "--label-column",
                                               help="your file's label column, classification (default: label)"),
    sensitive_column: Optional[str] = typer.Option(
        None, "--sensitive-column", help="your file's sensitive-attribute column (default: gender; optional for "
        "--task lm, needed by the adversarial method)"),
    long_docs: Optional[str] = typer.Option(
        None, "--long-docs", help="--task lm, documents longer than --seq-len: chunk (default: windows overlapping "
        "by one token, nothing dropped), pack (concatenated, then cut) or truncate"),
    preset: Optional[str] = typer.Option(
        None, help="named CrAWD settings: debias (the mitigation chosen on validation data, see docs/method.md) "
        "or paper (the faithful defaults); flags given as well override it"),
    config: Optional[Path] = typer.Option(None, help="YAML file with the same keys as these flags"),
) -> None:
    """Fine-tune one model with one method; resumes from the newest checkpoint in --out.

    --data takes a built-in dataset or your own file (CSV, JSONL, Parquet, .txt) or
    save_to_disk folder. Three kinds for --task lm, told apart by their columns:

    Text: a text column (--text-column; a sensitive column is optional), or .txt: one
    document per line, or per block when blank lines separate them. Loss on every
    token. Five lines of data.csv:

        text
        "The nurse said that she would be late."
        "The engineer fixed the bridge before he left."
        "Our doctor studied in Lyon."
        "A teacher spoke to the class."

    Chat: JSONL with messages, rendered by the tokenizer's chat template; loss on the
    assistant turns only. Five lines of chat.jsonl:

        {"messages": [{"role": "user", "content": "Describe a nurse."}, {"role": "assistant", "content": "Kind."}]}
        {"messages": [{"role": "user", "content": "Who fixes bridges?"}, {"role": "assistant", "content": "Engineers."}]}
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
        {"messages": [{"role": "user", "content": "Name a job."}, {"role": "assistant", "content": "Teacher."}]}
        {"messages": [{"role": "user", "content": "Describe a pilot."}, {"role": "assistant", "content": "Calm."}]}

    Instruction: prompt and completion columns (any file type); loss on the
    completion only. Five lines of instructions.jsonl:

        {"prompt": "Describe a nurse:", "completion": " A nurse cares for patients."}
        {"prompt": "Who fixes bridges?", "completion": " Engineers do."}
        {"prompt": "Finish: The doctor said", "completion": " that the results were good."}
        {"prompt": "Name a job:", "completion": " Teacher."}
        {"prompt": "Describe a pilot:", "completion": " A pilot flies planes."}

    --task classification needs a label column with two classes or more and a
    sensitive column. Without --test-data, 20% of the rows are held out for testing.
    """
    from crawd.data import describe, load_data
    from crawd.methods import get_method
    from crawd.models import load_model, record_name
    from crawd.train import check_run_folder, run_identity

    flags = {k: v for k, v in locals().items() if k != "config"}
    values, given = merged(flags, config, TRAIN_DEFAULTS), merged(flags, config, TRAIN_DEFAULTS, keep_defaults=False)
    given_model = values["model"]
    if values["out"] is None:
        raise ValueError("--out is required (the folder for checkpoints and the adapter)")
    if values["task"] not in ("lm", "classification"):
        raise ValueError(f"--task must be lm or classification, got {values['task']!r}")
    chosen = get_method(values["method"])
    if not chosen.trains:
        raise ValueError(f"method {values['method']!r} trains nothing; use `crawd eval` for the base model")
    check_cuda_options(values)
    cfg = crawd_config(values, given)
    settings = train_settings(values)
    values = report_paths(values, config)
    check_run_folder(values["out"], run_identity(values["method"], cfg))
    options = user_data_options(values["data"], values["task"], values)
    if values["test_data"] and not (options and Path(values["data"]).is_file()):
        raise ValueError("--test-data goes with a --data file (csv, jsonl, json, parquet or txt)")
    extra = {"test": values["test_data"]} if values["test_data"] else {}
    dataset = load_data(values["data"], data_dir=values["data_dir"], **options, **extra)
    if options and values["task"] == "lm":
        console.print(f"data: {describe(dataset)}", highlight=False, soft_wrap=True)
    if chosen.transform:
        check_transformable(values["method"], dataset)
    from transformers import set_seed

    set_seed(settings.seed)
    num_labels = dataset["train"].features["label"].num_classes if values["task"] == "classification" else None
    base, tokenizer = load_model(values["model"], values["task"], num_labels=num_labels,
                                 trust_remote_code=bool(values["trust_remote_code"]),
                                 quantize_4bit=bool(values["qlora"]))
    record_name(base, given_model)  # adapters record the model as given, not the folder it resolved to
    built = chosen.build(base, tokenizer, cfg)
    if chosen.transform:
        dataset = chosen.transform(dataset, cfg)
    from crawd.train import train as run_train

    result = run_train(built, tokenizer, dataset, values["out"], settings, method=values["method"])
    console.print(f"[green]done[/green]: {result.steps} steps in {result.seconds:.0f} s, final loss "
                  f"{result.final_loss:.4f}; adapter saved to {result.adapter_dir}")


def check_transformable(method: str, dataset: Any) -> None:
    """Methods that rewrite the training data (cda, blind) rewrite its text column only."""
    from crawd.data.corpus import corpus_kind

    kind = corpus_kind(dataset["train"].column_names)
    if kind != "text":
        raise ValueError(f"method {method!r} rewrites the text column of the training data, so it cannot train on "
                         f"{kind.replace('_', '/')} data; use plain text data or another method")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="report folder"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="shared data folder (occupation statistics)"),
    max_steps: int = typer.Option(60, "--max-steps", help="training steps per method"),
    seed: int = typer.Option(0),
    n_train: int = typer.Option(1200, "--n-train", help="synthetic training bios"),
) -> None:
    """The main job, offline: synthetic biased bios, SmolLM2-135M, base vs vanilla vs CrAWD (paper) vs CrAWD debias."""
    from crawd.config import PRESETS, CrawdConfig
    from crawd.data import synthetic_bios
    from crawd.experiment import RunSpec, run_experiment
    from crawd.report import print_results, write_report
    from crawd.train import TrainSettings

    start = time.perf_counter()
    data = synthetic_bios(n_train=n_train, n_test=280, seed=seed, data_dir=data_dir)
    settings = TrainSettings(max_steps=max_steps, batch_size=8, learning_rate=2e-4, seq_len=48, save_steps=20,
                             logging_steps=10)
    runs = [RunSpec("base", seed), RunSpec("vanilla", seed), RunSpec("crawd", seed),
            RunSpec("crawd", seed, PRESETS["debias"]["lm"], label="crawd-debias")]
    results = run_experiment("smollm2-135m", "lm", data, runs, out, CrawdConfig(), settings,
                             ["gas", "ppl", "pronoun_skew"], data_dir=data_dir, console=console)
    results["wall_seconds"] = time.perf_counter() - start
    notes = (f"Model: SmolLM2-135M-Instruct (embedded). Data: {n_train} synthetic bios, training share of women per "
             f"occupation from real statistics; test split gender-balanced. Budget: {max_steps} LoRA steps, batch 8, "
             f"{settings.seq_len} tokens, lr {settings.learning_rate}. CrAWD: paper defaults (top_k 0.4, decay 0.2, "
             "reference 'he she', concat head); crawd-debias: the debias preset (docs/method.md). GAS: share of greedy continuations of occupation prompts with any of "
             "the paper's 28 gendered words (lower is better); pronoun_skew: mean |P(she)/(P(she)+P(he)) - 0.5| "
             "after occupation prompts (0 is ideal); ppl: perplexity on held-out bios.")
    paths = write_report(results, out, "crawd demo: base vs vanilla vs CrAWD", tradeoff=("pronoun_skew", "ppl"),
                         notes=notes)
    print_results(results, "crawd demo (SmolLM2-135M, synthetic bios)", console)
    console.print(f"report: {', '.join(str(p) for p in paths)}  ({results['wall_seconds'] / 60:.1f} min)")


COMPARE_KEYS = {"name", "model", "task", "data", "data_options", "data_dir", "benchmarks", "eval_options", "eval_split",
                "seeds",
                "settings", "quick", "crawd", "methods", "tradeoff", "notes"}


def expand_methods(entries: list[Any], task: str = "lm") -> list[dict[str, Any]]:
    """Method entries: a name, or {method, label, preset, overrides}, or {method, grid: {field: [values]}};
    a preset's settings (for ``task``) come before the entry's overrides."""
    import itertools

    from crawd.config import CrawdConfig, PRESETS

    out = []
    for entry in entries:
        entry = {"method": entry} if isinstance(entry, str) else dict(entry)
        if "preset" in entry:
            name = entry.pop("preset")
            CrawdConfig.preset(name, task)  # an unknown name or task fails here, before any run
            entry["overrides"] = {**PRESETS[name][task], **entry.get("overrides", {})}
        grid = entry.pop("grid", None)
        if not grid:
            out.append(entry)
            continue
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            overrides = {**entry.get("overrides", {}), **dict(zip(keys, combo))}
            label = (entry.get("label") or entry["method"]) + "-" + "-".join(f"{k}{v}" for k, v in zip(keys, combo))
            out.append({"method": entry["method"], "label": label, "overrides": overrides})
    return out


@app.command()
def compare(
    config: Path = typer.Option(..., help="YAML experiment file (see configs/)"),
    out: Optional[Path] = typer.Option(None, help="report folder (default: runs/<name>)"),
    quick: bool = typer.Option(False, help="the config's smoke-run budget"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="shared data folder"),
    only_seeds: Optional[str] = typer.Option(
        None, "--seeds", help="comma-separated seeds to run now (default: the config's). Runs land in the same "
        "--out, so several processes or machines can share one comparison; a last call without --seeds reads "
        "the finished runs and writes the full report"),
) -> None:
    """Methods x seeds on one task, trained and scored alike; one report with significance vs vanilla."""
    from crawd.config import CrawdConfig
    from crawd.data import load_data, resolve_data_dir
    from crawd.experiment import RunSpec, run_experiment
    from crawd.methods import get_method
    from crawd.report import print_results, write_report
    from crawd.train import TrainSettings

    spec = read_yaml(config, COMPARE_KEYS)
    settings_values = dict(spec.get("settings", {}))
    seeds = spec.get("seeds", [0, 1, 2])
    if quick:  # the quick section overrides seeds, data_options, eval_options and training settings
        quick_values = dict(spec.get("quick", {}))
        seeds = quick_values.pop("seeds", seeds[:1])
        for key in ("data_options", "eval_options"):
            spec[key] = {**spec.get(key, {}), **quick_values.pop(key, {})}
        settings_values.update(quick_values)
    if only_seeds is not None:
        try:
            seeds = [int(s) for s in only_seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {only_seeds!r}") from None
    settings = TrainSettings(**settings_values)
    methods = expand_methods(spec.get("methods", ["vanilla", "crawd"]), spec.get("task", "lm"))
    for entry in methods:
        get_method(entry["method"])
    data_dir = resolve_data_dir(data_dir or spec.get("data_dir"))
    data_spec, task = spec.get("data", "synthetic-bios"), spec.get("task", "lm")
    data = load_data(data_spec, data_dir=data_dir,
                     **{**user_data_options(data_spec, task, {}), **spec.get("data_options", {})})
    # seed-major order: an interrupted comparison holds every method for the seeds it finished
    runs = [RunSpec(m["method"], seed, m.get("overrides", {}), m.get("label")) for seed in seeds for m in methods]
    name = spec.get("name", config.stem)
    out = out or Path("runs") / (name + ("-quick" if quick else ""))
    start = time.perf_counter()
    results = run_experiment(spec.get("model", "smollm2-135m"), task, data, runs, out,
                             CrawdConfig.from_dict(spec.get("crawd", {})), settings,
                             spec.get("benchmarks", ["gas", "ppl"]), data_dir=data_dir,
                             eval_options=spec.get("eval_options"), console=console,
                             eval_split=spec.get("eval_split", "test"))
    results["wall_seconds"] = time.perf_counter() - start
    tradeoff = tuple(spec["tradeoff"]) if spec.get("tradeoff") else None
    write_report(results, out, f"crawd compare: {name}", tradeoff=tradeoff, notes=spec.get("notes", ""))
    print_results(results, f"crawd compare: {name}", console)
    console.print(f"report: {out / 'report.md'}  ({results['wall_seconds'] / 60:.1f} min)")


@app.command("eval")
def evaluate_cmd(
    model: str = typer.Option(..., help="alias, local folder or hub id"),
    adapter: Optional[list[Path]] = typer.Option(None, help="adapter folder(s) (save_pretrained / crawd train); repeatable"),
    with_base: bool = typer.Option(True, "--base/--no-base", help="also score the base model alone"),
    benchmarks: str = typer.Option("crows_pairs,stereoset,weat,gas,pronoun_skew", help="comma-separated"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    data: str = typer.Option("synthetic-bios", help="dataset for ppl / tpr_gap (its test split): a built-in name, "
                             "your own file or a save_to_disk folder (as crawd train --data)"),
    task: str = typer.Option("lm", help="lm or classification"),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="your file's text column (default: text)"),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="your file's label column"),
    sensitive_column: Optional[str] = typer.Option(None, "--sensitive-column",
                                                   help="your file's sensitive-attribute column"),
    out: Path = typer.Option(Path("eval-out")),
    eval_options: Optional[str] = typer.Option(
        None, "--eval-options", help='JSON of per-benchmark options, as eval_options in a compare config, e.g. '
        '\'{"stereoset": {"max_examples": 700}, "crows_pairs": {"bias_types": ["gender"]}}\''),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code/--no-trust-remote-code"),
) -> None:
    """Score a base model and/or base + adapters on the bias benchmarks; one report for all.

    Each model's scores are kept in OUT/runs/<name>.json as soon as they are done; a rerun of the
    same command (same benchmarks and options) reads them instead of scoring again.
    """
    import crawd
    from crawd.data import load_data, resolve_data_dir
    from crawd.experiment import evaluate
    from crawd.metrics import BENCHMARKS
    from crawd.models import load_model
    from crawd.report import print_results, write_report

    names = [b.strip() for b in benchmarks.split(",") if b.strip()]
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    try:
        options = json.loads(eval_options) if eval_options else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--eval-options is not valid JSON ({err})") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError('--eval-options must map benchmark names to option objects, e.g. {"stereoset": {...}}')
    adapters = list(adapter or [])
    metas = [crawd.serialization.read_adapter(folder)[0] for folder in adapters]  # fail before any scoring
    columns = {"text_column": text_column, "label_column": label_column, "sensitive_column": sensitive_column}
    dataset = load_data(data, data_dir=data_dir, **user_data_options(data, task, columns))
    num_labels = dataset["train"].features["label"].num_classes if task == "classification" else None
    results: dict[str, Any] = {"model": model, "adapters": [str(a) for a in adapters], "eval_options": options,
                               "runs": []}
    for folder in ([None] if with_base or not adapters else []) + adapters:
        label = "base" if folder is None else (folder.parent.name if folder.name == "adapter" else folder.name)
        done_file = out / "runs" / f"{label}.json"
        request = {"model": model, "adapter": str(folder) if folder else None, "task": task, "data": data,
                   "benchmarks": names, "eval_options": options,
                   **({"columns": columns} if any(columns.values()) else {})}
        earlier = json.loads(done_file.read_text()) if done_file.is_file() else None
        if earlier is not None and earlier.get("request") == request:
            console.print(f"[dim]{label}: scored earlier, read from {done_file}[/dim]")
            results["runs"].append(earlier)
            continue
        base, tokenizer = load_model(model, task, num_labels=num_labels, trust_remote_code=trust_remote_code)
        for meta, other in zip(metas, adapters):
            crawd.serialization.check_base(meta, base, other)
        metas = []  # checked against the first base loaded, before any scoring
        scored = crawd.load(base, tokenizer, folder) if folder else base
        console.rule(label)
        scores = evaluate(scored, tokenizer, task, names, dataset, resolve_data_dir(data_dir), options)
        for name, entry in scores["benchmarks"].items():
            detail = f"{entry['seconds']:.1f} s" if entry["status"] == "ok" else f"skipped: {entry['reason']}"
            console.print(f"  {name}: {detail}")
        record = {"method": label, "seed": 0, "request": request, **scores}
        crawd.serialization.write_json(done_file, record)
        results["runs"].append(record)
    write_report(results, out, f"crawd eval: {model}")
    print_results(results, f"crawd eval: {model}", console)
    console.print(f"report: {out / 'report.md'}")


@app.command("export")
def export_cmd(
    adapter: Path = typer.Argument(..., help="adapter folder (crawd train's OUT/adapter, or save_pretrained's)"),
    out: Path = typer.Option(..., help="a new folder to write"),
    merge: bool = typer.Option(False, "--merge/--no-merge",
                               help="a plain transformers model with the LoRA weights merged in (vanilla and the "
                                    "baselines; not crawd)"),
    base: Optional[str] = typer.Option(None, help="load the base from here instead of the name the adapter records "
                                                  "(the export records this name)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code/--no-trust-remote-code"),
) -> None:
    """Write an adapter for other tools: peft, transformers, or crawd's own loader.

    vanilla and the baselines (cda, blind, adversarial, ear, debias_tuning) are the base
    plus LoRA at inference: they export as a standard peft LoRA folder, and with --merge
    as a plain transformers model folder (AutoModelForCausalLM.from_pretrained gives the
    same logits). crawd adapters export as a crawd folder, loaded with
    crawd.AutoCrawdModel.from_pretrained(OUT), which finds the base by its recorded name;
    they cannot be merged: the cross-attention block and its head (mode cross) are new
    layers, and the decay (mode self) acts on the attention at run time, not LoRA weights.
    """
    from crawd.export import export

    console.print(f"written: {export(adapter, out, merge=merge, base=base, trust_remote_code=trust_remote_code)}",
                  highlight=False, soft_wrap=True)


@app.command()
def inspect(
    text: str = typer.Argument(..., help="the text whose cross-attention to show"),
    model: str = typer.Option("smollm2-135m"),
    adapter: Optional[Path] = typer.Option(None, help="a crawd adapter folder (else a fresh block)"),
    sensitive_words: str = typer.Option("he,she", "--sensitive-words"),
    out: Path = typer.Option(Path("cross_attention.png"), help="PNG heatmap"),
) -> None:
    """Show which input tokens attend to which sensitive tokens, before and after the decay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import crawd
    from crawd.models import load_model

    base, tokenizer = load_model(model, "lm")
    wrapped = crawd.load(base, tokenizer, adapter) if adapter else crawd.wrap(base, tokenizer, sensitive_words=sensitive_words)
    wrapped.eval()
    enc = tokenizer(text, return_tensors="pt")
    beta, decayed = (t[0].mean(0) for t in wrapped.cross_attention(enc["input_ids"], enc["attention_mask"]))
    rows = [tokenizer.decode([i]) for i in enc["input_ids"][0]]
    cols = [tokenizer.decode([i]) for i in wrapped.reference_ids[0]]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.6 * len(cols), 1.5 + 0.3 * len(rows)), sharey=True)
    for ax, matrix, title in zip(axes, (beta, decayed), ("beta (mean over heads)", "after top-K decay")):
        image = ax.imshow(matrix.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=float(beta.max()))
        ax.set_xticks(range(len(cols)), cols)
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=axes)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    console.print(f"heatmap written to {out}")
    for token, row in zip(rows, decayed):
        console.print(f"{token!r:>16} " + " ".join(f"{c}={v:.2f}" for c, v in zip(cols, row.tolist())))


@app.command()
def bench(
    model: str = typer.Option("smollm2-135m", help="alias, local folder or hub id"),
    random_config: Optional[str] = typer.Option(None, "--random-config",
                                                help="random-weights Llama instead of --model: tiny or llama-1b"),
    heads: str = typer.Option("residual,concat", help="CrAWD variants against vanilla: residual, concat, self"),
    batch: int = typer.Option(8, help="training batch size"),
    seq_len: int = typer.Option(128, "--seq-len", help="training sequence length"),
    padding: float = typer.Option(0.0, help="share of a training row that may be padding (right-padded rows of "
                                            "random lengths, as collated texts); 0: every token valid"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16, float16 (default: per device)"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    timer: str = typer.Option("wall", help="wall, or cpu (this process's CPU time; with --threads 1 on a busy "
                                           "machine)"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="peak memory, one fresh process per variant"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write the figures as JSON"),
    quick: bool = typer.Option(False, help="fewer repeats (a smoke run)"),
    repeats: Optional[int] = typer.Option(None, help="timed training rounds (default 5; 3 with --quick)"),
    gen_tokens: int = typer.Option(64, "--gen-tokens", help="new tokens per generation run; 0 skips generation"),
) -> None:
    """Overhead of CrAWD against plain LoRA fine-tuning: step time, memory, generation, parameters."""
    from crawd.bench import format_bench, run_bench

    if repeats is not None and repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    result = run_bench(model=model, random_config=random_config, heads=[h.strip() for h in heads.split(",")],
                       batch=batch, seq_len=seq_len, padding=padding, device=device, dtype=dtype, threads=threads,
                       timer=timer,
                       memory=memory, repeats=repeats or (3 if quick else 5), gen_tokens=gen_tokens)
    console.print(format_bench(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, default=str))
        console.print(f"figures written to {json_path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn user mistakes into one error line."""
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/yellow]: rerun the same command to resume")
        sys.exit(130)
    except USER_ERRORS as err:
        if os.environ.get("CRAWD_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
