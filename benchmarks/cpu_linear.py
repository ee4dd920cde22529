"""Float32 linear layers on this CPU: PyTorch's own kernel (MKL) against oneDNN (crawd.onednn), one thread.

    OMP_NUM_THREADS=1 python benchmarks/cpu_linear.py            # SmolLM2-135M's shapes, 8 x 48 tokens

Prints GFLOP/s of the forward product and of both backward products (input and weight gradients) for
each linear shape of the model at a training batch, and for the vocabulary head; then one LoRA training
step of the model (forward and backward) under each, with the largest difference of their logits and
losses, so that "the same model to float rounding" is measured too, and which one ``CRAWD_CPU_LINEAR=auto`` (the
default) takes here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from crawd import adapt
from crawd.models import load_model
from crawd.onednn import ENV_VAR, _product, available, backend, chosen, cpu_vendor, onednn_linear


def rate(fn, flops: float, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=384, help="rows of each product (batch x sequence length)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    if not available():
        raise SystemExit("oneDNN's linear product needs an x86-64 CPU and a PyTorch built with oneDNN")
    auto = chosen() if backend() == "auto" else None
    os.environ[ENV_VAR] = "onednn"  # both are measured, whichever the default would take
    torch.manual_seed(0)
    base, tokenizer = load_model(args.model, "lm")
    shapes = sorted({tuple(m.weight.shape) for m in base.modules() if isinstance(m, torch.nn.Linear)})
    t = args.tokens
    print(f"{args.model}, {t} rows, one thread: GFLOP/s, PyTorch (MKL) / oneDNN")
    print("| weight (out x in) | forward | input grad | weight grad |\n|---|---|---|---|")
    for out_f, in_f in shapes:
        x, w, g = torch.randn(t, in_f), torch.randn(out_f, in_f), torch.randn(t, out_f)
        flops = 2 * t * in_f * out_f
        cells = []
        for torch_fn, onednn_fn in ((lambda: F.linear(x, w), lambda: _product(x, w)),
                                    (lambda: g @ w, lambda: _product(g, w.t())),
                                    (lambda: g.t() @ x, lambda: _product(g.t(), x.t()))):
            cells.append(f"{rate(torch_fn, flops, args.repeats):.0f} / {rate(onednn_fn, flops, args.repeats):.0f}")
        print(f"| {out_f} x {in_f} | " + " | ".join(cells) + " |")

    model = adapt(base, tokenizer).train()
    ids = torch.randint(100, tokenizer.vocab_size, (8, t // 8))
    steps, outputs = {}, {}
    for name in ("torch", "onednn"):
        times = []
        for _ in range(3):
            torch.manual_seed(1)
            start = time.process_time()
            with onednn_linear() if name == "onednn" else torch.enable_grad():
                out = model(input_ids=ids, labels=ids)
                out.loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.process_time() - start)
        steps[name], outputs[name] = statistics.median(times), out
    print(f"\nLoRA forward + backward, 8 x {t // 8}: PyTorch {steps['torch']:.3f} s, oneDNN {steps['onednn']:.3f} s "
          f"({steps['torch'] / steps['onednn']:.2f}x); largest logit difference "
          f"{(outputs['torch'].logits - outputs['onednn'].logits).abs().max():.2e}, loss difference "
          f"{abs(outputs['torch'].loss.item() - outputs['onednn'].loss.item()):.2e}")
    if auto is not None:
        print(f"CRAWD_CPU_LINEAR=auto takes {'oneDNN' if auto else 'PyTorch'} on this CPU "
              f"({cpu_vendor() or 'vendor unknown'}, {torch.backends.cpu.get_cpu_capability()})")


if __name__ == "__main__":
    main()
