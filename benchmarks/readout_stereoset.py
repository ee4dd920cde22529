"""What a gendered-word readout does to StereoSet's gender rows: LMS and SS of saved models as they are,
with their readout acting only where the text has not given a gender yet, and with it removed.

    python benchmarks/readout_stereoset.py runs/mitigation/runs/vanilla-seed0/adapter \\
        runs/mitigation/runs/crawd-neutral-r3-seed0/adapter --data-dir ../shared/data

Folders are crawd adapters (``crawd train`` / ``crawd compare`` output); a model without a readout
is scored as it is only. The rows are StereoSet's gender rows, intra- and intersentence.
"""

from __future__ import annotations

import argparse

import torch

from crawd import AutoCrawdModel
from crawd.counterfactual import gender_giving_tokens
from crawd.metrics.stereoset import stereoset


def scores(model, data_dir: str) -> str:
    result = stereoset(model, model.tokenizer, data_dir, bias_types=["gender"], progress=False, n_boot=10)
    return " | ".join(f"{result[split]['overall'][m]['value']:.1f}" for split in ("intrasentence", "intersentence", "all")
                      for m in ("lms", "ss"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="+", help="crawd adapter folders")
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()
    print("| model | readout | intra LMS | intra SS | inter LMS | inter SS | LMS | SS |\n|---|---|---|---|---|---|---|---|")
    for folder in args.adapters:
        model = AutoCrawdModel.from_pretrained(folder).eval()
        readout = model.readout
        if readout is None:
            print(f"| {folder} | none | {scores(model, args.data_dir)} |", flush=True)
            continue
        gives = gender_giving_tokens(model.tokenizer, model.hf.get_output_embeddings().out_features,
                                     model.objective.swaps, model.objective.names)
        for label, gate in (("everywhere", None), ("where the gender is open", gives)):
            readout.gives_gender = gate
            print(f"| {folder} | {label} | {scores(model, args.data_dir)} |", flush=True)
        with torch.no_grad():
            for weight in readout.parameters():
                weight.zero_()
        print(f"| {folder} | removed | {scores(model, args.data_dir)} |", flush=True)


if __name__ == "__main__":
    main()
