"""Untrained study of ``mode="self"``: embedding vs contextual scoring on SmolLM2-135M (issue 8).

For each setting, wrap the real SmolLM2-135M (no training, no LoRA) and measure
  * pronoun skew (mean |p_female - 0.5| over 88 occupations x 4 templates, 0 ideal) and the
    Pearson r of p_female with the BLS share of women (crawd.metrics.pronoun_skew),
  * perplexity on held-out synthetic bios (crawd.data.synthetic_bios, test split),
  * how often the occupation word is among the decayed keys of the last prompt token.

    python benchmarks/self_mode_study.py --out docs/self-mode-study.json

About 20-40 s per setting on 2 CPU cores. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from crawd import CrawdConfig
from crawd.data import synthetic_bios
from crawd.methods.crawd_self import SelfDecayModel
from crawd.metrics.perplexity import perplexity
from crawd.metrics.pronoun_skew import SKEW_TEMPLATES, pronoun_skew
from crawd.models import load_model

DATA = "/work/shared/data"
LAST_HALF = tuple(range(15, 30))

#: (name, scoring, top_k, decay, layers (None: last third), score layer (None: default))
GRID = [  # most informative first
    ("embedding K.4 l.2", "embedding", 0.4, 0.2, None, None),
    ("ctx17 K.4 l.2", "contextual", 0.4, 0.2, None, 17),
    ("ctx17 K.4 l0", "contextual", 0.4, 0.0, None, 17),
    ("ctx17 K.2 l0", "contextual", 0.2, 0.0, None, 17),
    ("ctx12 K.4 l0 half", "contextual", 0.4, 0.0, LAST_HALF, 12),
    ("ctx14 K.4 l.2", "contextual", 0.4, 0.2, None, 14),
    ("ctx20 K.4 l.2", "contextual", 0.4, 0.2, None, 20),
    ("ctx17 K.4 l.5", "contextual", 0.4, 0.5, None, 17),
    ("embedding K.2 l0", "embedding", 0.2, 0.0, None, None),
    ("ctx17 K.2 l.2", "contextual", 0.2, 0.2, None, 17),
    ("embedding K.4 l.2 half", "embedding", 0.4, 0.2, LAST_HALF, None),
]


def occupation_hit_rate(model: SelfDecayModel, tok) -> float:
    """Share of "The {occupation} said that" prompts whose decayed keys (seen from the last token)
    include a piece of the occupation word."""
    from crawd.metrics.occupations import BIAS_IN_BIOS_OCCUPATIONS

    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    hits = []
    for occ in BIAS_IN_BIOS_OCCUPATIONS:
        ids = [start] + tok(SKEW_TEMPLATES[0].format(occupation=occ), add_special_tokens=False)["input_ids"]
        occ_ids = tok(" " + occ, add_special_tokens=False)["input_ids"]
        pos = next(k for k in range(len(ids)) if ids[k:k + len(occ_ids)] == occ_ids)
        sel = model.decayed_keys(torch.tensor([ids]), per_query=True)[0, -1]
        hits.append(bool(sel[pos:pos + len(occ_ids)].any()))
    return sum(hits) / len(hits)


def evaluate(model, tok, texts, templates) -> dict:
    t0 = time.time()
    skew = pronoun_skew(model, tok, data_dir=DATA, templates=templates, progress=False, n_boot=200)
    ppl = perplexity(model, tok, texts, n_boot=200)
    return {"pronoun_skew": skew["pronoun_skew"]["value"], "signed_skew": skew["signed_skew"]["value"],
            "bls_r": skew["bls_correlation"]["value"], "pronoun_mass": skew["pronoun_mass"]["value"],
            "ppl": ppl.value, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-bios", type=int, default=100)
    parser.add_argument("--n-templates", type=int, default=len(SKEW_TEMPLATES),
                        help="use the first N pronoun-skew templates (default: all 4)")
    parser.add_argument("--only", nargs="*", help="names of the settings to run (default: all)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    texts = list(synthetic_bios(n_train=28, n_test=112, data_dir=DATA)["test"]["text"])[: args.n_bios]
    templates = SKEW_TEMPLATES[: args.n_templates]
    rows = []
    if not args.only or "base" in args.only:
        model, tok = load_model("smollm2-135m")
        rows.append({"setting": "base", **evaluate(model, tok, texts, templates), "occ_hit": None})
        print(rows[-1], flush=True)
    for name, scoring, top_k, decay, layers, score_layer in GRID:
        if args.only and name not in args.only:
            continue
        base, tok = load_model("smollm2-135m")
        extra = {"self_scoring": scoring}
        if score_layer is not None:
            extra["self_score_layer"] = score_layer
        cfg = CrawdConfig(mode="self", top_k=top_k, decay=decay, self_layers=layers, lora=False, extra=extra)
        model = SelfDecayModel(base, tok, cfg).eval()
        rows.append({"setting": name, **evaluate(model, tok, texts, templates), "occ_hit": occupation_hit_rate(model, tok)})
        print(rows[-1], flush=True)
    print("\n| setting | pronoun skew | signed | BLS r | ppl | occupation decayed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        hit = "-" if r["occ_hit"] is None else f"{r['occ_hit']:.2f}"
        print(f"| {r['setting']} | {r['pronoun_skew']:.4f} | {r['signed_skew']:+.4f} | {r['bls_r']:.3f} "
              f"| {r['ppl']:.2f} | {hit} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
