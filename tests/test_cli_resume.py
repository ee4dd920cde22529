"""Long CLI jobs shared between calls: `compare --seeds` and `eval` resume from what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compare_config, save_tiny_model, write_csv
from conftest import run_cli as run


def test_seeds_split_across_calls_end_in_one_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = compare_config(tmp_path, "vanilla")
    out = tmp_path / "out"
    assert run(["compare", "--config", config, "--out", out, "--seeds", "1"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["vanilla-seed1"]
    seed1 = (out / "runs" / "vanilla-seed1" / "run.json").read_text()
    assert run(["compare", "--config", config, "--out", out]) == 0  # trains seed 0, reads seed 1
    assert (out / "runs" / "vanilla-seed1" / "run.json").read_text() == seed1
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["seed"] for r in results["runs"]) == [0, 1] and (out / "report.md").is_file()
    capsys.readouterr()
    assert run(["compare", "--config", config, "--out", out, "--seeds", "0,x"]) == 2
    assert "error: --seeds takes comma-separated integers, got '0,x'" in capsys.readouterr().out


def test_eval_keeps_each_models_scores_and_reads_them_on_a_rerun(tmp_path: Path, monkeypatch, capsys) -> None:
    import crawd
    from conftest import make_tokenizer, tiny_model

    model, data = save_tiny_model(tmp_path / "model"), write_csv(tmp_path / "data.csv")
    adapter = tmp_path / "tuned"
    crawd.wrap(tiny_model("llama"), make_tokenizer(), num_heads=4).save_pretrained(str(adapter))
    out = tmp_path / "out"
    argv = ["eval", "--model", model, "--adapter", adapter, "--benchmarks", "ppl", "--data", data, "--out", out,
            "--eval-options", '{"ppl": {"batch_size": 2}}']
    assert run(argv) == 0
    first = {p.name: p.read_text() for p in (out / "runs").iterdir()}
    assert sorted(first) == ["base.json", "tuned.json"]
    assert json.loads(first["base.json"])["request"]["eval_options"] == {"ppl": {"batch_size": 2}}

    import crawd.experiment

    def no_scoring(*args, **kwargs):
        raise AssertionError("a model scored earlier was scored again")

    monkeypatch.setattr(crawd.experiment, "evaluate", no_scoring)
    assert run(argv) == 0
    assert {p.name: p.read_text() for p in (out / "runs").iterdir()} == first
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2
    capsys.readouterr()
    assert run([*argv[:-1], '{"ppl": 2}']) == 2
    assert "error: --eval-options must map benchmark names to option objects" in capsys.readouterr().out


def test_compare_reruns_what_was_asked_differently(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, data = save_tiny_model(tmp_path / "model"), write_csv(tmp_path / "data.csv")
    config = tmp_path / "tiny.yaml"

    def write_config(max_steps: int, benchmarks: str) -> None:
        config.write_text(f"name: tiny\nmodel: {model}\ntask: lm\ndata: {data}\nbenchmarks: [{benchmarks}]\n"
                          f"seeds: [0]\nsettings: {{max_steps: {max_steps}, batch_size: 4, seq_len: 16, save_steps: 1}}\n"
                          "crawd: {num_heads: 4}\nmethods: [vanilla]\n")

    out = tmp_path / "out"
    run_json = out / "runs" / "vanilla-seed0" / "run.json"
    write_config(1, "ppl")
    assert run(["compare", "--config", config, "--out", out]) == 0
    first = json.loads(run_json.read_text())
    assert first["train"]["steps"] == 1 and first["request"]["train"]["settings"]["max_steps"] == 1

    # only the benchmarks changed: the trained model is scored again, not trained again
    write_config(1, "ppl, gas")
    capsys.readouterr()
    assert run(["compare", "--config", config, "--out", out]) == 0
    assert "scored with other settings (benchmarks); scoring the trained model again" in capsys.readouterr().out
    second = json.loads(run_json.read_text())
    assert set(second["benchmarks"]) == {"ppl", "gas"} and second["train"] == first["train"]

    # a training setting changed: the old run is kept aside and the run trains again
    write_config(2, "ppl, gas")
    assert run(["compare", "--config", config, "--out", out]) == 0
    assert "was trained with other settings (settings.max_steps); moved to vanilla-seed0.replaced-1" in \
        " ".join(capsys.readouterr().out.split())
    assert json.loads(run_json.read_text())["train"]["steps"] == 2
    assert json.loads((out / "runs" / "vanilla-seed0.replaced-1" / "run.json").read_text()) == second


def test_a_run_from_before_a_config_field_was_added_is_reused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, data = save_tiny_model(tmp_path / "model"), write_csv(tmp_path / "data.csv")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"name: tiny\nmodel: {model}\ntask: lm\ndata: {data}\nbenchmarks: [ppl]\nseeds: [0]\n"
                      "settings: {max_steps: 1, batch_size: 4, seq_len: 16, save_steps: 1}\n"
                      "crawd: {num_heads: 4}\nmethods: [vanilla]\n")
    out = tmp_path / "out"
    assert run(["compare", "--config", config, "--out", out]) == 0
    run_json = out / "runs" / "vanilla-seed0" / "run.json"
    record = json.loads(run_json.read_text())
    del record["request"]["train"]["config"]["neutralize"]  # as written before the field existed
    run_json.write_text(json.dumps(record))
    capsys.readouterr()
    assert run(["compare", "--config", config, "--out", out]) == 0
    assert "finished earlier" in capsys.readouterr().out and not (out / "runs" / "vanilla-seed0.replaced-1").exists()


def test_untrained_base_is_scored_once_for_all_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = compare_config(tmp_path, "base")
    out = tmp_path / "out"
    assert run(["compare", "--config", config, "--out", out]) == 0
    assert "base (seed 1): not trained, so the scores of seed 0 hold; copied" in capsys.readouterr().out
    seed0, seed1 = (json.loads((out / "runs" / f"base-seed{s}" / "run.json").read_text()) for s in (0, 1))
    assert seed1["seed"] == 1 and seed1["request"]["train"]["seed"] == 1
    assert seed1["benchmarks"] == seed0["benchmarks"]
    assert run(["compare", "--config", config, "--out", out]) == 0  # a rerun reads both
    assert "finished earlier" in capsys.readouterr().out
