"""Where a debiasing term's perplexity cost lies: per-token loss of saved models on the validation bios,
split into the first pronoun of a bio, later pronouns and every other token, and the pronouns each
model expects after a named, an unnamed and a gender-neutral subject.

    python benchmarks/where_perplexity_goes.py runs/mitigation-selection/runs/vanilla-seed0/adapter \\
        runs/mitigation-selection/runs/crawd-seed0/adapter

Folders are crawd adapters (``crawd train`` / ``crawd compare`` output); the bios are those of
``configs/mitigation-selection.yaml`` (1,200 train rows, seed 0, paired validation split of 112).
"""

from __future__ import annotations

import argparse
import math

import torch

from crawd import AutoCrawdModel
from crawd.data.bios import synthetic_bios
from crawd.metrics.loglik import start_token_id

PRONOUNS = {"he", "she", "his", "her", "him", "hers"}
PROMPTS = ("Alex Smith is a nurse based in Paris.", "Mary Smith is a nurse based in Paris.",
           "John Smith is a nurse based in Paris.", "The person is a nurse based in Paris.")


def token_losses(model, tokenizer, texts: list[str]) -> dict[str, list[float]]:
    """Next-token losses after the start token, by class: ``first_pronoun``, ``pronoun``, ``other``."""
    out: dict[str, list[float]] = {"first_pronoun": [], "pronoun": [], "other": []}
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([[start_token_id(tokenizer)] + ids])
            logp = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1].float().log_softmax(-1)
            losses = -logp[torch.arange(len(ids)), torch.tensor(ids)]
            seen = False
            for token, loss in zip(ids, losses.tolist()):
                if tokenizer.decode([token]).strip().lower() in PRONOUNS:
                    out["pronoun" if seen else "first_pronoun"].append(loss)
                    seen = True
                else:
                    out["other"].append(loss)
    return out


def next_pronouns(model, tokenizer, prompt: str) -> str:
    ids = [start_token_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        probs = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)
                      ).logits[0, -1].float().softmax(-1)
    return " ".join(f"{w.strip()} {probs[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))[0]]:.2f}"
                    for w in (" He", " She"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="+", help="crawd adapter folders")
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    data = synthetic_bios(n_train=1200, n_test=280, n_val=112, seed=0, paired=True, data_dir=args.data_dir)
    texts = list(data["validation"]["text"])
    print("| model | ppl | first pronoun (nats) | later pronouns | other tokens | share of tokens: other |"
          " after 'Alex' | after 'Mary' | after 'John' | after 'The person' |\n" + "|---" * 10 + "|")
    for folder in args.adapters:
        model = AutoCrawdModel.from_pretrained(folder)
        losses = token_losses(model, model.tokenizer, texts)
        count = sum(map(len, losses.values()))
        ppl = math.exp(sum(map(sum, losses.values())) / count)
        mean = {k: sum(v) / len(v) for k, v in losses.items()}
        print(f"| {folder} | {ppl:.2f} | {mean['first_pronoun']:.3f} | {mean['pronoun']:.3f} | {mean['other']:.3f} | "
              f"{len(losses['other']) / count:.2f} | "
              + " | ".join(next_pronouns(model, model.tokenizer, p) for p in PROMPTS) + " |")


if __name__ == "__main__":
    main()
