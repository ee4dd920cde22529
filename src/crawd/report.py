"""Results on screen and on disk: a rich table, results.json, report.md and PNG plots.

A result set is ``{"runs": [{"method", "seed", "metrics": {name: estimate}}, ...], ...}``
where an estimate is ``{"value", "ci_low", "ci_high"}`` (or a bare number). Runs of the
same method with several seeds are summarised as mean and standard deviation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from crawd.storage import write_json

#: Direction of each headline metric: +1 higher is better, -1 lower is better; 0: closest to the ideal.
DIRECTION = {"gas": -1, "ppl": -1, "pronoun_skew": -1, "accuracy": 1, "rms_tpr_gap": -1, "max_tpr_gap": -1,
             "fpr_gap": -1, "icat": 1, "lms": 1, "weat": -1, "gas_ext": -1,
             "misgender_acc_f": 1, "misgender_acc_m": 1, "misgender_logprob_f": 1, "misgender_logprob_m": 1,
             "first_name_acc_f": 1, "first_name_acc_m": 1, "first_name_logprob_f": 1, "first_name_logprob_m": 1,
             "heldout_skew": -1, "heldout_gas": -1, "heldout_gas_ext": -1, "ppl_heldout_names": -1,
             "ppl_names_ratio": -1}


def value(estimate: Any) -> float:
    return float(estimate["value"] if isinstance(estimate, dict) else estimate)


def metric_names(runs: list[dict]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [n for n in run["metrics"] if n not in names]
    return names


def summarise(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and metric: mean, std over seeds, the mean CI, and the number of seeds."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method, method_runs in grouped.items():
        summary[method] = {}
        for name in metric_names(method_runs):
            estimates = [r["metrics"][name] for r in method_runs if r["metrics"].get(name) is not None]
            values = np.array([value(e) for e in estimates], dtype=float)
            if not len(values):
                continue
            lows = [e.get("ci_low") for e in estimates if isinstance(e, dict) and e.get("ci_low") is not None]
            highs = [e.get("ci_high") for e in estimates if isinstance(e, dict) and e.get("ci_high") is not None]
            summary[method][name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "ci_low": float(np.mean(lows)) if lows else math.nan,
                "ci_high": float(np.mean(highs)) if highs else math.nan,
                "seeds": int(len(values)),
            }
    return summary


def significance(runs: list[dict], reference: str = "vanilla") -> dict[str, dict[str, dict[str, Any]]]:
    """Each method's difference from ``reference`` per metric, and whether it is significant.

    With 2+ seeds on both sides: Welch's t-test over seeds (``test`` "welch"). With one run each
    (``crawd eval``: several models on the same items): a z-test on the two bootstrap 95%
    intervals, each read as +-1.96 standard errors (``test`` "ci-z"); it treats the two estimates
    as independent, which is conservative for models scored on the same items. Returns
    ``{method: {metric: {"difference", "p_value", "test"}}}``.
    """
    from scipy.stats import norm, ttest_ind

    grouped: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    if reference not in grouped:
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, method_runs in grouped.items():
        if method == reference:
            continue
        out[method] = {}
        for name in metric_names(method_runs):
            a = [r["metrics"][name] for r in method_runs if r["metrics"].get(name) is not None]
            b = [r["metrics"][name] for r in grouped[reference] if r["metrics"].get(name) is not None]
            if len(a) >= 2 and len(b) >= 2:
                a_values, b_values = [value(e) for e in a], [value(e) for e in b]
                out[method][name] = {"difference": float(np.mean(a_values) - np.mean(b_values)), "test": "welch",
                                     "p_value": float(ttest_ind(a_values, b_values, equal_var=False).pvalue)}
            elif len(a) == 1 and len(b) == 1 and all(_has_ci(e) for e in (a[0], b[0])):
                difference = value(a[0]) - value(b[0])
                se = math.hypot(*((e["ci_high"] - e["ci_low"]) / (2 * 1.959964) for e in (a[0], b[0])))
                if se > 0:
                    p_value = 2 * norm.sf(abs(difference) / se)
                else:  # two exact figures (e.g. accuracy 1.0 and 1.0): equal or not
                    p_value = 1.0 if difference == 0 else 0.0
                out[method][name] = {"difference": float(difference), "p_value": float(p_value), "test": "ci-z"}
    return out


def _has_ci(estimate: Any) -> bool:
    return isinstance(estimate, dict) and estimate.get("ci_low") is not None and estimate.get("ci_high") is not None


TEST_NAMES = {"welch": "mean over seeds; Welch's t-test p-value",
              "ci-z": "one run each; z-test on the two bootstrap 95% intervals, conservative for shared items"}


def significance_markdown(table: dict[str, dict[str, dict[str, Any]]], reference: str = "vanilla") -> str:
    names = sorted({n for row in table.values() for n in row})
    if not names:
        return ""
    tests = sorted({cell["test"] for row in table.values() for cell in row.values()})
    lines = [f"Difference from {reference} ({'; '.join(TEST_NAMES[t] for t in tests)}; * p < 0.05):", "",
             "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for method, row in table.items():
        cells = []
        for n in names:
            if n in row:
                star = "*" if row[n]["p_value"] < 0.05 else ""
                cells.append(f"{row[n]['difference']:+.3f} (p={row[n]['p_value']:.2g}){star}")
            else:
                cells.append("-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "-"
    text = f"{stats['mean']:.3f}"
    if stats["seeds"] > 1:
        text += f" ± {stats['std']:.3f}"
    elif not math.isnan(stats["ci_low"]):
        text += f" [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"
    return text


def rich_table(results: dict, title: str = "crawd results") -> Table:
    """One row per metric and one column per method (a metric's interval under its value), so that a dozen
    metrics stay legible in an 80-column terminal; report.md has the same figures one row per method."""
    summary = summarise(results["runs"])
    names = metric_names(results["runs"])
    table = Table(title=title)
    table.add_column("metric", overflow="fold")
    for method in summary:
        table.add_column(method, justify="right", overflow="fold")
    for name in names:
        arrow = {1: " ↑", -1: " ↓"}.get(DIRECTION.get(name, 0), "")
        table.add_row(name + arrow, *(_cell(stats.get(name)).replace(" [", "\n[").replace(" ± ", "\n± ")
                                      for stats in summary.values()))
    return table


def markdown_table(results: dict) -> str:
    summary = summarise(results["runs"])
    names = metric_names(results["runs"])
    lines = ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for method, stats in summary.items():
        lines.append(f"| {method} | " + " | ".join(_cell(stats.get(n)) for n in names) + " |")
    return "\n".join(lines)


def plot_metrics(results: dict, path: Path) -> None:
    """One bar panel per metric: each method's value with its 95% CI (or spread over seeds)."""
    summary = summarise(results["runs"])
    names = metric_names(results["runs"])
    methods = list(summary)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        means = [summary[m].get(name, {}).get("mean", math.nan) for m in methods]
        errs = []
        for m in methods:
            s = summary[m].get(name)
            if s is None:
                errs.append((0.0, 0.0))
            elif s["seeds"] > 1 or math.isnan(s["ci_low"]):
                errs.append((s["std"], s["std"]))
            else:
                errs.append(_ci_bar(s))
        ax.bar(methods, means, yerr=np.array(errs).T, capsize=4, color=plt.cm.tab10(np.arange(len(methods))))
        arrow = {1: " (higher is better)", -1: " (lower is better)"}.get(DIRECTION.get(name, 0), "")
        ax.set_title(name + arrow, fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spread(stats: dict[str, float]) -> Any:
    """Error bar: the spread over seeds, else the 95% CI of the single run (None without either)."""
    if stats["seeds"] > 1:
        return stats["std"]
    if math.isnan(stats["ci_low"]):
        return None
    below, above = _ci_bar(stats)
    return [[below], [above]]


def _ci_bar(stats: dict[str, float]) -> tuple[float, float]:
    """Lengths of a CI's error bar below and above the estimate. Clipped at 0: the percentile
    bootstrap of a statistic such as an RMS of noisy group gaps can lie wholly above the estimate
    (every resample adds noise to every gap); the table prints the interval itself."""
    return max(stats["mean"] - stats["ci_low"], 0.0), max(stats["ci_high"] - stats["mean"], 0.0)


def plot_tradeoff(results: dict, path: Path, fairness: str, utility: str) -> bool:
    """Fairness (y) against utility (x), one point per method with error bars; Pareto front marked."""
    summary = {m: s for m, s in summarise(results["runs"]).items() if fairness in s and utility in s}
    if len(summary) < 2:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    points = []
    for i, (method, stats) in enumerate(summary.items()):
        x, y = stats[utility], stats[fairness]
        ax.errorbar(x["mean"], y["mean"], xerr=_spread(x), yerr=_spread(y), fmt="o",
                    color=plt.cm.tab10(i), capsize=3, label=method)
        points.append((method, DIRECTION.get(utility, 1) * x["mean"], DIRECTION.get(fairness, -1) * y["mean"]))
    front = [p for p in points if not any(q[1] >= p[1] and q[2] >= p[2] and q != p for q in points)]
    front.sort(key=lambda p: p[1])
    ax.plot([summary[p[0]][utility]["mean"] for p in front], [summary[p[0]][fairness]["mean"] for p in front],
            "--o", color="grey", markerfacecolor="none", markersize=14, label="Pareto front")
    ax.set_xlabel(utility + {1: " ↑", -1: " ↓"}.get(DIRECTION.get(utility, 0), ""))
    ax.set_ylabel(fairness + {1: " ↑", -1: " ↓"}.get(DIRECTION.get(fairness, 0), ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_crows_groups(results: dict, path: Path) -> bool:
    """Per-group bars: CrowS-Pairs pct_stereotype per bias type and model (ideal 50), with 95% CIs."""
    runs = [r for r in results["runs"] if r.get("benchmarks", {}).get("crows_pairs", {}).get("status") == "ok"]
    if not runs:
        return False
    types = sorted(runs[0]["benchmarks"]["crows_pairs"]["result"]["by_bias_type"])
    width = 0.8 / len(runs)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(types) + 2, 3.6))
    for i, run in enumerate(runs):
        groups = run["benchmarks"]["crows_pairs"]["result"]["by_bias_type"]
        means = np.array([groups[t]["value"] for t in types])
        err = np.array([[groups[t]["value"] - groups[t]["ci_low"], groups[t]["ci_high"] - groups[t]["value"]]
                        for t in types]).T
        ax.bar(np.arange(len(types)) + i * width, means, width, yerr=err, capsize=2, label=run["method"])
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(types)) + width * (len(runs) - 1) / 2, types, rotation=30, fontsize=8)
    ax.set_ylabel("CrowS-Pairs % stereotype (50 ideal)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(results: dict, out_dir: str | Path, title: str = "crawd results",
                 tradeoff: tuple[str, str] | None = None, notes: str = "") -> list[Path]:
    """Write results.json, report.md and plots into ``out_dir``; return the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "report.md", out_dir / "metrics.png"]
    write_json(written[0], results)
    plot_metrics(results, written[2])
    figures = ["![metrics](metrics.png)"]
    if tradeoff and plot_tradeoff(results, out_dir / "tradeoff.png", *tradeoff):
        written.append(out_dir / "tradeoff.png")
        figures.append("![fairness versus utility](tradeoff.png)")
    if plot_crows_groups(results, out_dir / "crows_groups.png"):
        written.append(out_dir / "crows_groups.png")
        figures.append("![CrowS-Pairs per bias type](crows_groups.png)")
    methods = [run["method"] for run in results["runs"]]
    reference = "vanilla" if "vanilla" in methods else methods[0] if methods else "vanilla"
    text = [f"# {title}", "", markdown_table(results), "",
            significance_markdown(significance(results["runs"], reference), reference), "", *figures]
    if notes:
        text += ["", notes]
    written[1].write_text("\n".join(text) + "\n")
    return written


def print_results(results: dict, title: str = "crawd results", console: Console | None = None) -> None:
    (console or Console()).print(rich_table(results, title))


def plot_cross_attention(beta: np.ndarray, decayed: np.ndarray, rows: list[str], cols: list[str], path: Path) -> None:
    """Heatmaps of the cross-attention (input tokens x sensitive tokens) before and after the top-K decay."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.6 * len(cols), 1.5 + 0.3 * len(rows)), sharey=True)
    for ax, matrix, title in zip(axes, (beta, decayed), ("beta (mean over heads)", "after top-K decay")):
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=float(beta.max()))
        ax.set_xticks(range(len(cols)), cols)
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=axes)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported with the first plot: it takes ~0.4 s, which every
    `crawd` command would otherwise pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
