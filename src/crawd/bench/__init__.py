"""Overhead of CrAWD against vanilla LoRA fine-tuning: step time, peak memory, generation, parameters.

Method (see ``docs/performance.md``):

* one base model is loaded once; vanilla (:func:`crawd.adapt`) and each CrAWD head type
  (:func:`crawd.wrap`) are built on **independent deep copies** of it, so they start from
  the same weights and share nothing;
* training: every model in ``train()`` mode with AdamW over its trainable parameters, one
  fixed random batch (``batch x seq_len`` token ids, all valid, labels = inputs); after
  ``warmup`` steps the models take turns, one full step each (forward, backward,
  ``optimizer.step``, ``zero_grad``), for ``repeats`` rounds; the order inside a round is
  reversed every other round (A B C, C B A, ...) so slow drifts of the machine cancel;
* a ratio is CrAWD / vanilla: ``median`` is the ratio of the median step times, and
  ``min`` / ``max`` / ``pair_median`` summarise the per-round ratios (each CrAWD step over
  the vanilla step of the same round);
* generation: ``eval()``, greedy, ``gen_tokens`` new tokens with the KV cache, EOS
  disabled so every run makes all the tokens; tokens per second, interleaved the same way
  (the ratio is CrAWD / vanilla, higher is better);
* peak memory: each variant in a fresh subprocess (nothing else in it): on CPU the
  process's peak resident set size during ``mem_steps`` training steps (Linux ``VmHWM``,
  reset through ``/proc/self/clear_refs`` once the model is built; ``ru_maxrss`` where that
  is not possible), on CUDA ``torch.cuda.max_memory_allocated``. Both count the weights,
  the optimizer state and the activations of one step. On CPU the figure also holds the
  libraries' own memory (the same for every variant); ``delta`` ratios leave it out;
* parameters: the new trainable weights of each head type (block + head) as a share of
  the base model's parameters, and the block's size for several FFN widths.

``run_bench(**options)`` (:mod:`~crawd.bench.run`) returns a plain dict (JSON-ready);
``format_bench(result)`` (:mod:`~crawd.bench.report`) turns it into a text table.
:data:`BENCH_OPTIONS` documents every option. The modules: ``variants`` (the models),
``timing``, ``memory``, ``parameters``, ``report``, ``run``; no model code imports them.
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
