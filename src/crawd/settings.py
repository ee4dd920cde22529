"""Typed settings of the ``crawd`` commands: one dataclass per command, filled from a YAML file, then the flags.

Each field of a command's dataclass is one command-line option (its flags and help are in
the field, see :func:`option`; :mod:`crawd.cli` builds the options from them).
:meth:`Settings.load` reads the YAML file (an unknown key fails with a "did you mean"
line), lays the flags given over it, checks the type of every value and runs the command's
own checks, once, before any work; the command then reads its settings by attribute.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import torch
import yaml

from crawd.config import PRESETS, CrawdConfig
from crawd.data import is_user_data
from crawd.experiment import RunSpec
from crawd.methods import get_method
from crawd.metrics import BENCHMARKS
from crawd.train import TrainSettings

S = TypeVar("S", bound="Settings")
TASKS = ("lm", "classification")


def option(default: Any = dataclasses.MISSING, *flags: str, help: str = "", argument: bool = False,
           path: bool | str = False) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the value when neither the YAML file nor a flag gives one; none: required.
        flags: the option's names (default ``--field-name``, and ``--x/--no-x`` for a bool).
        help: the option's help line.
        argument: a positional argument instead of an option.
        path: a file or folder, made absolute when the command starts (``"or name"``: only when
            it exists or starts with ``.``, ``/`` or ``~``; else it is an alias or a built-in name).
    """
    metadata = {"flags": flags, "help": help, "argument": argument, "path": path}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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


@dataclass(kw_only=True)
class Settings:
    """Base of the settings dataclasses: loading from YAML and flags, with the type checks."""

    #: the names set by the YAML file or a flag (a preset yields to these only)
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata={"cli": False})
    #: the YAML file the settings were read from
    source: Path | None = field(default=None, repr=False, compare=False, metadata={"cli": False})

    @classmethod
    def options(cls) -> list[tuple[dataclasses.Field, Any]]:
        """Each command-line option: its field and its resolved type."""
        hints = get_type_hints(cls)
        return [(f, hints[f.name]) for f in fields(cls) if f.metadata.get("cli", True)]

    @classmethod
    def load(cls: type[S], config: Path | None = None, flags: dict[str, Any] | None = None) -> S:
        """The YAML file ``config`` (keys: the option names), then the ``flags`` that are not None."""
        options = {f.name: (f, hint) for f, hint in cls.options()}
        values: dict[str, Any] = {}
        if config is not None:
            config = Path(config).expanduser().resolve()
            for key, value in read_yaml(config, set(options)).items():
                values[key] = _coerce(value, options[key][1], f"{key} in {config}")
        for key, value in (flags or {}).items():
            if value is not None:
                values[key] = _coerce(value, options[key][1], flag_name(options[key][0]))
        missing = [flag_name(f) for f, _ in options.values() if _required(f) and f.name not in values]
        if missing:
            raise ValueError(f"{missing[0]} is required")
        return cls(**values, given=frozenset(values), source=config)

    def resolved(self: S, show: Callable[[str], None] = print) -> S:
        """These settings with their relative file paths made absolute; ``show`` gets one line per path."""
        if self.source is not None:
            show(f"config: {self.source}")
        changes = {}
        for f, _ in self.options():
            value, kind = getattr(self, f.name), f.metadata.get("path")
            if not kind or value is None or value == "":
                continue
            path = Path(str(value)).expanduser()
            if kind == "or name" and not (path.exists() or str(value).startswith((".", "/", "~"))):
                continue  # an alias, a hub id or a built-in dataset name
            changes[f.name] = path.resolve() if isinstance(value, Path) else str(path.resolve())
            show(f"{f.name}: {changes[f.name]}")
        return replace(self, **changes)


def flag_name(f: dataclasses.Field) -> str:
    """How the user names a field: its first flag (``--top-k``), or its name for an argument."""
    if f.metadata.get("argument"):
        return f.name.upper()
    flags = f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)
    return flags[0].split("/")[0]


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_ITEM_NAMES = {int: "integers", float: "numbers", str: "names", Path: "paths"}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (None, bool, int, float, str, Path, tuple[X, ...], list[X], dict), else one
    ValueError naming ``name``. A tuple takes a list or comma-separated text, a dict JSON text."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), name)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if origin is tuple and isinstance(value, str):
        try:
            return tuple(args[0](v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{name} takes comma-separated {_ITEM_NAMES[args[0]]}, got {value!r}") from None
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return origin(_coerce(v, args[0], name) for v in value)
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"{name} is not valid JSON ({err})") from None
        if isinstance(value, dict):
            return value
    raise ValueError(f"{name} must be {_described(hint)}, got {value!r}")


def _described(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (tuple, list):
        return f"a list of {_ITEM_NAMES.get(args[0], 'values')}"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", Path: "a path"}
    return names.get(hint, str(hint))


def user_data_options(data: str, task: str, columns: dict[str, str | None]) -> dict[str, Any]:
    """Loader options for ``data``: the task and the column names for the user's own file or folder;
    column names given for a built-in dataset are an error (its columns are fixed)."""
    columns = {key: value for key, value in columns.items() if value}
    if is_user_data(data):
        return {"task": task, **columns}
    if columns:
        flags = ", ".join("--" + key.replace("_", "-") for key in columns)
        raise ValueError(f"{flags} name the columns of your own data file; {data!r} is a built-in dataset with fixed "
                         "columns")
    return {}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"--task must be lm or classification, got {task!r}")


def _jobs_option() -> Any:
    """The ``--jobs`` option of the commands that run experiments (:func:`crawd.experiment.run_experiment`)."""
    return option(None, help="runs at a time, each in a process of one thread (default: the machine's cores, at "
                  "most one per run); the figures do not depend on it")


def _check_jobs(jobs: int | None) -> None:
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")


# ---- crawd train ---------------------------------------------------------------------------

#: train options that are CrawdConfig fields (a --preset gives the others)
CONFIG_FIELDS = ("sensitive_words", "groups", "top_k", "decay", "head", "mode", "dropout", "lora_dropout")


@dataclass(kw_only=True)
class TrainCommand(Settings):
    """``crawd train``: one model, one method."""

    model: str = option("smollm2-135m", help="alias (smollm2-135m, minilm-l6), local folder or hub id",
                        path="or name")
    data: str = option("synthetic-bios", help="synthetic-bios, bias-in-bios[:path], madlibs, a csv/jsonl/parquet/txt "
                       "file or a save_to_disk folder (see above)", path="or name")
    task: str = option("lm", help="lm or classification")
    method: str = option("crawd", help="vanilla, crawd (see `crawd compare` for baselines)")
    out: Path | None = option(None, help="output folder (checkpoints, adapter/); required", path=True)
    top_k: float = option(0.4, help="share K of weights decayed, in [0, 1]")
    decay: float = option(0.2, help="decay factor lambda, in [0, 1]")
    sensitive_words: tuple[str, ...] = option(("he", "she"), help="comma-separated, e.g. he,she")
    groups: tuple[str, ...] = option((), help="built-in word groups, e.g. gender,race")
    head: str = option("concat", help="concat (paper) or residual (light)")
    mode: str = option("cross", help="cross (paper) or self")
    max_steps: int = option(60)
    seed: int = option(0)
    batch_size: int = option(8)
    learning_rate: float = option(2e-4, "--learning-rate", "--lr")
    seq_len: int = option(32)
    save_steps: int = option(20)
    data_dir: str | None = option(None, help="folder of the shared datasets", path=True)
    trust_remote_code: bool = option(False)
    test_data: str | None = option(None, help="test split file (else part of --data)", path=True)
    dropout: float = option(0.1, help="dropout of the CrAWD block (paper: 0.1)")
    lora_dropout: float = option(0.1, help="LoRA dropout (paper: 0.1)")
    bf16: bool = option(False, help="bfloat16 mixed precision (CUDA only)")
    qlora: bool = option(False, help="4-bit base through bitsandbytes (CUDA only)")
    text_column: str | None = option(None, help="your file's text column (default: text)")
    label_column: str | None = option(None, help="your file's label column, classification (default: label)")
    sensitive_column: str | None = option(None, help="your file's sensitive-attribute column (default: gender; "
                                          "optional for --task lm, needed by the adversarial method)")
    long_docs: str = option("chunk", help="--task lm, documents longer than --seq-len: chunk (windows overlapping "
                            "by one token, nothing dropped), pack (concatenated, then cut) or truncate")
    preset: str | None = option(None, help="named CrAWD settings: debias (the mitigation chosen on validation data, "
                                "see docs/method.md), neutral (also lowers GAS, at about x1.2 a step) "
                                "or paper (the faithful defaults); options given as well override it")

    def __post_init__(self) -> None:
        if self.out is None:
            raise ValueError("--out is required (the folder for checkpoints and the adapter)")
        _check_task(self.task)
        if not get_method(self.method).trains:
            raise ValueError(f"method {self.method!r} trains nothing; use `crawd eval` for the base model")
        if self.qlora:
            if not torch.cuda.is_available():
                raise ValueError("--qlora needs a CUDA device and bitsandbytes; none found")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError("--qlora needs a CUDA device and bitsandbytes; bitsandbytes is not installed "
                                 "(pip install bitsandbytes)")
        if self.bf16 and not torch.cuda.is_available():
            raise ValueError("--bf16 needs a CUDA device; none found (train in float32 on CPU: drop --bf16)")
        self.crawd_config()
        options = self.data_options()
        if self.test_data and not (options and Path(self.data).expanduser().is_file()):
            raise ValueError("--test-data goes with a --data file (csv, jsonl, json, parquet or txt)")

    def crawd_config(self) -> CrawdConfig:
        """The CrawdConfig of these options; with a preset, its settings, then only the fields given."""
        values = {name: getattr(self, name) for name in CONFIG_FIELDS}
        if self.preset is None:
            return CrawdConfig(**values)
        return CrawdConfig.preset(self.preset, self.task, **{k: v for k, v in values.items() if k in self.given})

    def train_settings(self, progress: bool = True) -> TrainSettings:
        return TrainSettings(max_steps=self.max_steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
                             seq_len=self.seq_len, seed=self.seed, save_steps=self.save_steps, bf16=self.bf16,
                             progress=progress, long_docs=self.long_docs)

    def data_options(self) -> dict[str, Any]:
        """Options of :func:`crawd.data.load_data` for ``data``: the task, the columns, the test file."""
        options = user_data_options(self.data, self.task, {"text_column": self.text_column,
                                                           "label_column": self.label_column,
                                                           "sensitive_column": self.sensitive_column})
        return {**options, "test": self.test_data} if self.test_data else options


# ---- crawd eval ----------------------------------------------------------------------------

@dataclass(kw_only=True)
class EvalCommand(Settings):
    """``crawd eval``: a base model and/or adapters on the bias benchmarks."""

    model: str = option(help="alias, local folder or hub id")
    adapter: list[Path] = option([], help="adapter folder(s) (save_pretrained / crawd train); repeatable")
    base: bool = option(True, "--base/--no-base", help="also score the base model alone")
    benchmarks: tuple[str, ...] = option(("crows_pairs", "stereoset", "weat", "gas", "pronoun_skew"),
                                         help="comma-separated")
    data_dir: str | None = option(None)
    data: str = option("synthetic-bios", help="dataset for ppl / tpr_gap (its test split): a built-in name, your own "
                       "file or a save_to_disk folder (as crawd train --data)")
    task: str = option("lm", help="lm or classification")
    text_column: str | None = option(None, help="your file's text column (default: text)")
    label_column: str | None = option(None, help="your file's label column")
    sensitive_column: str | None = option(None, help="your file's sensitive-attribute column")
    out: Path = option(Path("eval-out"))
    eval_options: dict[str, Any] = option({}, help='JSON of per-benchmark options, as eval_options in a compare '
                                          'config, e.g. \'{"stereoset": {"max_examples": 700}, "crows_pairs": '
                                          '{"bias_types": ["gender"]}}\'')
    trust_remote_code: bool = option(False)

    def __post_init__(self) -> None:
        _check_task(self.task)
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        if not all(isinstance(v, dict) for v in self.eval_options.values()):
            raise ValueError('--eval-options must map benchmark names to option objects, e.g. {"stereoset": {...}}')
        self.data_options()

    def data_options(self) -> dict[str, Any]:
        return user_data_options(self.data, self.task, self.columns())

    def columns(self) -> dict[str, str | None]:
        return {"text_column": self.text_column, "label_column": self.label_column,
                "sensitive_column": self.sensitive_column}


# ---- crawd compare -------------------------------------------------------------------------

@dataclass(kw_only=True)
class CompareCommand(Settings):
    """``crawd compare``: the flags; the experiment itself is the YAML file (:class:`ExperimentSpec`)."""

    config: Path = option(help="YAML experiment file (see configs/)")
    out: Path | None = option(None, help="report folder (default: runs/<name>)")
    quick: bool = option(False, help="the config's smoke-run budget")
    data_dir: str | None = option(None, help="shared data folder")
    seeds: tuple[int, ...] | None = option(
        None, help="comma-separated seeds to run now (default: the config's). Runs land in the same --out, so several "
        "processes or machines can share one comparison; a last call without --seeds reads the finished runs and "
        "writes the full report")
    jobs: int | None = _jobs_option()

    def __post_init__(self) -> None:
        _check_jobs(self.jobs)

    def experiment(self) -> ExperimentSpec:
        """The experiment file with --quick, --seeds and --data-dir applied."""
        spec = ExperimentSpec.load(self.config)
        if self.quick:
            spec = spec.quick_run()
        if self.seeds is not None:
            spec = replace(spec, seeds=list(self.seeds))
        return replace(spec, data_dir=self.data_dir or spec.data_dir)

    def out_dir(self, spec: ExperimentSpec) -> Path:
        return self.out or Path("runs") / (spec.name + ("-quick" if self.quick else ""))


@dataclass(kw_only=True)
class ExperimentSpec(Settings):
    """A compare config (see configs/): methods x seeds on one model, task and dataset."""

    name: str = option("", help="the report's name (default: the file's name)")
    model: str = option("smollm2-135m")
    task: str = option("lm")
    data: str = option("synthetic-bios")
    data_options: dict[str, Any] = option({})
    data_dir: str | None = option(None)
    benchmarks: list[str] = option(["gas", "ppl"])
    eval_options: dict[str, Any] = option({})
    eval_split: str = option("test")
    seeds: list[int] = option([0, 1, 2])
    settings: dict[str, Any] = option({}, help="TrainSettings fields")
    quick: dict[str, Any] = option({}, help="the smoke run: seeds, data_options, eval_options, settings fields")
    crawd: dict[str, Any] = option({}, help="CrawdConfig fields shared by every run")
    methods: list[Any] = option(["vanilla", "crawd"], help="see expand_methods")
    tradeoff: list[str] = option([], help="two headline metrics for the trade-off plot")
    notes: str = option("")

    def __post_init__(self) -> None:
        if not self.name and self.source is not None:
            self.name = self.source.stem
        _check_task(self.task)
        self.train_settings()
        self.crawd_config()
        for entry in self.entries():
            get_method(entry["method"])

    def quick_run(self) -> ExperimentSpec:
        """The smoke run: the quick section overrides seeds, data_options, eval_options and training settings."""
        quick = dict(self.quick)
        return replace(self, seeds=quick.pop("seeds", self.seeds[:1]),
                       data_options={**self.data_options, **quick.pop("data_options", {})},
                       eval_options={**self.eval_options, **quick.pop("eval_options", {})},
                       settings={**self.settings, **quick}, quick={})

    def train_settings(self) -> TrainSettings:
        known = {f.name for f in fields(TrainSettings)}
        for key in self.settings:
            if key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(known))}"
                raise ValueError(f"unknown key {key!r} in settings of {self.source}{hint}")
        return TrainSettings(**self.settings)

    def crawd_config(self) -> CrawdConfig:
        return CrawdConfig.from_dict(self.crawd)

    def entries(self) -> list[dict[str, Any]]:
        return expand_methods(self.methods, self.task)

    def runs(self) -> list[RunSpec]:
        """Seed-major: an interrupted comparison holds every method for the seeds it finished."""
        return [RunSpec(m["method"], seed, m.get("overrides", {}), m.get("label"))
                for seed in self.seeds for m in self.entries()]

    def loader_options(self) -> dict[str, Any]:
        return {**user_data_options(self.data, self.task, {}), **self.data_options}


def expand_methods(entries: list[Any], task: str = "lm") -> list[dict[str, Any]]:
    """Method entries: a name, or {method, label, preset, overrides}, or {method, grid: {field: [values]}};
    a preset's settings (for ``task``) come before the entry's overrides."""
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


#: the keys of a compare config
COMPARE_KEYS = {f.name for f, _ in ExperimentSpec.options()}


# ---- crawd demo, inspect, bench, export ----------------------------------------------------

@dataclass(kw_only=True)
class DemoCommand(Settings):
    """``crawd demo``: synthetic biased bios, SmolLM2-135M, base vs vanilla vs CrAWD (paper) vs CrAWD debias."""

    out: Path = option(Path("demo-out"), help="report folder")
    data_dir: str | None = option(None, help="shared data folder (occupation statistics)")
    max_steps: int = option(60, help="training steps per method")
    seed: int = option(0)
    n_train: int = option(1200, help="synthetic training bios")
    jobs: int | None = _jobs_option()

    def __post_init__(self) -> None:
        _check_jobs(self.jobs)


@dataclass(kw_only=True)
class InspectCommand(Settings):
    """``crawd inspect``: which input tokens attend to which sensitive tokens."""

    text: str = option(help="the text whose cross-attention to show", argument=True)
    model: str = option("smollm2-135m")
    adapter: Path | None = option(None, help="a crawd adapter folder (else a fresh block)")
    sensitive_words: tuple[str, ...] = option(("he", "she"), help="comma-separated")
    out: Path = option(Path("cross_attention.png"), help="PNG heatmap")


@dataclass(kw_only=True)
class BenchCommand(Settings):
    """``crawd bench``: CrAWD's overhead against plain LoRA fine-tuning."""

    model: str = option("smollm2-135m", help="alias, local folder or hub id")
    random_config: str | None = option(None, help="random-weights Llama instead of --model: tiny or llama-1b")
    heads: tuple[str, ...] = option(("residual", "concat"),
                                    help="CrAWD variants against vanilla: residual, concat, self, debias (the preset)")
    batch: int = option(8, help="training batch size")
    seq_len: int = option(128, help="training sequence length")
    padding: float = option(0.0, help="share of a training row that may be padding (right-padded rows of random "
                            "lengths, as collated texts); 0: every token valid")
    device: str | None = option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    dtype: str | None = option(None, help="float32, bfloat16, float16 (default: per device)")
    threads: int = option(2, help="torch CPU threads")
    timer: str = option("wall", help="wall, or cpu (this process's CPU time; with --threads 1 on a busy machine)")
    memory: bool = option(True, help="peak memory, one fresh process per variant")
    json_path: Path | None = option(None, "--json", help="also write the figures as JSON")
    quick: bool = option(False, help="fewer repeats (a smoke run)")
    repeats: int | None = option(None, help="timed training rounds (default 5; 3 with --quick)")
    gen_tokens: int = option(64, help="new tokens per generation run; 0 skips generation")

    def __post_init__(self) -> None:
        if self.repeats is not None and self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}")

    def bench_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`crawd.bench.run_bench`."""
        return {"model": self.model, "random_config": self.random_config, "heads": list(self.heads),
                "batch": self.batch, "seq_len": self.seq_len, "padding": self.padding, "device": self.device,
                "dtype": self.dtype, "threads": self.threads, "timer": self.timer, "memory": self.memory,
                "repeats": self.repeats or (3 if self.quick else 5), "gen_tokens": self.gen_tokens}


@dataclass(kw_only=True)
class ExportCommand(Settings):
    """``crawd export``: an adapter for other tools."""

    adapter: Path = option(help="adapter folder (crawd train's OUT/adapter, or save_pretrained's)", argument=True)
    out: Path = option(help="a new folder to write")
    merge: bool = option(False, help="a plain transformers model with the LoRA weights merged in (vanilla and the "
                         "baselines; not crawd)")
    base: str | None = option(None, help="load the base from here instead of the name the adapter records (the "
                              "export records this name)")
    trust_remote_code: bool = option(False)
