"""Training: the Trainer path works, checkpoints are atomic, a killed run resumes to the same adapter."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tokenizer, tiny_model
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from safetensors.torch import load_file
from transformers import TrainerCallback, set_seed

import crawd
from crawd.train import TrainSettings, train

SENTENCES = [
    "the nurse said that she works with the client",
    "the engineer said that he studied in the city",
    "he works as a doctor and she works as a teacher",
    "the teacher said that they studied with her",
] * 8


def lm_data() -> DatasetDict:
    return DatasetDict(train=Dataset.from_dict({"text": SENTENCES}))


def build(seed: int = 0) -> crawd.CrawdModel:
    set_seed(seed)
    return crawd.wrap(tiny_model("llama"), make_tokenizer(), num_heads=4)


class KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


SETTINGS = dict(max_steps=6, batch_size=4, save_steps=3, logging_steps=2, learning_rate=1e-2, progress=False, seq_len=16)


def test_killed_run_resumes_to_the_same_adapter(tmp_path, monkeypatch):
    reference = train(build(), make_tokenizer(), lm_data(), tmp_path / "full", TrainSettings(**SETTINGS))
    assert reference.steps == 6 and reference.resumed_from is None

    from crawd import train as train_module

    original = train_module.CrawdTrainer.__init__

    def with_kill(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(KillAt(4))

    monkeypatch.setattr(train_module.CrawdTrainer, "__init__", with_kill)
    with pytest.raises(KeyboardInterrupt):
        train(build(), make_tokenizer(), lm_data(), tmp_path / "killed", TrainSettings(**SETTINGS))
    monkeypatch.setattr(train_module.CrawdTrainer, "__init__", original)
    assert (tmp_path / "killed" / "checkpoint-3").is_dir()
    assert not (tmp_path / "killed" / "adapter").exists()

    resumed = train(build(seed=123), make_tokenizer(), lm_data(), tmp_path / "killed", TrainSettings(**SETTINGS))
    assert resumed.resumed_from.endswith("checkpoint-3") and resumed.steps == 6
    a = load_file(str(tmp_path / "full" / "adapter" / "crawd_adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "crawd_adapter.safetensors"))
    assert a.keys() == b.keys()
    start = build()
    moved = max((a[k] - start.trainable_state_dict()[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training changed the weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_a_finished_run_is_not_trained_again(tmp_path):
    first = train(build(), make_tokenizer(), lm_data(), tmp_path / "run", TrainSettings(**SETTINGS))
    saved = load_file(str(tmp_path / "run" / "adapter" / "crawd_adapter.safetensors"))
    model = build(seed=123)
    again = train(model, make_tokenizer(), lm_data(), tmp_path / "run", TrainSettings(**SETTINGS))
    assert again.steps == first.steps == 6 and again.resumed_from.endswith("checkpoint-6")
    assert again.final_loss == first.final_loss and again.loss_history == first.loss_history
    assert not (tmp_path / "run" / "checkpoint-7").exists()
    assert load_file(str(tmp_path / "run" / "adapter" / "crawd_adapter.safetensors")).keys() == saved.keys()
    weights = model.trainable_state_dict()
    assert max((weights[k] - saved[k]).abs().max().item() for k in saved) == 0  # the model holds the trained weights


def test_half_written_checkpoint_is_ignored(tmp_path):
    out = tmp_path / "run"
    (out / ".staging" / "checkpoint-5").mkdir(parents=True)
    (out / ".staging" / "checkpoint-5" / "crawd_adapter.safetensors").write_bytes(b"partial")
    result = train(build(), make_tokenizer(), lm_data(), out, TrainSettings(**{**SETTINGS, "max_steps": 2}))
    assert result.resumed_from is None and result.steps == 2
    assert not (out / ".staging").exists()
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["crawd_adapter.safetensors", "crawd_config.json"]


def test_nan_loss_stops_with_the_step(tmp_path):
    model = build()
    with torch.no_grad():
        model.block.q_proj.weight.fill_(float("nan"))
        model.concat_head.weight[:, 32:].fill_(1.0)
    with pytest.raises(FloatingPointError, match="at step 1"):
        train(model, make_tokenizer(), lm_data(), tmp_path / "nan", TrainSettings(**SETTINGS))


def test_classification_training_and_unwritable_folder(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["nurse", "engineer"])})
    data = DatasetDict(train=Dataset.from_dict(
        {"text": ["the nurse said that she", "the engineer said that he"] * 8, "label": [0, 1] * 8}, features=features))
    set_seed(0)
    model = crawd.wrap(tiny_model("bert", "classification", num_labels=2), make_tokenizer(), num_heads=4)
    result = train(model, make_tokenizer(), data, tmp_path / "cls", TrainSettings(**{**SETTINGS, "learning_rate": 1e-3}))
    assert result.steps == 6 and result.loss_history
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to output folder"):
        train(model, make_tokenizer(), data, blocker / "sub", TrainSettings(**SETTINGS))


def test_a_folder_of_another_method_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    set_seed(0)
    vanilla = crawd.adapt(tiny_model("llama"), make_tokenizer())
    train(vanilla, make_tokenizer(), lm_data(), out, TrainSettings(**{**SETTINGS, "max_steps": 3}))
    assert json.loads((out / "crawd_run.json").read_text()) == {"method": "vanilla"}
    with pytest.raises(ValueError, match=r"--out holds a vanilla run and this is a crawd \(mode cross, head concat\) "):
        train(build(), make_tokenizer(), lm_data(), out, TrainSettings(**SETTINGS))
    (out / "crawd_run.json").unlink()  # a folder from before the run file: its adapters tell crawd from vanilla
    with pytest.raises(ValueError, match="--out holds a vanilla run"):
        train(build(), make_tokenizer(), lm_data(), out, TrainSettings(**SETTINGS))
    resumed = train(crawd.adapt(tiny_model("llama"), make_tokenizer()), make_tokenizer(), lm_data(), out,
                    TrainSettings(**SETTINGS), method="cda")  # same kind of adapter: accepted, then recorded
    assert resumed.resumed_from is not None and json.loads((out / "crawd_run.json").read_text())["method"] == "cda"


@pytest.mark.parametrize("arch,task,head", [("llama", "lm", "concat"), ("bert", "classification", "residual")])
def test_each_training_step_runs_the_backbone_once(tmp_path, arch, task, head):
    """H_b shares the batch's backbone call (CrawdModel.encode_with_reference): one call per step."""
    texts = SENTENCES[:16]
    data = Dataset.from_dict({"text": texts} if task == "lm" else {"text": texts, "label": [0, 1] * 8})
    set_seed(0)
    model = crawd.wrap(tiny_model(arch, task, num_labels=2), make_tokenizer(), num_heads=4, head=head)
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    result = train(model, make_tokenizer(), DatasetDict(train=data), tmp_path / "run",
                   TrainSettings(**{**SETTINGS, "learning_rate": 1e-3}))
    assert result.steps == 6 and len(calls) == 6
