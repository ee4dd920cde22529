"""Group fairness of classifiers, per-group tables first (fairlearn ``MetricFrame``).

* ``accuracy`` overall and per group.
* TPR gap (De-Arteaga et al. 2019): for each class y, TPR_g(y) = recall of y
  among examples of group g. With two groups (g1, g2) = ``gap_groups`` (default:
  the two sorted group names, e.g. female, male) Gap(y) = TPR_g1(y) - TPR_g2(y);
  with more groups Gap(y) = max_g TPR_g(y) - min_g TPR_g(y). ``tpr_gap_rms`` =
  sqrt(mean_y Gap(y)^2) over classes whose TPR is defined in every group;
  ``tpr_gap_max`` = max_y |Gap(y)|.
* Binary labels only (Dixon et al. 2018): FPR_g and FNR_g per group, and the
  equality differences FPED = sum_g |FPR_g - FPR_all|, FNED = sum_g |FNR_g -
  FNR_all|, with the largest single |FPR_g - FPR_all| and |FNR_g - FNR_all|.

Intervals: percentile bootstrap over examples for accuracy and ``tpr_gap_rms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crawd.metrics.loglik import length_batches, model_device
from crawd.metrics.registry import register_benchmark
from crawd.metrics.stats import estimate


def _tpr_table(true_idx: np.ndarray, correct: np.ndarray, group_idx: np.ndarray,
               n_labels: int, n_groups: int) -> np.ndarray:
    """(class, group) TPR from integer codes; NaN where a class has no example in a group."""
    cell = true_idx * n_groups + group_idx
    size = n_labels * n_groups
    totals = np.bincount(cell, minlength=size)[:size]
    hits = np.bincount(cell, weights=correct, minlength=size)[:size]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hits / totals).reshape(n_labels, n_groups)


def _gaps(tpr: np.ndarray, pair: tuple[int, int] | None) -> np.ndarray:
    """Per-class gap: TPR of pair[0] - pair[1], else max - min over groups."""
    if pair is not None:
        return tpr[:, pair[0]] - tpr[:, pair[1]]
    return tpr.max(axis=1) - tpr.min(axis=1)


def _rms(gap: np.ndarray) -> float:
    gap = gap[~np.isnan(gap)]
    return float(np.sqrt(np.mean(gap ** 2))) if len(gap) else float("nan")


def group_metrics(y_true: Sequence, y_pred: Sequence, sensitive: Sequence,
                  labels: Sequence | None = None, gap_groups: tuple | None = None,
                  positive_label=1, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy, TPR gaps and (binary labels) FPR/FNR equality differences by group.

    ``labels`` are the classes to report (default: those seen in y_true).
    Returns scalars as Estimate dicts (``accuracy``, ``tpr_gap_rms``) or floats,
    and tables as lists of dicts / nested dicts.
    """
    # imported here: fairlearn and scikit-learn take ~0.4 s, which every `crawd` command would pay
    from fairlearn.metrics import MetricFrame, false_negative_rate, false_positive_rate
    from sklearn.metrics import accuracy_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    sensitive = np.asarray(sensitive).astype(str)
    if not len(y_true) == len(y_pred) == len(sensitive) or len(y_true) == 0:
        raise ValueError("y_true, y_pred and sensitive must be non-empty and of equal length")
    labels = sorted(set(y_true.tolist())) if labels is None else list(labels)
    if gap_groups is not None:
        gap_groups = tuple(map(str, gap_groups))
        if len(gap_groups) != 2 or not set(gap_groups) <= set(sensitive):
            raise ValueError(f"gap_groups must be two of the groups {sorted(set(sensitive))}")
    frame = MetricFrame(metrics={"accuracy": accuracy_score}, y_true=y_true, y_pred=y_pred,
                        sensitive_features=sensitive)
    group_names = sorted(set(sensitive))
    if gap_groups is None and len(group_names) == 2:
        gap_groups = (group_names[0], group_names[1])
    pair = None if gap_groups is None else tuple(group_names.index(g) for g in gap_groups)
    label_index = {y: i for i, y in enumerate(labels)}
    known = np.array([y in label_index for y in y_true.tolist()])  # classes outside labels: no TPR
    true_idx = np.array([label_index.get(y, 0) for y in y_true.tolist()])
    group_idx = np.searchsorted(group_names, sensitive)
    correct = (y_true == y_pred).astype(float)

    def rms_gap(rows: np.ndarray) -> float:
        r = rows.astype(int)
        r = r[known[r]]
        tpr_r = _tpr_table(true_idx[r], correct[r], group_idx[r], len(labels), len(group_names))
        return _rms(_gaps(tpr_r, pair))

    tpr = _tpr_table(true_idx[known], correct[known], group_idx[known], len(labels), len(group_names))
    gap = _gaps(tpr, pair)
    rows = np.arange(len(y_true))
    result = {
        "accuracy": estimate(correct, n_boot=n_boot, seed=seed).to_dict(),
        "accuracy_by_group": frame.by_group["accuracy"].to_dict(),
        "tpr_by_group": [{"label": str(y), **{g: _none_if_nan(tpr[i, j])
                                              for j, g in enumerate(group_names)}}
                         for i, y in enumerate(labels)],
        "tpr_gap": {str(y): _none_if_nan(gap[i]) for i, y in enumerate(labels)},
        "tpr_gap_groups": list(gap_groups) if gap_groups is not None else "max - min",
        "tpr_gap_rms": estimate(rows, rms_gap, n_boot=n_boot, seed=seed).to_dict(),
        "tpr_gap_max": float(np.nanmax(np.abs(gap))) if not np.isnan(gap).all() else float("nan"),
    }
    if len(set(labels) | set(y_true.tolist())) == 2:
        binary = MetricFrame(metrics={"fpr": partial(false_positive_rate, pos_label=positive_label),
                                      "fnr": partial(false_negative_rate, pos_label=positive_label)},
                             y_true=y_true, y_pred=y_pred, sensitive_features=sensitive)
        for rate in ("fpr", "fnr"):
            deviation = (binary.by_group[rate] - binary.overall[rate]).abs()
            result[f"{rate}_overall"] = float(binary.overall[rate])
            result[f"{rate}_by_group"] = binary.by_group[rate].to_dict()
            result[f"{rate}_equality_difference"] = float(deviation.sum())
            result[f"{rate}_max_gap"] = float(deviation.max())
    return result


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def predict_labels(model, tokenizer, texts: Sequence[str], batch_size: int | None = None,
                   max_length: int = 128, progress: bool = False) -> np.ndarray:
    """Argmax of a sequence classifier's ``.logits`` for each text.

    Texts are batched by character length (:func:`crawd.metrics.loglik.length_batches`; None:
    32 per batch on a CPU, by tokens on a GPU, counting ``max_length`` tokens per text at most).
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    device = model_device(model)
    preds = np.zeros(len(texts), dtype=int)
    lengths = [min(len(t), max_length) for t in texts]
    with torch.inference_mode():
        for batch in tqdm(length_batches(lengths, batch_size, model, default=32), desc="classifying",
                          disable=not progress):
            enc = tokenizer([texts[j] for j in batch], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            logits = model(input_ids=enc["input_ids"].to(device),
                           attention_mask=enc["attention_mask"].to(device)).logits
            preds[batch] = logits.argmax(dim=-1).cpu().numpy()
    return preds


@register_benchmark("tpr_gap", kinds=("classifier",), requires_options=("texts", "labels", "groups"))
def tpr_gap(model, tokenizer, data_dir: str | Path | None, texts: Sequence[str], labels: Sequence,
            groups: Sequence, label_names: Sequence | None = None, gap_groups: tuple | None = None,
            batch_size: int | None = None, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Classify option ``texts`` and compare to ``labels`` (class ids) by ``groups``.

    ``label_names`` (optional) lists the class ids to report.
    """
    preds = predict_labels(model, tokenizer, texts, batch_size, progress=progress)
    return group_metrics(labels, preds, groups, label_names, gap_groups, n_boot=n_boot, seed=seed)
