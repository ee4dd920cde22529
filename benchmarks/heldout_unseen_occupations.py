"""The held-out pronoun skew of a finished `crawd compare` run, on a subset of the held-out test occupations.

    python benchmarks/heldout_unseen_occupations.py runs/mitigation

Issue 28's early diagnostics (validation models, before the mechanism was chosen) printed the skew of 7 of
the test share's occupations; this reads the saved `pronoun_skew_heldout` results (no model is run) and gives
the skew, its correlation with the real share of women, and each run's ratio to vanilla's over the other 13,
which nothing looked at before the final runs. Per method: mean ± std over seeds, Welch p vs vanilla.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import ttest_ind

LOOKED_AT = ("cashier", "firefighter", "hairdresser", "janitor", "mechanic", "plumber", "receptionist")


def subset_figures(result: dict, keep: set[str]) -> tuple[float, float]:
    """(skew, r with the share of women) over the occupations of ``keep``."""
    rows = [r for r in result["by_occupation"] if r["occupation"] in keep]
    p = np.array([r["p_female"] for r in rows])
    share = np.array([r["bls_pct_female"] for r in rows], dtype=float)
    return float(np.mean(np.abs(p - 0.5))), float(np.corrcoef(p, share)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the compare's report folder (holds results.json)")
    args = parser.parse_args()
    runs = json.loads((args.out / "results.json").read_text())["runs"]
    by_method: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        result = run["benchmarks"]["pronoun_skew_heldout"]["result"]
        unseen = {r["occupation"] for r in result["by_occupation"]} - set(LOOKED_AT)
        by_method.setdefault(run["method"], []).append(subset_figures(result, unseen))
    print(f"{len(unseen)} occupations: {', '.join(sorted(unseen))}")
    print("| method | skew | r with the share of women | skew / vanilla's | Welch p (skew) |\n|---|---|---|---|---|")
    vanilla = np.array([s for s, _ in by_method.get("vanilla", [])])
    for method, figures in by_method.items():
        skew, r = np.array([s for s, _ in figures]), np.array([c for _, c in figures])
        ratio = skew.mean() / vanilla.mean() if len(vanilla) else float("nan")
        p = ttest_ind(skew, vanilla, equal_var=False).pvalue if len(vanilla) > 1 and len(skew) > 1 else float("nan")
        print(f"| {method} | {skew.mean():.3f} ± {skew.std(ddof=1) if len(skew) > 1 else 0:.3f} | "
              f"{r.mean():.3f} ± {r.std(ddof=1) if len(r) > 1 else 0:.3f} | {ratio:.2f}x | {p:.2g} |")


if __name__ == "__main__":
    main()
