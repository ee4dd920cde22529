"""A benchmark registry in the spirit of lm-evaluation-harness.

A benchmark is a function ``(model, tokenizer, data_dir, <named options>) -> dict``
returning JSON-serialisable results (scalars as ``{"value", "ci_low",
"ci_high", "n"}`` plus tables). It declares the model kinds it applies to
(``"decoder"``: causal LM, ``"encoder"``: masked LM, ``"classifier"``:
sequence classifier), the data folders it needs under ``data_dir`` and the
options it cannot run without. The runner passes a benchmark only the options its
signature names, so a benchmark names each one (``**options`` is refused: it would
silently get none, as ``misgendering_first_name`` once got no ``split``). Adding one
is a decorated function anywhere in :mod:`crawd.metrics`; no core code changes.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crawd.onednn import onednn_linear

KINDS = ("decoder", "encoder", "classifier")


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark and what it needs to run."""

    name: str
    fn: Callable[..., dict]
    kinds: tuple[str, ...]
    requires_data: tuple[str, ...]
    requires_options: tuple[str, ...]


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(name: str, kinds: Sequence[str] = ("decoder", "encoder"),
                       requires_data: Sequence[str] = (),
                       requires_options: Sequence[str] = ()) -> Callable:
    """Decorator registering ``fn`` as benchmark ``name``."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown model kinds {sorted(unknown)}; choose from {KINDS}")

    def decorator(fn: Callable[..., dict]) -> Callable[..., dict]:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is already registered")
        catch_all = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.VAR_KEYWORD]
        if catch_all:
            raise TypeError(f"benchmark {name!r} takes **{catch_all[0]}: name each option it reads (the runner "
                            "passes a benchmark only the options its signature names)")
        BENCHMARKS[name] = Benchmark(name, fn, tuple(kinds), tuple(requires_data),
                                     tuple(requires_options))
        return fn

    return decorator


def _skip_reason(bench: Benchmark, data_dir: Path | None, model_kind: str,
                 options: dict) -> str | None:
    if model_kind not in bench.kinds:
        return f"does not apply to a {model_kind} model (needs one of {list(bench.kinds)})"
    for folder in bench.requires_data:
        if data_dir is None or not (data_dir / folder).is_dir():
            return f"data folder {folder!r} not found under {data_dir}"
    missing = [o for o in bench.requires_options if o not in options]
    if missing:
        return f"needs option(s) {missing}"
    return None


def run_benchmarks(model, tokenizer, names: Sequence[str] | None = None,
                   data_dir: str | Path | None = None, model_kind: str = "decoder",
                   **options) -> dict[str, dict]:
    """Run benchmarks ``names`` (default: all registered) and collect their results.

    Each benchmark receives ``kind=model_kind`` and those ``options`` its
    signature accepts; an option named after a benchmark whose value is a dict
    (e.g. ``crows_pairs={"max_pairs": 100}``) goes to that benchmark only and
    overrides shared options. Returns ``{name: {"status": "ok", "seconds":
    wall_time, "result": {...}}}`` or ``{name: {"status": "skipped",
    "reason": ...}}`` when the data, an option or the model kind is missing. Float32 linear layers on an x86
    CPU run through oneDNN (:mod:`crawd.onednn`).
    """
    if model_kind not in KINDS:
        raise ValueError(f"model_kind must be one of {KINDS}, got {model_kind!r}")
    names = list(BENCHMARKS) if names is None else list(names)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; registered: {sorted(BENCHMARKS)}")
    root = Path(data_dir) if data_dir is not None else None
    shared = {k: v for k, v in options.items() if k not in BENCHMARKS}
    results: dict[str, dict] = {}
    for name in names:
        bench = BENCHMARKS[name]
        own = {**shared, "kind": model_kind, **options.get(name, {})}
        reason = _skip_reason(bench, root, model_kind, own)
        if reason is not None:
            results[name] = {"status": "skipped", "reason": reason}
            continue
        params = inspect.signature(bench.fn).parameters
        accepted = {k: v for k, v in own.items() if k in params}
        start = time.perf_counter()
        with onednn_linear():
            result = bench.fn(model, tokenizer, root, **accepted)
        results[name] = {"status": "ok", "seconds": round(time.perf_counter() - start, 3),
                         "result": result}
    return results
