"""The models a benchmark compares: the base (loaded, or random weights), vanilla and CrAWD on copies of it."""

from __future__ import annotations

import copy
from typing import Any

import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from crawd.config import CrawdConfig
from crawd.methods.crawd import wrap
from crawd.methods.vanilla import adapt
from crawd.models import load_model
from crawd.sensitive import GROUPS

RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    # a few MB: the unit test
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 1024},
    # TinyLlama-1.1B's shape: 1.10e9 parameters
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                     "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096},
}
#: Shapes of well-known models for the parameter table (hidden size, vocabulary, total parameters).


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[str(dtype)]


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer for random-weights models: every built-in sensitive word is one token."""
    words = ["[PAD]", "[UNK]", "[EOS]", "he", "she"]
    for group in GROUPS.values():
        words += [w for w in group if w not in words]
    words = words[:vocab_size]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def load_base(model: str = "smollm2-135m", random_config: str | dict | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """The base causal LM and its tokenizer, on ``device`` in ``dtype``, in eval mode.

    A random-weights model is built and initialised directly on ``device`` (a 1.1B model takes
    about a minute to initialise on a CPU, well under a second on a GPU)."""
    if random_config is not None:
        fields = RANDOM_CONFIGS[random_config] if isinstance(random_config, str) else dict(random_config)
        cfg = LlamaConfig(**fields, bos_token_id=2, eos_token_id=2, pad_token_id=0)
        torch.manual_seed(seed)
        with torch.device(device):
            base = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        tok = word_tokenizer(cfg.vocab_size)
    else:
        base, tok = load_model(model, task="lm")
    return base.to(device=device, dtype=dtype).eval(), tok


def build_variant(base, tokenizer, kind: str, ref_ids: torch.Tensor | None = None, seed: int = 0,
                  compile_block: bool = False, **config: Any):
    """``vanilla`` (:func:`crawd.adapt`), a CrAWD head type, ``self`` (mode="self") or ``debias`` (the
    debias preset, its loss terms included), on a deep copy of ``base``. ``ref_ids`` replaces the
    reference of the head types; ``self`` and ``debias`` keep the config's words."""
    torch.manual_seed(seed)  # the same LoRA and block initialisation every time
    base = copy.deepcopy(base)
    if kind == "vanilla":
        model = adapt(base, tokenizer, CrawdConfig(**config))
    elif kind == "self":
        model = wrap(base, tokenizer, CrawdConfig(mode="self", **config))
    elif kind == "debias":
        model = wrap(base, tokenizer, CrawdConfig.preset("debias", "lm", **config))
    else:
        model = wrap(base, tokenizer, CrawdConfig(head=kind, **config))
        if ref_ids is not None:
            set_reference(model, ref_ids)
        if compile_block:
            model.block.compile()
    return model


def set_reference(model, ref_ids: torch.Tensor) -> None:
    """Replace the reference sequence b of a CrawdModel (1, m) -- for cost measurements only."""
    model.reference_ids = ref_ids.to(model.reference_ids.device).view(1, -1)
    model._reference_cache = None


def random_reference(m: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(3, vocab_size, (1, m), generator=gen)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
