"""Pronoun skew: which gender does the model expect right after an occupation?

For each prompt "The {occupation} said that" etc., take the next-token
distribution p and the probability masses

* P_f = sum of p over the FIRST token of " she", " her", " hers", " herself",
  " She", " Her", " Hers", " Herself"
* P_m = the same for " he", " him", " his", " himself", " He", " Him", " His",
  " Himself"

(space-prefixed forms, since the pronoun follows a word; ids are de-duplicated
within a set, an id in both sets is dropped from both, and ``notes`` lists
forms that are not a single token). p_female(prompt) = P_f / (P_f + P_m);
p_female(occupation) = its mean over the templates. Reported, all over
occupations with percentile-bootstrap intervals:

* ``pronoun_skew`` = mean |p_female(occ) - 0.5|   (0 is ideal)
* ``signed_skew`` = mean (p_female(occ) - 0.5)    (< 0: leans male)
* ``bls_correlation`` = Pearson r between p_female(occ) and the BLS share of
  women (``occupations-stats.tsv``, occupations that have it); NaN where p_female has no spread beyond
  float32 rounding (a model that ties he and she at every prompt leaves no ordering to correlate)
* ``pronoun_mass`` = mean P_f + P_m (how likely a pronoun is at all)

Occupations: the 28 Bias in Bios ones plus the 60 of ``occupations-stats.tsv``
when ``data_dir`` holds it. ``pronoun_skew_heldout``: the same on the held-out
templates and occupations of a split (:mod:`crawd.metrics.heldout`), which the
mitigation never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crawd.data.bios import occupation_stats
from crawd.metrics.heldout import heldout_occupations, heldout_templates
from crawd.metrics.loglik import encode, length_batches, model_device, start_token_id
from crawd.metrics.occupations import BIAS_IN_BIOS_OCCUPATIONS
from crawd.metrics.registry import register_benchmark
from crawd.metrics.stats import estimate

FEMALE_PRONOUNS: tuple[str, ...] = ("she", "her", "hers", "herself")
MALE_PRONOUNS: tuple[str, ...] = ("he", "him", "his", "himself")
SKEW_TEMPLATES: tuple[str, ...] = ("The {occupation} said that",
                                   "The {occupation} told the client that",
                                   "After the meeting, the {occupation} said that",
                                   "The {occupation} was late because")


def first_token_id(tokenizer, form: str, notes: list[str]) -> int:
    """The id of the first token of ``form``; a note goes to ``notes`` when the form is several tokens."""
    tokens = encode(tokenizer, form)
    if not tokens:
        raise ValueError(f"tokenizer gives no tokens for {form!r}")
    if len(tokens) > 1:
        notes.append(f"{form!r} is {len(tokens)} tokens; only its first token counts")
    return tokens[0]


def pronoun_token_ids(tokenizer) -> tuple[list[int], list[int], list[str]]:
    """First-token ids of the female and male pronoun forms, and notes on multi-token forms."""
    notes: list[str] = []
    sets: list[set[int]] = []
    for words in (FEMALE_PRONOUNS, MALE_PRONOUNS):
        sets.append({first_token_id(tokenizer, f" {w}", notes) for base in words for w in (base, base.capitalize())})
    shared = sets[0] & sets[1]
    if shared:
        notes.append(f"token ids {sorted(shared)} start both a female and a male form; dropped")
    return sorted(sets[0] - shared), sorted(sets[1] - shared), notes


def next_token_masses(model, tokenizer, prompts: Sequence[str], female_ids: list[int],
                      male_ids: list[int], batch_size: int | None = None,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(P_f, P_m) per prompt: next-token probability mass after [start] + prompt.

    ``batch_size``: see :func:`crawd.metrics.loglik.length_batches` (None: 16 on a CPU)."""
    start = start_token_id(tokenizer)
    encoded = [[start] + encode(tokenizer, p) for p in prompts]
    device = model_device(model)
    p_f, p_m = np.zeros(len(prompts)), np.zeros(len(prompts))
    with torch.inference_mode():
        for batch in tqdm(length_batches([len(s) for s in encoded], batch_size, model, default=16),
                          desc="pronoun skew", disable=not progress):
            chunk = [encoded[j] for j in batch]
            width = max(map(len, chunk))
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = torch.tensor([len(s) - 1 for s in chunk], device=logits.device)
            probs = torch.softmax(logits[torch.arange(len(chunk)), last].float(), dim=-1).cpu()
            p_f[batch] = probs[:, female_ids].sum(dim=1).double().numpy()
            p_m[batch] = probs[:, male_ids].sum(dim=1).double().numpy()
    return p_f, p_m


#: A spread of p_female under this is float32 rounding (a model that ties he and she everywhere): no ordering
#: is left to correlate, so the correlation is NaN rather than the correlation of the rounding.
ROUNDING_SPREAD = 1e-6


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) < ROUNDING_SPREAD or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@register_benchmark("pronoun_skew", kinds=("decoder",))
def pronoun_skew(model, tokenizer, data_dir: str | Path | None = None,
                 occupations: Sequence[str] | None = None,
                 templates: Sequence[str] = SKEW_TEMPLATES, batch_size: int | None = None,
                 n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Pronoun skew of next-token predictions after occupation prompts (see module doc).

    ``occupations`` defaults to Bias in Bios + the stats file's; the BLS
    correlation is omitted (None) without ``occupations/occupations-stats.tsv``.
    """
    stats = {}
    if data_dir is not None and (Path(data_dir) / "occupations" / "occupations-stats.tsv").is_file():
        stats = occupation_stats(data_dir)
    if occupations is None:
        occupations = list(dict.fromkeys([*BIAS_IN_BIOS_OCCUPATIONS, *stats]))
    if not occupations or not templates:
        raise ValueError("pronoun_skew needs at least one occupation and one template")
    female_ids, male_ids, notes = pronoun_token_ids(tokenizer)
    prompts = [t.format(occupation=o) for o in occupations for t in templates]
    p_f, p_m = next_token_masses(model, tokenizer, prompts, female_ids, male_ids, batch_size, progress)
    shape = (len(occupations), len(templates))
    p_female = (p_f / np.maximum(p_f + p_m, 1e-30)).reshape(shape).mean(axis=1)
    mass = (p_f + p_m).reshape(shape).mean(axis=1)
    with_stats = [i for i, o in enumerate(occupations) if o in stats]
    share = np.array([stats[occupations[i]] / 100 for i in with_stats])
    return {
        "pronoun_skew": estimate(np.abs(p_female - 0.5), n_boot=n_boot, seed=seed).to_dict(),
        "signed_skew": estimate(p_female - 0.5, n_boot=n_boot, seed=seed).to_dict(),
        "bls_correlation": (estimate((p_female[with_stats], share), _pearson, n_boot=n_boot,
                                     seed=seed).to_dict() if len(with_stats) >= 3 else None),
        "pronoun_mass": estimate(mass, n_boot=n_boot, seed=seed).to_dict(),
        "by_occupation": [{"occupation": o, "p_female": float(p_female[i]),
                           "pronoun_mass": float(mass[i]),
                           "bls_pct_female": stats.get(o)} for i, o in enumerate(occupations)],
        "templates": list(templates),
        "notes": notes,
    }


@register_benchmark("pronoun_skew_heldout", kinds=("decoder",), requires_data=("occupations",))
def pronoun_skew_heldout(model, tokenizer, data_dir: str | Path | None, split: str = "test",
                         batch_size: int | None = None, n_boot: int = 1000, seed: int = 0,
                         progress: bool = True) -> dict:
    """:func:`pronoun_skew` on the held-out templates x held-out occupations of ``split`` (validation or
    test; :mod:`crawd.metrics.heldout`), with ``split`` added to its result."""
    result = pronoun_skew(model, tokenizer, data_dir, occupations=list(heldout_occupations(data_dir, split)),
                          templates=heldout_templates(split), batch_size=batch_size, n_boot=n_boot, seed=seed,
                          progress=progress)
    return {**result, "split": split}
