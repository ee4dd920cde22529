"""What a trained `neutral` adapter's readout costs the pronoun a held-out name gives, and two ways out measured.

    python benchmarks/readout_trades.py runs/neutral-seed0/adapter --data-dir ../shared/data   # validation half
    python benchmarks/readout_trades.py ADAPTER --refit bold-people --refit-seed 2            # own-data adapter

On the he/she pair at the last position (the held-out measures' validation half): per gender, the misgendering
contexts whose cue misses the name (the readout's share is 1: P(cue) at most the ramp's low end), and the
accuracy (right pronoun more likely) before and after the readout; then, simulated on the same margins, the
readout's share capped below 1 (it never evens a pair completely, so it never ties one), a margin gate (no
evening where the model's own he/she margin is large), the margins all brought to 0.01 nats with their sign
kept (so r reads only which side each prompt prefers) and ties where the cues say open, each with the accuracy
and the held-out prompts' r with the share of women (of the mean he/she margin per occupation). ``--refit
DATA``: the cues refitted on the trained model with 240, 480 and 960 calibration sentences (first 64 rows of
DATA, shuffled with ``--refit-seed`` as training does), and where they fire.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from crawd.data.load import load_data
from crawd.metrics.heldout import heldout_names, heldout_occupations, heldout_templates
from crawd.metrics.misgendering import GENDERS, SUBJECT_PRONOUNS, misgendering_contexts
from crawd.metrics.pronoun_skew import first_token_id
from crawd.mitigation import calibration, cues
from crawd.mitigation.probes import padded
from where_cues_fire import load_neutral  # this folder's


@torch.no_grad()
def margins(model, tokenizer, texts: list[str], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """log P(she) - log P(he) before the readout at each text's end, and how far the text has given a gender."""
    she, he = (first_token_id(tokenizer, SUBJECT_PRONOUNS[g], []) for g in GENDERS)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    margin, given = [], []
    for i in range(0, len(texts), batch):
        encoded = [[start] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + batch]]
        ids, mask = padded(encoded, 0), padded([[1] * len(e) for e in encoded], 0)
        out, cue_input = model.encode_tracked(ids, mask)
        logp = model.head_logits(out.last_hidden_state, mask).log_softmax(-1)
        so_far = model.mitigation.given(cue_input, mask)
        last = torch.tensor([len(e) - 1 for e in encoded])
        rows = torch.arange(len(encoded))
        margin += (logp[rows, last, she] - logp[rows, last, he]).tolist()
        given += so_far[rows, last].tolist()
    return np.array(margin), np.array(given)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapter", help="a trained neutral adapter folder")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n-cases", type=int, default=200, help="misgendering contexts per gender")
    p.add_argument("--refit", metavar="DATA", help="refit the cues on this dataset's rows (crawd.data.load_data)")
    p.add_argument("--refit-seed", type=int, default=0, help="the training seed whose row order the fit takes")
    args = p.parse_args(argv)
    model, tokenizer = load_neutral(args.adapter)

    def share(given: np.ndarray) -> np.ndarray:
        return model.mitigation.cues.open_share(torch.as_tensor(given)).numpy()

    occupations = heldout_occupations(args.data_dir, "validation")
    templates = heldout_templates("validation")
    prompts = [t.format(occupation=o) for o in occupations for t in templates]
    women = np.array(list(occupations.values()))
    contexts = misgendering_contexts(heldout_names(args.data_dir, "validation"), list(occupations), args.n_cases)

    def measure() -> tuple[tuple[np.ndarray, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        return margins(model, tokenizer, prompts), {g: margins(model, tokenizer, contexts[g]) for g in GENDERS}

    (open_margin, open_given), named = measure()
    low, high = cues.OPEN_RAMP
    for g, (margin, given) in named.items():
        sign = 1 if g == "female" else -1
        print(f"{g}: cue misses the name (share 1) in {np.mean(given <= low):.1%} of {len(given)} contexts; "
              f"accuracy {np.mean(sign * margin > 0):.3f} before the readout, "
              f"{np.mean(sign * margin * (1 - share(given)) > 0):.3f} after")

    def row(label: str, factor) -> None:
        per_occupation = (open_margin * (1 - factor(open_margin, open_given))).reshape(len(women), -1).mean(1)
        accuracy = [np.mean((1 if g == "female" else -1) * m * (1 - factor(m, v)) > 0) for g, (m, v) in named.items()]
        r = f"{np.corrcoef(per_occupation, women)[0, 1]:.3f}" if per_occupation.std() > 0 else "none (all tied)"
        print(f"| {label} | {r} | {accuracy[0]:.3f} / {accuracy[1]:.3f} |")

    print("| readout (simulated on the he/she pair) | held-out r | accuracy women / men |\n|---|---|---|")
    for cap in (1.0, 0.99, 0.95, 0.9):
        row(f"share capped at {cap}", lambda m, v, c=cap: c * share(v))
    for gate_low, gate_high in ((2.0, 3.0), (3.0, 4.0)):
        row(f"no evening beyond a margin of {gate_low}-{gate_high} nats",
            lambda m, v, a=gate_low, b=gate_high: share(v) * np.clip((b - np.abs(m)) / (b - a), 0.0, 1.0))
    # every margin down to 0.01 nats, its sign kept: what r then reads is only which side each prompt prefers
    row("only the preferred side kept (0.01 nats)", lambda m, v: share(v) * np.clip(1 - 0.01 / np.abs(m), 0.0, 1.0))
    # a tie where the cues say (nearly) open, the cap below; and a tie only where the model's own margin is small
    for below in (math.inf, 2.0, 1.0):
        row(f"tied where the share is 0.95 or more{'' if below == math.inf else f' and the margin under {below} nats'}",
            lambda m, v, b=below: np.where((share(v) >= 0.95) & (np.abs(m) < b), 1.0, 0.99 * share(v)))

    if args.refit:
        rows = load_data(args.refit, args.data_dir, seed=0)["train"].shuffle(seed=args.refit_seed)["text"][:cues.FIT_ROWS]
        ids = [tokenizer(t, truncation=True, max_length=48)["input_ids"] for t in rows]
        mitigation, shipped = model.mitigation, calibration.calibration_sentences
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        print("| calibration sentences | open prompts with a cue > low | men's / women's contexts under high |\n|---|---|---|")
        try:
            for count in (calibration.COUNT, 2 * calibration.COUNT, 4 * calibration.COUNT):
                cues.calibration_sentences = lambda c=count: shipped(count=c)
                mitigation.fit_cues(model, cues.fit_examples(ids, tokenizer, mitigation.swaps, mitigation.names), pad)
                (_, open_given), named = measure()
                print(f"| {count} | {np.mean(open_given > low):.1%} | {np.mean(named['male'][1] < high):.1%} / "
                      f"{np.mean(named['female'][1] < high):.1%} |")
        finally:
            cues.calibration_sentences = shipped


if __name__ == "__main__":
    main()
