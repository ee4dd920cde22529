"""crawd.report: summaries, Welch's test against vanilla, and the report folder on hand-made results."""

from __future__ import annotations

import math

import pytest
from scipy.stats import ttest_ind

from crawd.report import significance, summarise, write_report


def run(method: str, seed: int, gap: float, accuracy: float, ci: tuple[float, float] | None = None) -> dict:
    low, high = ci or (gap - 0.01, gap + 0.01)
    return {"method": method, "seed": seed,
            "metrics": {"rms_tpr_gap": {"value": gap, "ci_low": low, "ci_high": high, "n": 100},
                        "accuracy": {"value": accuracy, "ci_low": accuracy - 0.02, "ci_high": accuracy + 0.02}}}


RUNS = [run("vanilla", s, g, a) for s, (g, a) in enumerate([(0.10, 0.85), (0.12, 0.86), (0.11, 0.84)])]
RUNS += [run("crawd", s, g, a) for s, (g, a) in enumerate([(0.05, 0.80), (0.06, 0.81), (0.04, 0.82)])]


def test_summary_and_welch_test_by_hand():
    summary = summarise(RUNS)
    assert summary["crawd"]["rms_tpr_gap"]["mean"] == pytest.approx(0.05)
    assert summary["crawd"]["rms_tpr_gap"]["std"] == pytest.approx(0.01)
    assert summary["vanilla"]["accuracy"]["seeds"] == 3
    test = significance(RUNS)["crawd"]["rms_tpr_gap"]
    assert test["difference"] == pytest.approx(-0.06)
    assert test["p_value"] == pytest.approx(ttest_ind([0.05, 0.06, 0.04], [0.10, 0.12, 0.11], equal_var=False).pvalue)


def test_report_folder_even_when_an_interval_lies_above_its_estimate(tmp_path):
    # one seed each: error bars come from the CI, which here excludes the estimate (as the
    # percentile bootstrap of an RMS of noisy gaps can); the plots must still be drawn
    runs = [run("vanilla", 0, 0.097, 0.85, ci=(0.103, 0.185)), run("crawd", 0, 0.085, 0.87, ci=(0.098, 0.177))]
    written = write_report({"runs": runs}, tmp_path, tradeoff=("rms_tpr_gap", "accuracy"))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.json", "report.md", "metrics.png", "tradeoff.png"} <= names
    assert all(p.stat().st_size > 0 for p in written)
    text = (tmp_path / "report.md").read_text()
    assert "0.097 [0.103, 0.185]" in text and not math.isnan(summarise(runs)["crawd"]["accuracy"]["ci_low"])


def test_single_runs_are_compared_through_their_intervals():
    from scipy.stats import norm

    runs = [run("base", 0, 0.10, 0.85, ci=(0.08, 0.12)), run("tuned", 0, 0.16, 0.85, ci=(0.13, 0.19))]
    test = significance(runs, reference="base")["tuned"]["rms_tpr_gap"]
    se = ((0.04 / 3.919928) ** 2 + (0.06 / 3.919928) ** 2) ** 0.5
    assert test["test"] == "ci-z" and test["difference"] == pytest.approx(0.06)
    assert test["p_value"] == pytest.approx(2 * norm.sf(0.06 / se))  # z = 1.63: p = 0.10, not significant
    assert significance(runs, reference="base")["tuned"]["accuracy"]["p_value"] == pytest.approx(1.0)


def test_eval_report_compares_with_its_first_model(tmp_path):
    runs = [run("base", 0, 0.10, 0.85, ci=(0.09, 0.11)), run("tuned", 0, 0.20, 0.80, ci=(0.19, 0.21))]
    write_report({"runs": runs}, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Difference from base (one run each; z-test on the two bootstrap 95% intervals" in text
    assert "| tuned | -0.050 (p=" in text and "+0.100 (p=" in text
