"""lm-evaluation-harness scores crawd models through the registered model ``crawd``, offline on local tasks."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import save_tiny_model

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install crawd[lm-eval])")

import crawd  # noqa: E402
import crawd.harness  # noqa: E402,F401  (registers the model "crawd")
from crawd.models import load_model  # noqa: E402

ITEMS = [("the nurse said that", "she", "he"), ("the engineer said that", "he", "she"),
         ("the doctor is", "a man", "a woman"), ("he works as a", "nurse", "doctor")]
PROMPTS = ["the nurse said that", "he works as a"]


def write_tasks(folder: Path) -> None:
    """Three tiny tasks over local files: multiple choice, rolling log-likelihood, generation."""
    (folder / "items.csv").write_text("context,good,bad\n" + "".join(f"{c},{g},{b}\n" for c, g, b in ITEMS))
    (folder / "prompts.jsonl").write_text("".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    local = "dataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: crawd_tiny_mc\ndataset_path: csv\n" + local.format(folder / "items.csv")
        + 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{[good, bad]}}"\n'
        "doc_to_target: 0\nmetric_list:\n  - metric: acc\n")
    (folder / "rolling.yaml").write_text(
        "task: crawd_tiny_rolling\ndataset_path: json\n" + local.format(folder / "prompts.jsonl")
        + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{prompt}}"\n'
        "metric_list:\n  - metric: word_perplexity\n")
    (folder / "gen.yaml").write_text(
        "task: crawd_tiny_gen\ndataset_path: json\n" + local.format(folder / "prompts.jsonl")
        + 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: ""\n'
        "generation_kwargs:\n  until: [\".\"]\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def evaluate(folder: Path, model_args: str, tasks: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model="crawd", model_args=model_args, tasks=tasks, device="cpu", batch_size=2,
                                   task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                   log_samples=True)


def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), computed directly (no BOS: the word tokenizer has none)."""
    context_ids = tokenizer(context)["input_ids"]
    ids = tokenizer(f"{context} {continuation}")["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("harness")
    folder = save_tiny_model(root / "tiny")
    base, tokenizer = load_model(str(folder))
    model = crawd.wrap(base, tokenizer, num_heads=4)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained-looking adapter: scores differ from the base model's
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(str(root / "adapter"))
    write_tasks(root)
    return {"root": root, "folder": folder, "adapter": root / "adapter", "model": model.eval(), "tokenizer": tokenizer}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_a_crawd_adapter_is_scored_as_crawd_scores_it(setup):
    model, tokenizer = setup["model"], setup["tokenizer"]
    out = evaluate(setup["root"], f"adapter={setup['adapter']}",
                   ["crawd_tiny_mc", "crawd_tiny_rolling", "crawd_tiny_gen"])
    samples = out["samples"]
    for sample in samples["crawd_tiny_mc"]:
        context, good, bad = ITEMS[sample["doc_id"]]
        harness = [response[0][0] for response in sample["resps"]]
        direct = [loglikelihood(model, tokenizer, context, choice) for choice in (good, bad)]
        assert harness == pytest.approx(direct, abs=1e-4)
    expected_acc = sum(loglikelihood(model, tokenizer, c, g) > loglikelihood(model, tokenizer, c, b)
                       for c, g, b in ITEMS) / len(ITEMS)
    assert out["results"]["crawd_tiny_mc"]["acc,none"] == pytest.approx(expected_acc)
    for sample in samples["crawd_tiny_rolling"]:
        text = PROMPTS[sample["doc_id"]]
        ids = [tokenizer.eos_token_id] + tokenizer(text)["input_ids"]  # lm_eval's prefix token
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        direct = sum(logprobs[i - 1, ids[i]].item() for i in range(1, len(ids)))
        assert sample["resps"][0][0] == pytest.approx(direct, abs=1e-4)
    for sample in samples["crawd_tiny_gen"]:
        enc = tokenizer(PROMPTS[sample["doc_id"]], return_tensors="pt")
        new = model.generate(**enc, max_new_tokens=4)[0, enc["input_ids"].shape[1]:]
        expected = tokenizer.decode(new, skip_special_tokens=True).split(".")[0]
        assert sample["resps"][0][0] == expected


def test_a_base_model_alone_and_one_line_errors(setup):
    base = load_model(str(setup["folder"]))[0].eval()
    out = evaluate(setup["root"], f"base={setup['folder']}", ["crawd_tiny_mc"])
    sample = out["samples"]["crawd_tiny_mc"][0]
    context, good, bad = ITEMS[sample["doc_id"]]
    direct = [loglikelihood(base, setup["tokenizer"], context, choice) for choice in (good, bad)]
    assert [r[0][0] for r in sample["resps"]] == pytest.approx(direct, abs=1e-4)
    crawd_scores = [loglikelihood(setup["model"], setup["tokenizer"], context, c) for c in (good, bad)]
    assert crawd_scores != pytest.approx(direct, abs=1e-3)  # the adapter changes the scores
    with pytest.raises(ValueError, match="model_args needs adapter="):
        evaluate(setup["root"], "", ["crawd_tiny_mc"])
