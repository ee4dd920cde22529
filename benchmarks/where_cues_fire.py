"""Where a trained `neutral` adapter's gender cues fire: false cues after held-out open prompts, missed names.

    python benchmarks/where_cues_fire.py runs/neutral-seed0/adapter --data-dir ../shared/data  # validation half
    python benchmarks/where_cues_fire.py ADAPTER --split test ...   # only once a claim on the test half is made

Prints (1) the share of the held-out skew prompts (held-out templates x occupations of the split) in which some
token's P(cue) exceeds the readout ramp's low end, and the tokens that do it, each marked as a word's last
piece or an inner piece; (2) per gender, the share of the misgendering contexts (held-out names) whose largest
P(cue) stays under the ramp's high end, i.e. where the readout still evens the pronoun after a name.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

import crawd
from crawd.metrics.heldout import heldout_names, heldout_occupations, heldout_templates
from crawd.metrics.misgendering import GENDERS, misgendering_contexts
from crawd.mitigation.cues import OPEN_RAMP
from crawd.mitigation.probes import padded
from crawd.models import load_model
from crawd.onednn import onednn_linear


@torch.no_grad()
def cue_probabilities(model, tokenizer, texts: list[str], batch: int = 32) -> list[tuple[list[int], list[float]]]:
    """(ids, P(cue) per token, 0 where a token may not be a cue: CueTokens) of each text after the start token."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for i in range(0, len(texts), batch):
        encoded = [[start] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + batch]]
        ids, mask = padded(encoded, 0), padded([[1] * len(e) for e in encoded], 0)
        with onednn_linear(), model.mitigation.capturing(stop=True) as captured:
            model.encode(ids, mask)
        p = model.mitigation.cues.probabilities(captured.states) * model.mitigation.cue_tokens.may_cue(ids)
        out += [(e, p[row, :len(e)].tolist()) for row, e in enumerate(encoded)]
    return out


def load_neutral(adapter: str):
    """(SmolLM2-135M with a trained `neutral` adapter in eval mode, its tokenizer); exits if it has no cues."""
    torch.manual_seed(0)
    base, tokenizer = load_model("smollm2-135m")
    model = crawd.load(base, tokenizer, adapter).eval()
    if model.mitigation is None or model.mitigation.cues is None:
        raise SystemExit(f"{adapter} has no gender cues (train it with --preset neutral)")
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapter", help="a trained neutral adapter folder")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--split", default="validation", choices=("validation", "test"))
    p.add_argument("--n-cases", type=int, default=200, help="misgendering contexts per gender")
    args = p.parse_args(argv)
    model, tokenizer = load_neutral(args.adapter)
    low, high = OPEN_RAMP
    occupations = list(heldout_occupations(args.data_dir, args.split))
    prompts = [t.format(occupation=o) for o in occupations for t in heldout_templates(args.split)]
    firing, fired = Counter(), []
    for ids, probs in cue_probabilities(model, tokenizer, prompts):
        fired.append(max(probs) > low)
        for j, (token, q) in enumerate(zip(ids, probs)):
            if q > low:
                after = tokenizer.decode([ids[j + 1]]) if j + 1 < len(ids) else " "
                last = not after[:1].isalnum()  # the next token starts a word (with its space) or punctuation
                firing[(tokenizer.decode([token]), "last piece" if last else "inner piece")] += 1
    print(f"{args.split}: {np.mean(fired):.1%} of {len(prompts)} held-out open prompts have a token with "
          f"P(cue) > {low}; the tokens: {firing.most_common(12)}")
    contexts = misgendering_contexts(heldout_names(args.data_dir, args.split), occupations, args.n_cases)
    for gender in GENDERS:
        given = np.array([max(probs) for _, probs in cue_probabilities(model, tokenizer, contexts[gender])])
        print(f"{gender}: {np.mean(given < high):.1%} of {len(given)} misgendering contexts keep the readout on "
              f"(largest P(cue) < {high}); mean largest P(cue) {given.mean():.3f}")


if __name__ == "__main__":
    main()
