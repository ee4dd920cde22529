"""Typed command settings: YAML, then flags; one check of every value at the boundary; options built from fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from crawd.cli import app
from crawd.config import CrawdConfig
from crawd.settings import COMPARE_KEYS, BenchCommand, CompareCommand, EvalCommand, ExperimentSpec, TrainCommand


def test_flags_override_the_yaml_file_and_both_count_as_given(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("top-k: 0.3\ndecay: 0.5\nsensitive_words: [he, she, they]\nout: run\n")
    s = TrainCommand.load(config, {"decay": 0.1, "groups": "gender,race", "seed": None})
    assert (s.top_k, s.decay, s.sensitive_words, s.groups) == (0.3, 0.1, ("he", "she", "they"), ("gender", "race"))
    assert s.given == {"top_k", "decay", "sensitive_words", "groups", "out"} and s.source == config.resolve()
    assert s.seed == 0 and s.out == Path("run")
    config = s.crawd_config()
    assert (config.top_k, config.decay, config.groups) == (0.3, 0.1, ("gender", "race"))


def test_a_preset_yields_to_the_fields_given_only():
    s = TrainCommand.load(None, {"out": "run", "preset": "debias", "decay": 0.5})
    assert s.crawd_config() == CrawdConfig.preset("debias", "lm", decay=0.5)
    assert TrainCommand.load(None, {"out": "run", "preset": "debias"}).crawd_config() == CrawdConfig.preset("debias")


@pytest.mark.parametrize("text, message", [
    ("top_k: high\nout: run\n", "top_k in {config} must be a number, got 'high'"),
    ("max_steps: 2.5\nout: run\n", "max_steps in {config} must be an integer, got 2.5"),
    ("bf16: maybe\nout: run\n", "bf16 in {config} must be true or false, got 'maybe'"),
    ("top_kk: 0.3\n", "unknown key 'top_kk' in {config}; did you mean 'top_k'?"),
    ("task: ner\nout: run\n", "--task must be lm or classification, got 'ner'"),
    ("top_k: 0.3\n", "--out is required (the folder for checkpoints and the adapter)"),
])
def test_bad_yaml_values_fail_once_with_the_key_named(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(ValueError) as err:
        TrainCommand.load(config, {})
    assert str(err.value) == message.format(config=config.resolve())


def test_eval_needs_a_model_and_option_objects():
    with pytest.raises(ValueError, match="--model is required"):
        EvalCommand.load(None, {})
    with pytest.raises(ValueError, match="--eval-options is not valid JSON"):
        EvalCommand.load(None, {"model": "m", "eval_options": "{"})
    with pytest.raises(ValueError, match="unknown benchmark.s. nope"):
        EvalCommand.load(None, {"model": "m", "benchmarks": "ppl,nope"})
    s = EvalCommand.load(None, {"model": "m", "eval_options": '{"ppl": {"batch_size": 2}}', "benchmarks": "ppl"})
    assert s.eval_options == {"ppl": {"batch_size": 2}} and s.benchmarks == ("ppl",) and s.adapter == []


def test_experiment_spec_applies_quick_and_seeds(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: m\nseeds: [0, 1, 2]\nsettings: {max_steps: 50}\nmethods: [vanilla, crawd]\n"
                      "quick: {seeds: [0], max_steps: 2, eval_options: {ppl: {batch_size: 2}}}\n")
    spec = CompareCommand.load(None, {"config": config, "quick": True}).experiment()
    assert spec.name == "tiny" and spec.seeds == [0] and spec.train_settings().max_steps == 2
    assert spec.eval_options == {"ppl": {"batch_size": 2}}
    assert [(r.method, r.seed) for r in spec.runs()] == [("vanilla", 0), ("crawd", 0)]
    spec = CompareCommand.load(None, {"config": config, "seeds": "1,2"}).experiment()
    assert spec.seeds == [1, 2] and spec.train_settings().max_steps == 50
    config.write_text("settings: {max_step: 2}\n")
    with pytest.raises(ValueError, match="unknown key 'max_step' in settings of .*; did you mean 'max_steps'"):
        ExperimentSpec.load(config)
    assert COMPARE_KEYS >= {"name", "model", "methods", "settings", "quick", "crawd", "tradeoff"}


def test_each_command_has_exactly_its_settings_fields_as_options():
    commands = typer.main.get_command(app).commands
    for name, settings, extra in [("train", TrainCommand, {"config"}), ("eval", EvalCommand, {"config"}),
                                  ("compare", CompareCommand, set()), ("bench", BenchCommand, {"config"})]:
        fields = {f.name for f, _ in settings.options()}
        assert {p.name for p in commands[name].params} == fields | extra, name
    top_k = next(p for p in commands["train"].params if p.name == "top_k")
    assert top_k.opts == ["--top-k"] and "(default: 0.4)" in top_k.help
