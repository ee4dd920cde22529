"""Faults of a real run: SIGKILL of `python -m crawd train` mid-checkpoint-write, NaN after a checkpoint.

The killed run is a real subprocess. ``CRAWD_TEST_CHECKPOINT_PAUSE="4:120"`` makes it
sleep after checkpoint-4 is fully staged in ``.staging/`` and before it is renamed
into place, so the SIGKILL lands deterministically inside a checkpoint write, after
checkpoint-2 is complete. The rerun of the same command must ignore the half-written
checkpoint-4, resume from checkpoint-2 and end with the adapter of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, save_tiny_model, tiny_model, write_csv
from safetensors.torch import load_file
from transformers import TrainerCallback, set_seed

import crawd
from crawd.cli import main
from crawd.storage import read_adapter
from crawd.train import TrainSettings, train


def command(model: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "5",
            "--batch-size", "4", "--save-steps", "2", "--seq-len", "16", "--lr", "1e-2"]


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "crawd_adapter.safetensors")), load_file(str(b / "crawd_adapter.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_sigkill_during_a_checkpoint_write_resumes_to_the_same_adapter(tmp_path):
    model, data = save_tiny_model(tmp_path / "model"), write_csv(tmp_path / "data.csv")
    killed = tmp_path / "killed"
    env = {**os.environ, "CRAWD_TEST_CHECKPOINT_PAUSE": "4:120", "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crawd", *command(model, data, killed)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        staged = killed / ".staging" / "checkpoint-4" / "trainer_state.json"  # the last file the Trainer writes
        deadline = time.monotonic() + 150
        while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert alive and staged.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()
    assert not (killed / "adapter").exists()

    # the same command again (in-process here: the same code path, no start-up cost)
    main(command(model, data, killed))
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["steps"] == 5 and summary["resumed_from"].endswith("checkpoint-2")
    assert not (killed / ".staging").exists()

    main(command(model, data, tmp_path / "full"))  # uninterrupted
    assert json.loads((tmp_path / "full" / "train_summary.json").read_text())["resumed_from"] is None
    diff = max_diff(killed / "adapter", tmp_path / "full" / "adapter")
    print(f"\n[figure] max |adapter(killed + resumed) - adapter(uninterrupted)| = {diff:.3g}")
    assert diff < 1e-5


class PoisonAt(TrainerCallback):
    """Turn every trained weight into NaN at the end of ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.fill_(float("nan"))


def test_nan_after_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    from crawd import train as train_module

    original = train_module.CrawdTrainer.__init__

    def with_poison(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(PoisonAt(4))

    monkeypatch.setattr(train_module.CrawdTrainer, "__init__", with_poison)
    set_seed(0)
    model = crawd.wrap(tiny_model("llama"), make_tokenizer(), num_heads=4)
    from datasets import Dataset

    data = Dataset.from_dict({"text": ["the nurse said that she works with the client"] * 32})
    out = tmp_path / "nan"
    settings = TrainSettings(max_steps=8, batch_size=4, save_steps=3, seq_len=16, progress=False)
    with pytest.raises(FloatingPointError) as err:
        train(model, make_tokenizer(), data, out, settings)
    message = str(err.value)
    print(f"\n[message] error: {message}")
    assert message.startswith("the loss became nan at step 5; stopped (last good checkpoint: ")
    assert message.endswith(f"{out / 'checkpoint-3'}); lower the learning rate or check the data")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (out / "adapter").exists()
    _, tensors = read_adapter(out / "checkpoint-3" / "adapter")
    assert all(torch.isfinite(t).all() for t in tensors.values())
