"""The ``crawd`` command: demo, train, eval, compare, export, inspect, bench.

Each command's options are the fields of its settings dataclass in :mod:`crawd.settings`
(``--top-k`` is ``TrainCommand.top_k``); :func:`command` turns the fields into options,
and the command body reads them by attribute. User mistakes (bad values, missing files or
columns, unknown config keys) end with one red ``error:`` line and exit status 2; set
``CRAWD_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import dataclasses
import inspect as pyinspect
import json
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin

import typer
from rich.console import Console
from transformers import set_seed

from crawd import experiment, onednn
from crawd.bench import format_bench, run_bench
from crawd.config import PRESETS, CrawdConfig
from crawd.data import describe, load_data, resolve_data_dir, synthetic_bios
from crawd.data.corpus import corpus_kind
from crawd.export import export
from crawd.loading import load
from crawd.methods import get_method
from crawd.methods.crawd import wrap
from crawd.models import load_model, record_name
from crawd.report import plot_cross_attention, print_results, write_report
from crawd.settings import (
    BenchCommand,
    CompareCommand,
    DemoCommand,
    EvalCommand,
    ExportCommand,
    InspectCommand,
    Settings,
    TrainCommand,
    flag_name,
)
from crawd.storage import check_base, read_adapter, write_json
from crawd.train import TrainSettings, check_run_folder, run_identity
from crawd.train import train as run_train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models with Cross-Attention-based Weight Decay (CrAWD) and measure bias.")
console = Console()
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, FloatingPointError,
               KeyError)


def command(settings: type[Settings], name: str, config_file: bool = True) -> Callable:
    """Register the decorated ``run(settings)`` as command ``name``, its options the fields of ``settings``.

    With ``config_file``, ``--config`` names a YAML file with the same keys; the options given
    override it. Without, an option with no default is required on the command line.
    """

    def decorate(run: Callable[[Any], None]) -> Callable[[Any], None]:
        params = [_parameter(f, hint, required=not config_file) for f, hint in settings.options()]
        if config_file:
            params.append(pyinspect.Parameter(
                "config", pyinspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                default=typer.Option(None, help="YAML file with the same keys as these options; options given as "
                                                "well override it")))

        def invoke(**flags: Any) -> None:
            onednn.backend()  # a bad CRAWD_CPU_LINEAR is an error before anything is read or written
            run(settings.load(flags.pop("config") if config_file else None, flags))

        invoke.__signature__ = pyinspect.Signature(params)
        invoke.__doc__ = run.__doc__
        app.command(name)(invoke)
        return run

    return decorate


def _parameter(f: dataclasses.Field, hint: Any, required: bool) -> pyinspect.Parameter:
    """The typer option (or argument) of one settings field; None means "not given"."""
    kind = _option_type(hint)
    help_text = f.metadata.get("help", "")
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = ... if required and not has_default else None
    if f.default not in (None, (), dataclasses.MISSING):
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        help_text = f"{help_text} (default: {shown})".strip()
    elif not has_default and default is None:
        help_text = f"{help_text} (required)"
    if f.metadata.get("argument"):
        info = typer.Argument(default, help=help_text, show_default=False)
    else:
        flags = f.metadata.get("flags") or (flag_name(f) + (f"/--no-{flag_name(f)[2:]}" if kind is bool else ""),)
        info = typer.Option(default, *flags, help=help_text, show_default=False)
    return pyinspect.Parameter(f.name, pyinspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[kind])


def _option_type(hint: Any) -> Any:
    """The type typer parses: X for ``X | None``; text for a tuple (comma-separated) or a dict (JSON)."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return str if get_origin(hint) in (tuple, dict) else hint


def show(line: str) -> None:
    """Print ``line`` as it is (paths: no highlighting, no wrapping)."""
    console.print(line, highlight=False, soft_wrap=True)


@command(TrainCommand, "train")
def train(s: TrainCommand) -> None:
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
    given_model = s.model  # adapters record the model as given, not the folder it resolves to
    s = s.resolved(show)
    method, config, settings = get_method(s.method), s.crawd_config(), s.train_settings()
    check_run_folder(s.out, run_identity(s.method, config))
    options = s.data_options()
    dataset = load_data(s.data, data_dir=s.data_dir, **options)
    if s.task == "lm" and options:
        console.print(f"data: {describe(dataset)}", highlight=False, soft_wrap=True)
    if method.transform:
        check_transformable(s.method, dataset)
    set_seed(settings.seed)
    num_labels = dataset["train"].features["label"].num_classes if s.task == "classification" else None
    base, tokenizer = load_model(s.model, s.task, num_labels=num_labels, trust_remote_code=s.trust_remote_code,
                                 quantize_4bit=s.qlora)
    record_name(base, given_model)
    built = method.build(base, tokenizer, config)
    if method.transform:
        dataset = method.transform(dataset, config)
    result = run_train(built, tokenizer, dataset, s.out, settings, method=s.method)
    console.print(f"[green]done[/green]: {result.steps} steps in {result.seconds:.0f} s, final loss "
                  f"{result.final_loss:.4f}; adapter saved to {result.adapter_dir}")


def check_transformable(method: str, dataset: Any) -> None:
    """Methods that rewrite the training data (cda, blind) rewrite its text column only."""
    kind = corpus_kind(dataset["train"].column_names)
    if kind != "text":
        raise ValueError(f"method {method!r} rewrites the text column of the training data, so it cannot train on "
                         f"{kind.replace('_', '/')} data; use plain text data or another method")


#: What the demo scores: the paper's GAS, perplexity, the pronoun skew, and two measures that no list or training
#: text of the mitigation holds (crawd.metrics.heldout): the skew after held-out prompts, and misgendering (after a
#: full name, and after the first name alone).
DEMO_BENCHMARKS = ["gas", "ppl", "pronoun_skew", "pronoun_skew_heldout", "misgendering", "misgendering_first_name"]
#: 100 misgendering contexts per gender (200 in a compare config): the demo's ten minutes.
DEMO_EVAL_OPTIONS = {"misgendering": {"n_cases": 100}, "misgendering_first_name": {"n_cases": 100}}


@command(DemoCommand, "demo")
def demo(s: DemoCommand) -> None:
    """The main job, offline: biased synthetic bios, SmolLM2-135M, base vs vanilla vs CrAWD (paper) vs the two presets."""
    start = time.perf_counter()
    data = synthetic_bios(n_train=s.n_train, n_test=280, seed=s.seed, data_dir=s.data_dir)
    settings = TrainSettings(max_steps=s.max_steps, batch_size=8, learning_rate=2e-4, seq_len=48, save_steps=30,
                             logging_steps=10)
    runs = [experiment.RunSpec("base", s.seed), experiment.RunSpec("vanilla", s.seed),
            experiment.RunSpec("crawd", s.seed),
            experiment.RunSpec("crawd", s.seed, PRESETS["neutral"]["lm"], label="crawd-neutral"),
            experiment.RunSpec("crawd", s.seed, PRESETS["debias"]["lm"], label="crawd-debias")]
    results = experiment.run_experiment("smollm2-135m", "lm", data, runs, s.out, CrawdConfig(), settings,
                                        DEMO_BENCHMARKS, data_dir=s.data_dir, eval_options=DEMO_EVAL_OPTIONS,
                                        console=console, jobs=s.jobs)
    results["wall_seconds"] = time.perf_counter() - start
    notes = (f"Model: SmolLM2-135M-Instruct (embedded). Data: {s.n_train} synthetic bios, training share of women per "
             f"occupation from real statistics; test split gender-balanced. Budget: {s.max_steps} LoRA steps, batch "
             f"8, {settings.seq_len} tokens, lr {settings.learning_rate}. CrAWD: paper defaults (top_k 0.4, decay 0.2, "
             "reference 'he she', concat head); crawd-debias, crawd-neutral: the presets (docs/method.md). GAS: "
             "share of greedy continuations of occupation prompts with any of the paper's 28 gendered words (lower "
             "is better); pronoun_skew: mean |P(she)/(P(she)+P(he)) - 0.5| after occupation prompts (0 is ideal); "
             "heldout_skew: the same after templates and occupations no training text or list of crawd holds; "
             "misgender_acc_f / _m: share of contexts naming a woman / man by a first name no crawd list holds "
             "where the right pronoun is the more likely one (higher is better); first_name_acc_f / _m: the same "
             "contexts with the first name alone (no surname); ppl: perplexity on held-out bios.")
    paths = write_report(results, s.out, "crawd demo: base vs vanilla vs CrAWD", tradeoff=("pronoun_skew", "ppl"),
                         notes=notes)
    print_results(results, "crawd demo (SmolLM2-135M, synthetic bios)", console)
    console.print(f"report: {', '.join(str(p) for p in paths)}  ({results['wall_seconds'] / 60:.1f} min)")


@command(CompareCommand, "compare", config_file=False)
def compare(s: CompareCommand) -> None:
    """Methods x seeds on one task, trained and scored alike; one report with significance vs vanilla."""
    spec = s.experiment()
    data_dir = resolve_data_dir(spec.data_dir)
    data = load_data(spec.data, data_dir=data_dir, **spec.loader_options())
    out = s.out_dir(spec)
    start = time.perf_counter()
    results = experiment.run_experiment(spec.model, spec.task, data, spec.runs(), out, spec.crawd_config(),
                                        spec.train_settings(), spec.benchmarks, data_dir=data_dir,
                                        eval_options=spec.eval_options, console=console, eval_split=spec.eval_split,
                                        jobs=s.jobs)
    results["wall_seconds"] = time.perf_counter() - start
    write_report(results, out, f"crawd compare: {spec.name}", tradeoff=tuple(spec.tradeoff) or None, notes=spec.notes)
    print_results(results, f"crawd compare: {spec.name}", console)
    console.print(f"report: {out / 'report.md'}  ({results['wall_seconds'] / 60:.1f} min)")


@command(EvalCommand, "eval")
def evaluate(s: EvalCommand) -> None:
    """Score a base model and/or base + adapters on the bias benchmarks; one report for all.

    Each model's scores are kept in OUT/runs/<name>.json as soon as they are done; a rerun of the
    same command (same benchmarks and options) reads them instead of scoring again.
    """
    metas = [read_adapter(folder)[0] for folder in s.adapter]  # fail before any scoring
    dataset = load_data(s.data, data_dir=s.data_dir, **s.data_options())
    num_labels = dataset["train"].features["label"].num_classes if s.task == "classification" else None
    results: dict[str, Any] = {"model": s.model, "adapters": [str(a) for a in s.adapter],
                               "eval_options": s.eval_options, "runs": []}
    columns = s.columns()
    for folder in ([None] if s.base or not s.adapter else []) + s.adapter:
        label = "base" if folder is None else (folder.parent.name if folder.name == "adapter" else folder.name)
        done_file = s.out / "runs" / f"{label}.json"
        request = {"model": s.model, "adapter": str(folder) if folder else None, "task": s.task, "data": s.data,
                   "benchmarks": list(s.benchmarks), "eval_options": s.eval_options,
                   **({"columns": columns} if any(columns.values()) else {})}
        earlier = json.loads(done_file.read_text()) if done_file.is_file() else None
        if earlier is not None and earlier.get("request") == request:
            console.print(f"[dim]{label}: scored earlier, read from {done_file}[/dim]")
            results["runs"].append(earlier)
            continue
        base, tokenizer = load_model(s.model, s.task, num_labels=num_labels, trust_remote_code=s.trust_remote_code)
        for meta, other in zip(metas, s.adapter):
            check_base(meta, base, other)
        metas = []  # checked against the first base loaded, before any scoring
        scored = load(base, tokenizer, folder) if folder else base
        console.rule(label)
        scores = experiment.evaluate(scored, tokenizer, s.task, list(s.benchmarks), dataset,
                                     resolve_data_dir(s.data_dir), s.eval_options)
        for name, entry in scores["benchmarks"].items():
            detail = f"{entry['seconds']:.1f} s" if entry["status"] == "ok" else f"skipped: {entry['reason']}"
            console.print(f"  {name}: {detail}")
        record = {"method": label, "seed": 0, "request": request, **scores}
        write_json(done_file, record)
        results["runs"].append(record)
    write_report(results, s.out, f"crawd eval: {s.model}")
    print_results(results, f"crawd eval: {s.model}", console)
    console.print(f"report: {s.out / 'report.md'}")


@command(ExportCommand, "export", config_file=False)
def export_cmd(s: ExportCommand) -> None:
    """Write an adapter for other tools: peft, transformers, or crawd's own loader.

    vanilla and the baselines (cda, blind, adversarial, ear, debias_tuning) are the base
    plus LoRA at inference: they export as a standard peft LoRA folder, and with --merge
    as a plain transformers model folder (AutoModelForCausalLM.from_pretrained gives the
    same logits). crawd adapters export as a crawd folder, loaded with
    crawd.AutoCrawdModel.from_pretrained(OUT), which finds the base by its recorded name;
    they cannot be merged: the cross-attention block and its head (mode cross) are new
    layers, and the decay (mode self) acts on the attention at run time, not LoRA weights.
    """
    written = export(s.adapter, s.out, merge=s.merge, base=s.base, trust_remote_code=s.trust_remote_code)
    console.print(f"written: {written}", highlight=False, soft_wrap=True)


@command(InspectCommand, "inspect", config_file=False)
def inspect(s: InspectCommand) -> None:
    """Show which input tokens attend to which sensitive tokens, before and after the decay."""
    base, tokenizer = load_model(s.model, "lm")
    if s.adapter:
        wrapped = load(base, tokenizer, s.adapter)
    else:
        wrapped = wrap(base, tokenizer, sensitive_words=s.sensitive_words)
    wrapped.eval()
    enc = tokenizer(s.text, return_tensors="pt")
    beta, decayed = (t[0].mean(0) for t in wrapped.cross_attention(enc["input_ids"], enc["attention_mask"]))
    rows = [tokenizer.decode([i]) for i in enc["input_ids"][0]]
    cols = [tokenizer.decode([i]) for i in wrapped.reference_ids[0]]
    plot_cross_attention(beta.numpy(), decayed.numpy(), rows, cols, s.out)
    console.print(f"heatmap written to {s.out}")
    for token, row in zip(rows, decayed):
        console.print(f"{token!r:>16} " + " ".join(f"{c}={v:.2f}" for c, v in zip(cols, row.tolist())))


@command(BenchCommand, "bench")
def bench(s: BenchCommand) -> None:
    """Overhead of CrAWD against plain LoRA fine-tuning: step time, memory, generation, parameters."""
    result = run_bench(**s.bench_options())
    console.print(format_bench(result))
    if s.json_path:
        s.json_path.write_text(json.dumps(result, indent=2, default=str))
        console.print(f"figures written to {s.json_path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn user mistakes into one error line."""
    try:
        code = app(args=argv, standalone_mode=False)  # typer returns 130 for Ctrl-C
    except typer.TyperException as err:  # a bad option or value on the command line (typer's own click)
        console.print(f"[red]error:[/red] {err.format_message()} (see --help)", highlight=False,
                      soft_wrap=True)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except USER_ERRORS as err:
        if os.environ.get("CRAWD_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    if code == 130:
        console.print("[yellow]interrupted[/yellow]: rerun the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
