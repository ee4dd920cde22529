"""Float32 CPU linear layers through oneDNN (crawd.onednn): the same values and gradients as PyTorch's own
kernels to float rounding, on the layouts a model passes; and only where it applies."""

import pytest
import torch
import torch.nn.functional as F

import crawd
from conftest import tiny_model
from crawd import onednn
from crawd.onednn import ENV_VAR, available, backend, chosen, onednn_linear

pytestmark = pytest.mark.skipif(not available(), reason="oneDNN's linear product needs an x86-64 CPU and a PyTorch built with oneDNN")


@pytest.fixture(autouse=True)
def route_through_onednn(monkeypatch):
    """Asked for outright, so that the route is checked on every x86-64 CPU, not only where ``auto`` takes it."""
    monkeypatch.setenv(ENV_VAR, "onednn")


def _grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    out = fn()
    out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape) / out.numel())
    return out.detach(), [None if t.grad is None else t.grad.clone() for t in tensors]


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "2d", "no_bias"])
def test_values_and_gradients_match_torch(layout):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 9, requires_grad=True)
    w = torch.randn(5, 9, requires_grad=True)
    b = None if layout == "no_bias" else torch.randn(5, requires_grad=True)
    view = {"transposed": lambda: x.transpose(0, 1), "sliced": lambda: x[:, ::2], "2d": lambda: x[0]}.get(layout, lambda: x)
    leaves = [t for t in (x, w, b) if t is not None]
    expected, expected_grads = _grads(lambda: F.linear(view(), w, b), *leaves)
    with onednn_linear() as routed:
        got, got_grads = _grads(lambda: F.linear(view(), w, b), *leaves)
        assert routed and F.linear(view(), w, b).grad_fn.name() == "_LinearBackward"
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_hand_checked_product_and_frozen_weight():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # frozen, as a LoRA base layer's
    with onednn_linear():
        y = torch.nn.functional.linear(x, w, torch.tensor([0.5, 0.0, -1.0]))
        y.sum().backward()
    assert y.tolist() == [[1.5, 3.0, 3.0], [3.5, 7.0, 7.0]]
    assert x.grad.tolist() == [[2.0, 3.0], [2.0, 3.0]]  # the column sums of w


@pytest.mark.parametrize("method", ["vanilla", "crawd"])
def test_a_training_step_matches_torch_to_float_rounding(tokenizer, method):
    """LoRA's layers (frozen base weights), and the CrAWD block and concat head (trained weights)."""
    torch.manual_seed(0)
    base = tiny_model("llama")
    model = crawd.adapt(base, tokenizer) if method == "vanilla" else crawd.wrap(base, tokenizer, crawd.CrawdConfig(num_heads=4))
    model.train()
    for p in model.parameters():  # LoRA's B and the concat head's H_cross half start at 0: move off it
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.02)
    ids = torch.randint(4, 40, (2, 7))
    torch.manual_seed(1)  # the same dropout masks in both passes
    reference = model(input_ids=ids, labels=ids)
    reference.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with onednn_linear():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
    torch.testing.assert_close(out.logits, reference.logits, rtol=1e-4, atol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-5)


def test_left_alone_off_cpu_float32_and_when_asked(monkeypatch):
    x, w = torch.randn(3, 4, requires_grad=True), torch.randn(2, 4)
    with onednn_linear():
        assert F.linear(x.double(), w.double()).grad_fn.name() != "_LinearBackward"
        assert F.linear(x.bfloat16(), w.bfloat16()).grad_fn.name() != "_LinearBackward"
        assert F.linear(x[0], w).grad_fn.name() != "_LinearBackward"  # 1-d input
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert F.linear(x, w).dtype == torch.bfloat16
    monkeypatch.setenv(ENV_VAR, "torch")
    with onednn_linear() as routed:
        assert not routed and F.linear(x, w).grad_fn.name() != "_LinearBackward"
    monkeypatch.setenv(ENV_VAR, "mkl")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='mkl' is not a CPU linear backend; set it to one of auto, onednn, torch"):
        backend()


@pytest.mark.parametrize("vendor, capability, routed", [
    ("AuthenticAMD", "AVX512", True), ("AuthenticAMD", "AVX2", False), ("AuthenticAMD", "DEFAULT", False),
    ("GenuineIntel", "AVX512", False), ("", "AVX512", False)])
def test_auto_takes_onednn_only_on_an_amd_cpu_with_avx512(monkeypatch, vendor, capability, routed):
    monkeypatch.delenv(ENV_VAR)
    assert backend() == "auto"
    monkeypatch.setattr(onednn, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert chosen() is routed
    with onednn_linear() as got:
        assert got is routed
