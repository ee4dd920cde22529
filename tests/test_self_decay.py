"""mode="self": the base's own attention to the top-K% sensitive-associated tokens decays."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_config, tiny_model
from transformers import AutoModelForCausalLM

import crawd
from crawd import CrawdConfig
from crawd.block import topk_mask
from crawd.methods.crawd_self import SelfDecayModel, default_layers

ARCHS = ("llama", "gpt2", "qwen2", "mistral", "gemma")


def self_model(base, tokenizer, **fields) -> SelfDecayModel:
    return SelfDecayModel(base, tokenizer, CrawdConfig(mode="self", **fields))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def one_layer(arch: str = "llama", attn: str = "eager", seed: int = 0):
    config = tiny_config(arch)
    config.num_hidden_layers = 1
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def perturb_lora(model, scale: float = 0.5, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale / p.shape[-1] ** 0.5)


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_lambda_one_reproduces_base(arch, lora, tokenizer):
    enc = batch(tokenizer, side="left")
    with torch.no_grad():
        expected = tiny_model(arch)(**enc).logits
        exact = self_model(tiny_model(arch), tokenizer, decay=1.0, lora=lora).eval()
        assert max_diff(exact(**enc).logits, expected) == 0  # no bias at all: the base's own path
        # the bias path itself, with log(lambda) ~ -1e-7: float masks through SDPA, same numbers
        near = self_model(tiny_model(arch), tokenizer, decay=1 - 1e-7, lora=lora).eval()
        assert near.decay_active
        assert max_diff(near(**enc).logits, expected) < 1e-5
        if lora:  # and the decay does change a model whose lambda < 1 (the check is not vacuous)
            decayed = self_model(tiny_model(arch), tokenizer, decay=0.2, lora=lora).eval()
            assert max_diff(decayed(**enc).logits, expected) > 1e-4


def expected_probs(base_probs: torch.Tensor, selected: torch.Tensor, decay: float) -> torch.Tensor:
    """Multiply the weights to the selected keys by lambda, renormalise each row."""
    factor = torch.where(selected[:, None], torch.tensor(decay), torch.tensor(1.0))
    scaled = base_probs * factor
    return scaled / scaled.sum(-1, keepdim=True)


@pytest.mark.parametrize("decay", [0.3, 0.0])
@pytest.mark.parametrize("side", ["left", "right"])
def test_attention_to_selected_keys_is_scaled_and_renormalised(tokenizer, side, decay):
    enc = batch(tokenizer, texts=("the nurse said that she was", "he works as a doctor in the"), side=side)
    with torch.no_grad():
        base_probs = one_layer()(**enc, output_attentions=True).attentions[0]
        model = self_model(one_layer(), tokenizer, decay=decay, top_k=0.4).eval()
        assert model.decayed_layers == (0,) and model.hf.config._attn_implementation == "crawd_eager"
        probs = model.encode(enc["input_ids"], enc["attention_mask"], output_attentions=True).attentions[0]
    selected = model.decayed_keys(enc["input_ids"], enc["attention_mask"], per_query=True)
    assert selected.any()
    assert not selected.diagonal(dim1=-2, dim2=-1).any()  # a token's attention to itself is kept
    assert max_diff(probs, expected_probs(base_probs, selected, decay)) < 1e-6
    real = enc["attention_mask"].bool()[:, None, :, None].expand_as(probs)
    assert torch.allclose(probs.sum(-1)[real[..., 0]], torch.ones(()), atol=1e-6)
    assert not probs.isnan().any()
    if decay == 0:
        assert (probs[selected[:, None].expand_as(probs)] == 0).all()


def test_sdpa_path_equals_eager_path(tokenizer):
    enc = batch(tokenizer, side="left")
    with torch.no_grad():
        eager = self_model(one_layer(attn="eager"), tokenizer, decay=0.2)(**enc).logits
        sdpa_model = self_model(one_layer(attn="sdpa"), tokenizer, decay=0.2)
        assert sdpa_model.hf.config._attn_implementation == "crawd_sdpa"
        real = enc["attention_mask"].bool()  # (fully masked padding rows: eager uniform, SDPA zero)
        assert max_diff(sdpa_model(**enc).logits[real], eager[real]) < 1e-5


def test_sdpa_kernel_is_still_called(tokenizer, monkeypatch):
    model = self_model(tiny_model("llama"), tokenizer, decay=0.2, self_layers=(1,)).eval()
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append(attn_mask)
        return original(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    enc = batch(tokenizer, side="left")
    with torch.no_grad():
        model(**enc)
    assert len(calls) == 2  # one SDPA call per layer, both through torch's kernel
    assert calls[0].dtype == torch.bool  # layer 0: the base's own mask, untouched
    assert calls[1].dtype == torch.float32  # layer 1: the same mask plus log(lambda) on selected keys
    bias = calls[1][calls[0]]
    assert torch.allclose(bias.unique(), torch.tensor([math.log(0.2), 0.0]))


def test_only_configured_layers_are_affected(tokenizer):
    enc = batch(tokenizer, side="left")
    kw = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    with torch.no_grad():
        base = tiny_model("llama").model(**kw).hidden_states
        late = self_model(tiny_model("llama"), tokenizer, decay=0.2, self_layers=(1,)).eval().encode(**kw)
        early = self_model(tiny_model("llama"), tokenizer, decay=0.2, self_layers=(-2,)).eval().encode(**kw)
    real = enc["attention_mask"].bool()
    assert torch.equal(late.hidden_states[1], base[1])  # layer 0 untouched
    assert max_diff(late.hidden_states[2][real], base[2][real]) > 1e-4  # layer 1 decayed
    assert max_diff(early.hidden_states[1][real], base[1][real]) > 1e-4  # -2 means layer 0
    assert default_layers(30) == tuple(range(20, 30)) and default_layers(2) == (1,) and default_layers(1) == (0,)
    assert self_model(tiny_model("llama"), tokenizer).decayed_layers == (1,)
    with pytest.raises(ValueError, match="out of range"):
        self_model(tiny_model("llama"), tokenizer, self_layers=(2,))


def test_selection_is_topk_with_ceil_ties_and_prefix_cutoff(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, top_k=0.4)
    ids = tokenizer(["the nurse said that she"], return_tensors="pt")["input_ids"]
    scores = torch.tensor([0.9, 0.5, 0.9, 0.1, 0.3])
    with torch.no_grad():
        model.score_table[ids[0]] = scores
    # whole example: N = 5, k = ceil(0.4 * 5) = 2, tau = 0.9 -> positions 0 and 2
    assert model.decayed_keys(ids).tolist() == [[True, False, True, False, False]]
    model.config.top_k = 0.2  # k = 1, tau = 0.9: the tie at 0.9 is decayed too
    assert model.decayed_keys(ids).tolist() == [[True, False, True, False, False]]
    model.config.top_k = 0.5  # k = ceil(2.5) = 3, tau = 0.5
    assert model.decayed_keys(ids).tolist() == [[True, True, True, False, False]]
    model.config.top_k = 0.4
    per_query = model.decayed_keys(ids, per_query=True)[0]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    # query 0 sees {0}: k = 1 but it is itself; query 1 sees {0,1}: k = 1 -> 0;
    # query 2 sees {0,1,2}: k = 2, tau = 0.9 -> 0 (2 is itself); queries 3, 4: k = 2 -> 0, 2
    expected[1, 0] = expected[2, 0] = expected[3, 0] = expected[3, 2] = expected[4, 0] = expected[4, 2] = True
    assert torch.equal(per_query, expected)
    # the same rule as crawd.block.topk_mask on each prefix
    for q in range(5):
        prefix = topk_mask(scores[None, None, : q + 1], torch.ones(1, 1, q + 1, dtype=torch.bool), 0.4)[0, 0]
        prefix[q] = False
        assert torch.equal(per_query[q, : q + 1], prefix) and not per_query[q, q + 1:].any()


def test_padding_and_special_tokens_are_never_selected(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, top_k=1.0)
    enc = batch(tokenizer, texts=("the nurse [EOS] she", "he works as a doctor in the"), side="left")
    selected = model.decayed_keys(enc["input_ids"], enc["attention_mask"])
    special = enc["input_ids"] == tokenizer.eos_token_id
    assert not selected[~enc["attention_mask"].bool() | special].any()
    assert selected[enc["attention_mask"].bool() & ~special].all()  # top_k = 1: every candidate
    scores = model.association_scores(enc["input_ids"], enc["attention_mask"])
    assert torch.isinf(scores[~enc["attention_mask"].bool() | special]).all()


def test_scores_are_the_fixed_cross_attention_over_the_reference(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, sensitive_words=("he", "she"))
    ids = tokenizer(["the nurse he she"], return_tensors="pt")["input_ids"]
    beta = model.scoring_attention(ids)
    assert beta.shape == (1, 1, 4, 2) and torch.allclose(beta.sum(-1), torch.ones(1, 1, 4))
    assert torch.allclose(model.association_scores(ids), beta.max(-1).values[:, 0])
    assert (model.association_scores(ids)[0, 2:] > 0.95).all()  # a reference token leans to itself
    beta2, marked = model.cross_attention(ids)
    rows = model.decayed_keys(ids)[:, None, :, None]
    assert torch.equal(beta2, beta) and torch.allclose(marked, torch.where(rows, beta * 0.2, beta))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_generation_equals_full_recomputation(arch, tokenizer):
    model = self_model(tiny_model(arch), tokenizer, decay=0.1, top_k=0.4).eval()
    perturb_lora(model)
    enc = batch(tokenizer, texts=("the nurse said that", "he works as a doctor in the"), side="left")
    cached = model.generate(**enc, max_new_tokens=8, eos_token_id=-1)
    full = model.generate(**enc, max_new_tokens=8, eos_token_id=-1, use_cache=False)
    assert cached.shape == (2, enc["input_ids"].shape[1] + 8)
    assert torch.equal(cached, full)
    # logits too: step by step, the cached forward matches the full forward of the same ids
    assert_step_logits_match(model, tokenizer, enc, cached, arch)



def assert_step_logits_match(model, tokenizer, enc, cached, arch):
    """Cached step-by-step logits equal the full pass's, and differ from the plain base model's."""
    with torch.no_grad():
        mask = torch.ones_like(cached)
        n0 = enc["input_ids"].shape[1]
        mask[:, :n0] = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        full_logits = model(cached, mask, position_ids=positions).logits
        out = model(cached[:, :n0], mask[:, :n0], position_ids=positions[:, :n0], use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(n0, cached.shape[1] - 1):
            out = model(cached[:, t: t + 1], mask[:, : t + 1], position_ids=positions[:, t: t + 1],
                        cache=out.cache, use_cache=True)
            steps.append(out.logits[:, -1])
        assert max_diff(torch.stack(steps, 1), full_logits[:, n0 - 1: -1]) < 1e-4
        base_logits = crawd.adapt(tiny_model(arch), tokenizer).eval()(cached, mask, position_ids=positions).logits
        assert max_diff(full_logits, base_logits) > 1e-3

def test_foreign_cache_is_refused(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer).eval()
    enc = batch(tokenizer, side="left")
    with torch.no_grad():
        cache = model.base(**enc, use_cache=True).cache
        with pytest.raises(ValueError, match="KV cache returned by this model"):
            model(enc["input_ids"][:, :1], torch.ones(2, enc["input_ids"].shape[1] + 1, dtype=torch.long),
                  cache=cache, use_cache=True)


def backward_on_a_batch(model, tokenizer) -> set[str]:
    """One training loss backward on the standard batch; returns the trainable parameter names."""
    perturb_lora(model)
    enc = batch(tokenizer)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    model(**enc, labels=labels).loss.backward()
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_gradients_reach_lora_only(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, decay=0.2).train()
    trainable = backward_on_a_batch(model, tokenizer)
    assert trainable and all("lora_" in n for n in trainable)
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_decay_off_at_inference_when_asked(tokenizer):
    enc = batch(tokenizer)
    with torch.no_grad():
        expected = tiny_model("llama")(**enc).logits
        model = self_model(tiny_model("llama"), tokenizer, decay=0.2, decay_at_inference=False)
        assert max_diff(model.eval()(**enc).logits, expected) == 0
        assert model.train().decay_active


def test_encoder_classifier_uses_one_cutoff_per_example(tokenizer):
    enc = batch(tokenizer)
    enc.pop("token_type_ids", None)
    with torch.no_grad():
        expected = tiny_model("bert", "classification")(**enc).logits
        model = self_model(tiny_model("bert", "classification"), tokenizer, decay=0.0, self_layers=(0, 1)).eval()
        assert max_diff(model(**enc).logits, expected) > 1e-6
    per_query = model.decayed_keys(enc["input_ids"], enc["attention_mask"], per_query=True)
    whole = model.decayed_keys(enc["input_ids"], enc["attention_mask"])
    eye = torch.eye(per_query.shape[-1], dtype=torch.bool)
    assert torch.equal(per_query, whole[:, None, :].expand_as(per_query) & ~eye)


def test_unsupported_settings_are_refused(tokenizer):
    base = tiny_model("llama")
    base.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="needs attn_implementation 'sdpa' or 'eager'"):
        self_model(base, tokenizer)
    with pytest.raises(ValueError, match="unknown mode='self' option"):
        self_model(tiny_model("llama"), tokenizer, extra={"self_temprature": 0.1})
    with pytest.raises(ValueError, match="needs mode='self'"):
        SelfDecayModel(tiny_model("llama"), tokenizer, CrawdConfig())


def test_wrap_dispatches_mode_self(tokenizer):
    assert isinstance(crawd.wrap(tiny_model("llama"), tokenizer, mode="self"), SelfDecayModel)


def test_save_load_roundtrip(tmp_path, tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, decay=0.2).eval()
    perturb_lora(model)
    model.save_pretrained(tmp_path)
    loaded = crawd.load(tiny_model("llama"), tokenizer, tmp_path).eval()
    assert isinstance(loaded, SelfDecayModel)
    enc = batch(tokenizer, side="left")
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model(**enc).logits)


# ---- contextual scoring (self_scoring="contextual") --------------------------------------------
CTX = {"self_scoring": "contextual"}


def test_contextual_scores_match_a_hand_computation(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, extra=dict(CTX, self_temperature=0.5)).eval()
    assert model.score_layer == 0 and model.decayed_layers == (1,)
    layers = model.hf.config.num_hidden_layers

    def states(text_ids):
        ids = torch.tensor([text_ids])
        return model.hf.model(ids, output_hidden_states=True).hidden_states[model.score_layer][0]

    with torch.no_grad():
        start = [tokenizer.eos_token_id]
        plain = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        from crawd.methods.crawd_self import CALIBRATION_TEXT
        calib = states((start + plain(CALIBRATION_TEXT))[:64])[2:]  # cut to the tiny model's 64 positions
        mean, std = calib.mean(0), calib.std(0)
        refs = torch.stack([states(start + plain("The person said that") + plain(w))[-1] for w in ("he", "she")])
        refs = (refs - mean) / std
        refs = F.normalize(refs - refs.mean(0), dim=-1)
        ids = tokenizer(["the nurse said that she was"], return_tensors="pt")["input_ids"]
        z = F.normalize((states(ids[0].tolist()) - mean) / std, dim=-1)
        beta = (z @ refs.T / 0.5).softmax(-1)
        assert torch.allclose(model.scoring_attention(ids)[0, 0], beta, atol=1e-5)
        assert torch.allclose(model.association_scores(ids)[0], beta.max(-1).values, atol=1e-5)
    assert layers == 2


def test_contextual_forward_decays_exactly_the_inspected_keys(tokenizer):
    enc = batch(tokenizer, texts=("the nurse said that she was", "he works as a doctor in the"), side="right")
    with torch.no_grad():
        base_probs = one_layer()(**enc, output_attentions=True).attentions[0]
        model = self_model(one_layer(), tokenizer, decay=0.3, top_k=0.4, extra=CTX).eval()
        assert model.score_layer == 0
        probs = model.encode(enc["input_ids"], enc["attention_mask"], output_attentions=True).attentions[0]
    selected = model.decayed_keys(enc["input_ids"], enc["attention_mask"], per_query=True)
    assert selected.any()
    assert max_diff(probs, expected_probs(base_probs, selected, 0.3)) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_contextual_lambda_one_reproduces_base(arch, tokenizer):
    enc = batch(tokenizer, side="left")
    with torch.no_grad():
        expected = tiny_model(arch)(**enc).logits
        exact = self_model(tiny_model(arch), tokenizer, decay=1.0, extra=CTX).eval()
        assert max_diff(exact(**enc).logits, expected) == 0
        near = self_model(tiny_model(arch), tokenizer, decay=1 - 1e-7, extra=CTX).eval()
        assert max_diff(near(**enc).logits, expected) < 1e-5
        decayed = self_model(tiny_model(arch), tokenizer, decay=0.2, extra=CTX).eval()
        assert max_diff(decayed(**enc).logits, expected) > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_contextual_cached_generation_equals_full_recomputation(arch, tokenizer):
    model = self_model(tiny_model(arch), tokenizer, decay=0.1, top_k=0.4, extra=CTX).eval()
    perturb_lora(model)
    enc = batch(tokenizer, texts=("the nurse said that", "he works as a doctor in the"), side="left")
    cached = model.generate(**enc, max_new_tokens=8, eos_token_id=-1)
    full = model.generate(**enc, max_new_tokens=8, eos_token_id=-1, use_cache=False)
    assert torch.equal(cached, full)
    assert_step_logits_match(model, tokenizer, enc, cached, arch)


def test_contextual_gradients_reach_lora_only(tokenizer):
    model = self_model(tiny_model("llama"), tokenizer, decay=0.2, extra=CTX).train()
    trainable = backward_on_a_batch(model, tokenizer)
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)


def test_contextual_options_are_checked(tokenizer):
    with pytest.raises(ValueError, match="self_score_layer must be"):
        self_model(tiny_model("llama"), tokenizer, extra=dict(CTX, self_score_layer=2))
    with pytest.raises(ValueError, match="self_scoring must be"):
        self_model(tiny_model("llama"), tokenizer, extra={"self_scoring": "hidden"})
    model = self_model(tiny_model("llama"), tokenizer, self_layers=(0, 1), extra=CTX)
    assert model.score_layer == 0
