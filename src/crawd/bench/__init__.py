"""``crawd bench``: CrAWD's overhead against vanilla LoRA fine-tuning: step time, peak memory, generation, parameters.

``run_bench(**options)`` (:mod:`~crawd.bench.run`) returns a JSON-ready dict, ``format_bench(result)``
(:mod:`~crawd.bench.report`) a text table; :data:`BENCH_OPTIONS` documents every option. The other
modules: ``variants`` (the models compared), ``timing``, ``memory``, ``parameters``. No model code
imports this package. What is measured, and how: docs/performance.md, "What bench measures".
"""

from crawd.bench.memory import measure_memory, memory_worker
from crawd.bench.parameters import (
    PAPER_PARAMETER_SHARE,
    REFERENCE_SHAPES,
    block_parameters,
    count_parameters,
    head_parameters,
    max_ffn_for_share,
    parameter_table,
)
from crawd.bench.report import format_bench, format_scaling
from crawd.bench.run import BENCH_OPTIONS, TARGETS, machine_info, run_bench, run_scaling, versions
from crawd.bench.timing import random_batch, time_generation, time_training
from crawd.bench.variants import RANDOM_CONFIGS, build_variant, load_base, random_reference, set_reference

__all__ = ["BENCH_OPTIONS", "PAPER_PARAMETER_SHARE", "RANDOM_CONFIGS", "REFERENCE_SHAPES", "TARGETS",
           "block_parameters", "build_variant", "count_parameters", "format_bench", "format_scaling",
           "head_parameters", "load_base", "machine_info", "max_ffn_for_share", "measure_memory", "memory_worker",
           "parameter_table", "random_batch", "random_reference", "run_bench", "run_scaling", "set_reference",
           "time_generation", "time_training", "versions"]
