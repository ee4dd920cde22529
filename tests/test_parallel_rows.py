"""Runs of an experiment in worker processes (`crawd compare --jobs N`): the same figures whatever N is, and a
killed parallel comparison resumes to the figures of an uninterrupted one."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compare_config as write_config
from conftest import run_cli as run
from rich.console import Console
from safetensors.torch import load_file

from crawd.pool import Board, run_tasks
from crawd.settings import CompareCommand, DemoCommand


def timed_compare(config: Path, out: Path, jobs: int) -> float:
    start = time.perf_counter()
    assert run(["compare", "--config", config, "--out", out, "--jobs", jobs]) == 0
    return time.perf_counter() - start


def figures(out: Path) -> dict[tuple[str, int], dict]:
    """Each run of ``out/results.json`` by (name, seed): metrics, benchmark results, final loss, adapter tensors."""
    rows = {}
    for record in json.loads((out / "results.json").read_text())["runs"]:
        adapter = out / "runs" / f"{record['method']}-seed{record['seed']}" / "adapter" / "crawd_adapter.safetensors"
        rows[record["method"], record["seed"]] = {
            "metrics": record["metrics"], "loss": record.get("train", {}).get("final_loss"),
            "results": {name: entry["result"] for name, entry in record["benchmarks"].items()},
            "adapter": load_file(str(adapter)) if adapter.is_file() else {}}
    return rows


def assert_same_figures(a: Path, b: Path, loss: bool = True) -> None:
    """Every figure of each run in ``a`` equal to the last digit to the same run's in ``b``, the adapters' tensors
    too. ``loss=False`` leaves out the final training loss, which a resumed run averages over the steps taken after
    the resume only (the Trainer's training_loss)."""
    rows_a, rows_b = figures(a), figures(b)
    assert rows_a and set(rows_a) <= set(rows_b)
    for run, x in rows_a.items():
        y = rows_b[run]
        assert (x["metrics"], x["results"]) == (y["metrics"], y["results"]), run
        assert not loss or x["loss"] == y["loss"], run
        assert x["adapter"].keys() == y["adapter"].keys()
        assert all(torch.equal(x["adapter"][k], y["adapter"][k]) for k in x["adapter"]), run


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The comparison of the tests, uninterrupted with --jobs 1: its config, its folder, its wall time."""
    tmp_path = tmp_path_factory.mktemp("sequential")
    config = write_config(tmp_path, "base, vanilla, crawd", "0, 1", max_steps=2)
    return config, tmp_path / "one", timed_compare(config, tmp_path / "one", jobs=1)


def test_the_figures_do_not_depend_on_the_number_of_workers(sequential, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    config, one, seconds = sequential
    capsys.readouterr()
    two = timed_compare(config, tmp_path / "two", jobs=2)
    assert_same_figures(one, tmp_path / "two")
    for out in (one, tmp_path / "two"):  # in the order of the runs, not the order they ended in (base last)
        runs = [(r["method"], r["seed"]) for r in json.loads((out / "results.json").read_text())["runs"]]
        assert runs == [("base", 0), ("vanilla", 0), ("crawd", 0), ("base", 1), ("vanilla", 1), ("crawd", 1)]
    assert "base (seed 1): not trained, so the scores of seed 0 hold; copied" in capsys.readouterr().out
    base = [json.loads((tmp_path / "two" / "runs" / f"base-seed{s}" / "run.json").read_text()) for s in (0, 1)]
    assert base[1]["eval_seconds"] == base[0]["eval_seconds"] and base[1]["seed"] == 1  # a copy: scored once
    capsys.readouterr()
    assert run(["compare", "--config", config, "--out", tmp_path / "two", "--jobs", "1"]) == 0  # --jobs: no request
    assert capsys.readouterr().out.count("finished earlier") == 6
    print(f"\n[figure] 6 tiny runs (base scored once): {seconds:.1f} s with --jobs 1, {two:.1f} s with --jobs 2")


def test_jobs_must_be_positive(capsys: pytest.CaptureFixture) -> None:
    for command in (CompareCommand, DemoCommand):
        with pytest.raises(ValueError, match="--jobs must be at least 1, got 0"):
            command.load(None, {"config": "tiny.yaml", "jobs": 0} if command is CompareCommand else {"jobs": 0})
    assert run(["demo", "--jobs", "-1"]) == 2
    assert "error: --jobs must be at least 1, got -1" in capsys.readouterr().out


def test_an_error_in_a_worker_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, "vanilla", "0", max_steps=1)
    config.write_text(config.read_text().replace("batch_size: 4", "batch_size: 4, long_docs: nope"))
    assert run(["compare", "--config", config, "--out", tmp_path / "out", "--jobs", "1"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "error: long_docs must be one of chunk, pack, truncate, got 'nope'"


def test_ctrl_c_says_how_to_resume(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("crawd.experiment.run_experiment", interrupted)
    assert run(["compare", "--config", write_config(tmp_path, "vanilla", "0", max_steps=1)]) == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().out


def die(common: None, task: None) -> None:
    """A worker's work: it is killed, as by the kernel when memory runs out."""
    time.sleep(1)  # the worker's "start" message reaches the parent first
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_task_is_an_error_naming_its_task() -> None:
    with pytest.raises(RuntimeError, match=r"a worker process ended with exit code -9 \(run a\)"):
        run_tasks(die, None, {0: None}, 1, lambda index, result: None, Board(["run a"]), Console(file=io.StringIO()))


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes in /proc")
def test_a_killed_parallel_compare_resumes_to_the_uninterrupted_figures(sequential, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Seed 0 of the comparison with three workers. ``CRAWD_TEST_CHECKPOINT_PAUSE`` holds the trained runs at
    their last checkpoint (checkpoint 1 complete) while base, untrained, finishes; then the parent alone is
    killed: its workers must exit too. The same command again reads base back and resumes the others."""
    config, one, _ = sequential
    killed = tmp_path / "killed"
    env = {**os.environ, "CRAWD_TEST_CHECKPOINT_PAUSE": "2:120"}
    argv = ["compare", "--config", str(config), "--out", str(killed), "--seeds", "0", "--jobs", "3"]
    # base done and in results.json (the parent writes it just after run.json), the others paused
    awaited = [killed / "runs" / "base-seed0" / "run.json", killed / "results.json"] + [
        killed / "runs" / f"{m}-seed0" / ".staging" / "checkpoint-2" / "trainer_state.json"
        for m in ("vanilla", "crawd")]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crawd", *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not all(p.exists() for p in awaited) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = children(proc.pid) if proc.poll() is None else []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert workers and all(p.exists() for p in awaited), (tmp_path / "killed.log").read_text()[-3000:]
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived their killed parent"
    base = (killed / "runs" / "base-seed0" / "run.json").read_text()
    assert [r["method"] for r in json.loads((killed / "results.json").read_text())["runs"]] == ["base"]

    capsys.readouterr()
    assert run(argv) == 0  # the same command again, in-process
    out = capsys.readouterr().out
    assert "base (seed 0): finished earlier" in out
    assert (killed / "runs" / "base-seed0" / "run.json").read_text() == base
    for method in ("vanilla", "crawd"):
        summary = json.loads((killed / "runs" / f"{method}-seed0" / "train_summary.json").read_text())
        assert summary["steps"] == 2 and summary["resumed_from"].endswith("checkpoint-1")
    assert_same_figures(killed, one, loss=False)
