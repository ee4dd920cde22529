"""Float32 linear layers on x86 CPUs through oneDNN, the library PyTorch ships for its CPU kernels.

PyTorch computes a float32 ``F.linear`` on a CPU with MKL's GEMM, which runs its AVX2 code on AMD
processors: on an AMD EPYC core with AVX-512 it reaches about 95 GFLOP/s, half of what the same core
gives through oneDNN (about 210 GFLOP/s; ``benchmarks/cpu_linear.py``). On an AMD core without AVX-512
both run AVX2 code, and on an Intel core with AVX-512 MKL runs its AVX-512 code; there MKL's is the faster
(an AVX2 EPYC and an AVX-512 Xeon: a LoRA step 0.87x as fast through oneDNN), so the default route,
``auto``, takes oneDNN only on an AMD processor (``/proc/cpuinfo``) for which PyTorch reports AVX-512. Inside
:func:`onednn_linear`, every float32 CPU ``F.linear`` (every ``nn.Linear``: the base model's
layers, LoRA's, the heads) and its backward run as oneDNN matrix products instead: the same float32
arithmetic in another summation order, so results agree with PyTorch's to float rounding (a
relative 1e-6 on a layer's output), not to the last bit.

crawd's training (:func:`crawd.train.train`) and scoring (:func:`crawd.metrics.run_benchmarks`) run
inside it. ``CRAWD_CPU_LINEAR`` in the environment chooses: ``auto`` (the default: oneDNN on AMD x86-64
processors with AVX-512), ``onednn`` (on every x86-64 processor), ``torch`` (PyTorch's own kernels).
oneDNN applies only when this PyTorch has it; elsewhere nothing changes.
Half precision, autocast, GPUs, tensor subclasses (DTensor, fake tensors) and ``torch.compile``
keep PyTorch's path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

ENV_VAR = "CRAWD_CPU_LINEAR"
CHOICES = ("auto", "onednn", "torch")
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (T, k) @ weight (out, k)^T + bias, one oneDNN matrix product (transposed views need no copy)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    """``F.linear`` whose forward and backward products are oneDNN's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows if weight.requires_grad else None, weight)
        ctx.input_shape = x.shape
        return _product(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        d_input = _product(grad, weight.t()).view(ctx.input_shape) if ctx.needs_input_grad[0] else None
        d_weight = _product(grad.t(), rows.t()) if ctx.needs_input_grad[1] else None
        d_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return d_input, d_weight, d_bias


def _routable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (x.dim() >= 2 and weight.dim() == 2 and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and all(type(t) in _PLAIN and t.dtype == torch.float32 and t.device.type == "cpu"
                    and t.layout == torch.strided for t in tensors))


class _OneDnnLinearMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            if _routable(x, weight, bias):
                return _Linear.apply(x, weight, bias)
        return func(*args, **kwargs)


def backend() -> str:
    """The CPU linear backend asked for: ``$CRAWD_CPU_LINEAR``, default ``"auto"``."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r} is not a CPU linear backend; set it to one of {', '.join(CHOICES)}")
    return choice


@functools.cache
def available() -> bool:
    """Whether this machine is x86-64 and this PyTorch has oneDNN's linear product."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor as Linux names it (``AuthenticAMD``, ``GenuineIntel``), or "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def chosen() -> bool:
    """Whether :func:`onednn_linear` routes through oneDNN: asked for (``onednn``, or ``auto`` on an AMD CPU
    for which PyTorch reports AVX-512: where MKL runs its AVX2 code on AVX-512 units) and :func:`available`."""
    choice = backend()
    wide = (choice == "auto" and cpu_vendor() == "AuthenticAMD"
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
    return (choice == "onednn" or wide) and available()


@contextlib.contextmanager
def onednn_linear() -> Iterator[bool]:
    """Run float32 CPU linear layers (forward and backward) through oneDNN inside the block, as the module
    doc says; yields whether they are (False where not :func:`chosen`). Nested blocks are one."""
    global _depth
    if _depth or not chosen():
        yield bool(_depth)
        return
    _depth += 1
    try:
        with _OneDnnLinearMode():
            yield True
    finally:
        _depth -= 1


_depth = 0  # open onednn_linear() blocks
