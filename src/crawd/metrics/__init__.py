"""Bias, fairness and utility metrics, one family per module, behind a benchmark registry.

Importing this package registers every benchmark (crows_pairs, stereoset, weat,
gas, bold_gas, ppl, pronoun_skew, tpr_gap, and the held-out ones on a vocabulary
the mitigation never read, :mod:`crawd.metrics.heldout`: misgendering,
pronoun_skew_heldout, gas_heldout, ppl_heldout_names) for :func:`run_benchmarks`.
"""

from crawd.metrics.registry import BENCHMARKS, register_benchmark, run_benchmarks  # noqa: I001
from crawd.metrics.classification import group_metrics, predict_labels, tpr_gap
from crawd.metrics.crows_pairs import crows_pairs, load_crows_pairs, pseudo_loglikelihoods
from crawd.metrics.gas import GENDERED_WORDS, bold_gas, extended_score, gas, gas_heldout, gas_score
from crawd.metrics.heldout import (EXTENDED_WORDS, heldout_names, heldout_occupations, heldout_templates,
                                   mitigation_words)
from crawd.metrics.loglik import LogProbs, continuation_logprobs, sequence_logprobs
from crawd.metrics.misgendering import misgendering, misgendering_first_name
from crawd.metrics.occupations import BIAS_IN_BIOS_OCCUPATIONS, generate_continuations
from crawd.metrics.perplexity import perplexity, ppl, ppl_heldout_names
from crawd.metrics.pronoun_skew import pronoun_skew, pronoun_skew_heldout, pronoun_token_ids
from crawd.metrics.stats import Estimate, bootstrap_ci, estimate, paired_difference_test
from crawd.metrics.stereoset import load_stereoset, parse_choices, stereoset
from crawd.metrics.weat import WEAT_TESTS, representation, weat, weat_effect_size, weat_p_value

__all__ = [
    "BENCHMARKS", "BIAS_IN_BIOS_OCCUPATIONS", "EXTENDED_WORDS", "Estimate", "GENDERED_WORDS", "LogProbs",
    "WEAT_TESTS", "bold_gas", "bootstrap_ci", "continuation_logprobs", "crows_pairs",
    "estimate", "extended_score", "gas", "gas_heldout", "gas_score", "generate_continuations", "group_metrics",
    "heldout_names", "heldout_occupations", "heldout_templates", "load_crows_pairs", "load_stereoset",
    "misgendering", "misgendering_first_name", "mitigation_words", "paired_difference_test", "parse_choices",
    "perplexity", "ppl", "ppl_heldout_names", "predict_labels", "pronoun_skew", "pronoun_skew_heldout",
    "pronoun_token_ids", "pseudo_loglikelihoods", "register_benchmark", "representation", "run_benchmarks",
    "sequence_logprobs", "stereoset", "tpr_gap", "weat", "weat_effect_size", "weat_p_value",
]
