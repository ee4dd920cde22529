"""Adapters leave crawd: peft folders, merged transformers models, crawd folders found by the recorded base name."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import batch, make_tokenizer, save_tiny_model
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import crawd
from crawd import models
from crawd.cli import main
from crawd.config import CrawdConfig
from crawd.export import MERGE_REFUSALS, export
from crawd.methods import get_method
from crawd.models import load_model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return save_tiny_model(tmp_path / "tiny")


def trained(model: crawd.AdaptedModel, seed: int = 1) -> crawd.AdaptedModel:
    """Random trained-looking weights (LoRA's B starts at zero, so a fresh adapter changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(tokenizer)).logits


# the user's own PeftModel.from_pretrained: peft reads transformers' renamed is_gradient_checkpointing
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["vanilla", "debias_tuning"])
def test_lora_methods_export_as_peft_and_merge_with_the_same_logits(method, folder, tmp_path):
    base, tokenizer = load_model(str(folder))
    model = trained(get_method(method).build(base, tokenizer, CrawdConfig()))
    model.save_pretrained(str(tmp_path / "adapter"))
    expected = logits(model, tokenizer)

    line = export(tmp_path / "adapter", tmp_path / "peft")
    assert "PeftModel.from_pretrained" in line
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder) and config["task_type"] == "CAUSAL_LM"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "peft").eval()
    assert torch.allclose(logits(peft_model, tokenizer), expected, atol=1e-6)

    export(tmp_path / "adapter", tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()  # a plain transformers folder
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (merged_logits := logits(merged, tokenizer)).shape == expected.shape
    assert torch.allclose(merged_logits, expected, atol=1e-5)
    assert not torch.allclose(merged_logits, logits(AutoModelForCausalLM.from_pretrained(folder), tokenizer), atol=1e-3)


@pytest.mark.parametrize("mode", ["cross", "self"])
def test_crawd_exports_as_a_crawd_folder_and_refuses_to_merge(mode, folder, tmp_path):
    base, tokenizer = load_model(str(folder))
    model = trained(crawd.wrap(base, tokenizer, num_heads=4, mode=mode))
    model.save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(ValueError) as refusal:
        export(tmp_path / "adapter", tmp_path / "merged", merge=True)
    assert str(refusal.value) == MERGE_REFUSALS[mode] and not (tmp_path / "merged").exists()
    assert "AutoCrawdModel.from_pretrained" in export(tmp_path / "adapter", tmp_path / "out")
    loaded = crawd.AutoCrawdModel.from_pretrained(tmp_path / "out")  # the base found by its recorded name
    assert type(loaded) is type(model)
    assert torch.equal(logits(loaded, loaded.tokenizer), logits(model, tokenizer))


@pytest.mark.parametrize("fields,piece", [({"neutralize": 1.0}, "gendered-word readout"),
                                          ({"erase": True}, "concept eraser")])
def test_lora_adapters_with_run_time_pieces_export_as_crawd_folders_only(fields, piece, folder, tmp_path):
    base, tokenizer = load_model(str(folder))
    model = trained(get_method("vanilla").build(base, tokenizer, CrawdConfig(**fields)))
    model.save_pretrained(str(tmp_path / "adapter"))
    for merge in (False, True):
        with pytest.raises(ValueError, match=f"also holds a {piece} .*, which neither a peft LoRA folder nor a merged "
                                             "model holds; load it with crawd.AutoCrawdModel.from_pretrained"):
            export(tmp_path / "adapter", tmp_path / "out", merge=merge)
    assert not (tmp_path / "out").exists()
    loaded = crawd.AutoCrawdModel.from_pretrained(tmp_path / "adapter")
    assert torch.equal(logits(loaded, loaded.tokenizer), logits(model, tokenizer))


def test_classification_and_full_fine_tuning_export_merged_only(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    base, tokenizer = load_model(str(folder), "classification", num_labels=3)
    model = trained(crawd.adapt(base, tokenizer))
    model.save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="also trains the classifier head.*export it with --merge"):
        export(tmp_path / "adapter", tmp_path / "peft")
    export(tmp_path / "adapter", tmp_path / "merged", merge=True)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(logits(merged, tokenizer), logits(model, tokenizer), atol=1e-5)
    full = crawd.adapt(load_model(str(folder), "classification", num_labels=3)[0], tokenizer,
                       CrawdConfig(lora=False))
    full.save_pretrained(str(tmp_path / "full"))
    with pytest.raises(ValueError, match="fully fine-tuned weights, not LoRA"):
        export(tmp_path / "full", tmp_path / "full-peft")


def test_export_never_overwrites(folder, tmp_path):
    base, tokenizer = load_model(str(folder))
    crawd.adapt(base, tokenizer).save_pretrained(str(tmp_path / "adapter"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        export(tmp_path / "adapter", tmp_path / "taken", merge=True)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


# ---- the base model's name (issue 17.4) ---------------------------------------------------------


def test_an_alias_is_recorded_as_the_alias_not_its_cache_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "_smollm2_folder", lambda target: folder)  # the alias resolves to a cache folder
    base, tokenizer = load_model("smollm2-135m")
    model = trained(crawd.wrap(base, tokenizer, num_heads=4))
    model.save_pretrained(str(tmp_path / "adapter"))
    meta = json.loads((tmp_path / "adapter" / "crawd_config.json").read_text())
    assert meta["base"]["name_or_path"] == "smollm2-135m"
    loaded = crawd.AutoCrawdModel.from_pretrained(tmp_path / "adapter")
    assert torch.equal(logits(loaded, tokenizer), logits(model, tokenizer))


def test_the_cli_records_the_model_as_given(folder, tmp_path, monkeypatch, capsys):
    from conftest import write_csv

    monkeypatch.chdir(folder.parent)
    write_csv(Path("data.csv"))
    main(["train", "--model", folder.name, "--data", "data.csv", "--out", "run", "--max-steps", "1",
          "--batch-size", "4", "--seq-len", "16", "--method", "vanilla"])
    meta = json.loads(Path("run/adapter/crawd_config.json").read_text())
    assert meta["base"]["name_or_path"] == folder.name  # as typed, not /tmp/.../tiny
    monkeypatch.chdir(tmp_path.parent)  # elsewhere the relative name is not found: say so, and what to do
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # "tiny" is then tried as a hub id
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    with pytest.raises(FileNotFoundError, match="the base model recorded in adapter .*pass base="):
        crawd.AutoCrawdModel.from_pretrained(tmp_path / "run" / "adapter")
    moved = crawd.AutoCrawdModel.from_pretrained(tmp_path / "run" / "adapter", base=str(folder))
    assert moved.task == "lm"


def test_export_cli_says_why_crawd_cannot_merge(folder, tmp_path, capsys):
    base, tokenizer = load_model(str(folder))
    crawd.wrap(base, tokenizer, num_heads=4).save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"), "--merge"])
    output = capsys.readouterr().out
    assert exit_info.value.code == 2 and "error: cannot merge a crawd adapter (mode cross)" in output
    main(["export", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"), "--base", "my-org/tiny"])
    assert json.loads((tmp_path / "out" / "crawd_config.json").read_text())["base"]["name_or_path"] == "my-org/tiny"
    assert "written:" in capsys.readouterr().out
