"""New parameters of CrAWD: counted on a built model, and by formula for any shape (FFN widths within 1%)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The paper's bound on the new parameters, as a share of the base model.
PAPER_PARAMETER_SHARE = 0.01
#: Shapes of well-known models for the parameter table (hidden size, vocabulary, total parameters).
REFERENCE_SHAPES = {
    "smollm2-135m": (576, 49152, 134_515_008),
    "llama-2-7b": (4096, 32000, 6_738_415_616),
}


def block_parameters(d: int, ffn_dim: int | None = None) -> int:
    """Weights of the CrAWD block: W_Q, W_K, W_V, W_O (+ biases), two LayerNorms, the FFN."""
    f = ffn_dim or d
    return 4 * (d * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)


def head_parameters(d: int, out: int, head: str, bias: bool = False) -> int:
    """New head weights: the concat head's Linear(2d -> out), or the residual head's P (d x d)."""
    return 2 * d * out + (out if bias else 0) if head == "concat" else d * d


def max_ffn_for_share(d: int, out: int, total: int, head: str, share: float = PAPER_PARAMETER_SHARE,
                      count_head: bool = True) -> int:
    """Largest FFN width whose new parameters stay within ``share`` of ``total`` (0: none does)."""
    budget = share * total - (head_parameters(d, out, head) if count_head else 0) - block_parameters(d, 1) + (2 * d + 1)
    # block_parameters(d, f) = block_parameters(d, 1) - (2d + 1) + f * (2d + 1)
    return max(0, int(budget // (2 * d + 1)))


def parameter_table(d: int, out: int, total: int, ffn_dims: Sequence[int] | None = None) -> dict[str, Any]:
    ffn_dims = list(ffn_dims or (1, d // 4, d, 4 * d))
    rows = []
    for f in ffn_dims:
        block = block_parameters(d, f)
        rows.append({"ffn_dim": f, "block": block, "block_share": block / total,
                     "residual_share": (block + head_parameters(d, out, "residual")) / total,
                     "concat_share": (block + head_parameters(d, out, "concat")) / total})
    return {
        "hidden_size": d, "out_features": out, "base_parameters": total, "ffn_widths": rows,
        "max_ffn_for_1pct": {
            "block_only": max_ffn_for_share(d, out, total, "residual", count_head=False),
            "residual": max_ffn_for_share(d, out, total, "residual"),
            "concat": max_ffn_for_share(d, out, total, "concat"),
        },
    }


def count_parameters(model, base_total: int) -> dict[str, Any]:
    """The trainable weights of a built variant, split into LoRA, block and head."""
    groups = {"lora": 0, "block": 0, "head": 0, "other": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = ("block" if name.startswith("block.") else "head" if name.startswith(("concat_head.", "cross_proj."))
               else "lora" if "lora_" in name else "other")
        groups[key] += p.numel()
    new = groups["block"] + groups["head"]
    return {**groups, "new": new, "new_share": new / base_total, "trainable": sum(groups.values())}
