"""Shared fixtures: tiny random models of each supported architecture and a word tokenizer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from crawd.cli import main

torch.set_num_threads(2)

WORDS = (
    "[PAD] [UNK] [EOS] the a he she his her him hers man woman nurse engineer doctor teacher said that is "
    "was and works as in of to with studied . , they gay straight young old black white rich poor muslim "
    "christian jewish fat thin disabled abled asian european american mexican client after meeting "
    "Mary Sarah James John Smith person someone"
).split()

DECODER_CONFIGS = {
    "llama": LlamaConfig,
    "gpt2": GPT2Config,
    "qwen2": Qwen2Config,
    "mistral": MistralConfig,
    "gemma": GemmaConfig,
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over :data:`WORDS` (pad 0, unk 1, eos 2)."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def tiny_config(arch: str, **extra):
    vocab = len(WORDS)
    if arch == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=vocab, n_positions=64,
                          bos_token_id=2, eos_token_id=2, pad_token_id=0, **extra)
    if arch == "bert":
        return BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                          vocab_size=vocab, max_position_embeddings=64, pad_token_id=0, **extra)
    cls = DECODER_CONFIGS[arch]
    kwargs = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=vocab, max_position_embeddings=64,
                  bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if arch == "gemma":
        kwargs["head_dim"] = 8
    return cls(**kwargs, **extra)


def tiny_model(arch: str, task: str = "lm", seed: int = 0, num_labels: int = 3):
    torch.manual_seed(seed)
    if task == "lm":
        return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, num_labels=num_labels)).eval()


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def batch(tokenizer, texts=("the nurse said that she", "he works as a doctor in the"), side="right"):
    tokenizer.padding_side = side
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def shared_data_dir() -> Path | None:
    """The real datasets: $CRAWD_DATA_DIR, else ../shared/data beside the checkout."""
    candidate = Path(os.environ.get("CRAWD_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    return candidate if candidate.is_dir() else None


def save_tiny_model(folder: Path, arch: str = "llama") -> Path:
    """A tiny random model and the word tokenizer saved as a local transformers folder."""
    tiny_model(arch).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


CSV_TEXTS = (
    "the nurse said that she works with the client",
    "the engineer said that he studied in the city",
    "he works as a doctor and she works as a teacher",
    "the teacher said that they studied with her",
    "she was a doctor",
    "he is a nurse and his client is a woman",
)


def write_csv(path: Path, rows: int = 48) -> Path:
    """A small CSV with the common columns (text, label, gender); texts of varied length."""
    import pandas as pd

    texts = [CSV_TEXTS[i % len(CSV_TEXTS)] for i in range(rows)]
    labels = ["nurse" if i % 2 else "engineer" for i in range(rows)]
    genders = ["female" if "she" in t or "her" in t else "male" for t in texts]
    pd.DataFrame({"text": texts, "label": labels, "gender": genders}).to_csv(path, index=False)
    return path


def run_cli(argv: list[object]) -> int:
    """``crawd`` with ``argv`` in this process: its exit code."""
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def compare_config(tmp_path: Path, methods: str, seeds: str = "0, 1", max_steps: int = 1) -> Path:
    """A `crawd compare` config: the tiny model, a CSV, ppl, ``seeds``, ``max_steps`` of ``methods``."""
    model, data = save_tiny_model(tmp_path / "model"), write_csv(tmp_path / "data.csv")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"name: tiny\nmodel: {model}\ntask: lm\ndata: {data}\nbenchmarks: [ppl]\nseeds: [{seeds}]\n"
                      f"settings: {{max_steps: {max_steps}, batch_size: 4, seq_len: 16, save_steps: 1}}\n"
                      f"crawd: {{num_heads: 4}}\nmethods: [{methods}]\n")
    return config
