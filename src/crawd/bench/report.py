"""The benchmark's figures as plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _mb(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_bench(result: dict[str, Any]) -> str:
    """A plain-text report of :func:`run_bench`'s result (also fine inside a rich console)."""
    s, mach, ver = result["settings"], result["machine"], result["versions"]
    out = [
        "crawd bench: CrAWD / vanilla LoRA, interleaved runs",
        f"machine : {mach['processor']}, {mach['cpu_count']} CPUs, {mach['torch_threads']} torch threads"
        + (f", GPU {mach['gpu']}" if "gpu" in mach else "")
        + (f", load average {mach['load_average']}" if "load_average" in mach else ""),
        "versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        (f"setting : {s['model']} ({s['base_parameters'] / 1e6:.1f}M params), {s['device']} {s['dtype']}, "
        f"batch {s['batch']} x {s['seq_len']} tokens"
        + (f" (up to {100 * s['padding']:.0f}% padding per row)" if s.get("padding") else "")
        + f", reference m = {s['ref_len']}, "
        f"{s['warmup']} warm-up + {s['repeats']} timed rounds ({s.get('timer', 'wall')} clock); generation {s['gen_tokens']} tokens x "
        f"{s['gen_repeats']} rounds (batch {s['gen_batch']}, prompt {s['gen_prompt_len']})"),
        "",
        _table(["ratio", "head", "min", "median", "max", "target", "met"],
               [[r["name"], r["head"], f"{r['min']:.3f}", f"{r['median']:.3f}", f"{r['max']:.3f}", r["target"],
                 {True: "yes", False: "NO", None: "(report)"}[r["met"]]] for r in result["ratios"]]),
        "  (median = ratio of the medians; min / max over the per-round ratios)",
        "",
        _table(["train step (s)", "min", "median", "max"],
               [[k, f"{v['min']:.3f}", f"{v['median']:.3f}", f"{v['max']:.3f}"] for k, v in result["train"].items()]),
    ]
    if result.get("generate"):
        out += ["", _table(["generation (tokens/s)", "min", "median", "max"],
                           [[k, f"{v['min']:.1f}", f"{v['median']:.1f}", f"{v['max']:.1f}"]
                            for k, v in result["generate"].items()])]
    if result.get("memory"):
        rows = []
        for k, v in result["memory"].items():
            rows.append([k, _mb(v["peak_rss"]), _mb(v["peak_rss"] - v["rss_after_imports"]),
                         _mb(v["cuda_peak_allocated"]) if "cuda_peak_allocated" in v else "-"])
        method = next(iter(result["memory"].values()))["method"]
        out += ["", _table(["peak memory", "RSS", "RSS - libraries", "CUDA allocated"], rows),
                f"  (fresh process per variant; RSS peak = {method})"]
    p = result["parameters"]
    rows = [[k, f"{v['lora']:,}", f"{v['block']:,}", f"{v['head']:,}", f"{v['new']:,}", _pct(v["new_share"])]
            for k, v in p["variants"].items()]
    out += ["", _table(["new parameters", "LoRA", "block", "head", "new (block+head)", "share of base"], rows),
            f"  (base model {p['base']:,} parameters; paper: under {_pct(p['paper_share'])})"]
    tables = {s["model"]: p["ffn_table"], **p["reference_shapes"]}
    rows = []
    for name, t in tables.items():
        for r in t["ffn_widths"]:
            rows.append([name, r["ffn_dim"], f"{r['block']:,}", _pct(r["block_share"]), _pct(r["residual_share"]),
                         _pct(r["concat_share"])])
    out += ["", _table(["FFN width", "ffn_dim", "block params", "block", "+ residual P", "+ concat head"], rows)]
    for name, t in tables.items():
        mx = t["max_ffn_for_1pct"]
        out.append(f"  {name}: largest ffn_dim within 1%: block alone {mx['block_only'] or 'none'}, "
                   f"residual {mx['residual'] or 'none'}, concat {mx['concat'] or 'none'}")
    out.append(f"\n(bench took {result['seconds']:.0f} s)")
    return "\n".join(out)


def format_scaling(result: dict[str, Any]) -> str:
    """The (n, m) grid of step-time ratios as a table: rows n, columns m."""
    cells = result["cells"]
    ns = sorted({c["seq_len"] for c in cells})
    ms = sorted({c["ref_len"] for c in cells})
    get = {(c["seq_len"], c["ref_len"]): c["ratio"] for c in cells}
    rows = [[f"n = {n}"] + [f"{get[n, m]['median']:.3f} [{get[n, m]['min']:.2f}-{get[n, m]['max']:.2f}]"
                            if (n, m) in get else "-" for m in ms] for n in ns]
    s = result["settings"]
    return (f"step-time ratio {s['head']} / vanilla, {s['model']}, batch {s['batch']}, {s['device']} {s['dtype']}, "
            f"{s['repeats']} rounds, {s.get('timer', 'wall')} clock (median [min-max of per-round ratios])\n"
            + _table(["", *[f"m = {m}" for m in ms]], rows))
