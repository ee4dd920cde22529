"""`crawd train` / `crawd eval` on the user's own data: text, chat and instruction files, columns by flag or YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import CSV_TEXTS, save_tiny_model, shared_data_dir
from test_corpus import CHAT_TEMPLATE, conversation, write_jsonl

from crawd.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer has a chat template."""
    folder = save_tiny_model(tmp_path_factory.mktemp("cli-data") / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


def run(argv: list[object], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def train(model: Path, data: Path, out: Path, *flags: object) -> list[object]:
    return ["train", "--model", model, "--data", data, "--out", out, "--max-steps", 2, "--batch-size", 4,
            "--seq-len", 8, "--method", "vanilla", *flags]


def test_a_text_only_csv_trains_with_task_lm_and_evaluates(model, tmp_path, capsys):
    data = tmp_path / "texts.csv"
    pd.DataFrame({"body": [CSV_TEXTS[i % len(CSV_TEXTS)] for i in range(20)]}).to_csv(data, index=False)
    code, output = run(train(model, data, tmp_path / "run", "--text-column", "body"), capsys)
    assert code == 0, output
    assert "data: texts.csv: plain text (loss on every token): 16 train, 4 test rows" in output
    assert "longer than 8 tokens; chunk: cut into windows" in output  # the default says what it does
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and "chunk" in summary["examples"]
    shared = shared_data_dir()
    benchmarks = "ppl,crows_pairs" if shared else "ppl"
    argv = ["eval", "--model", model, "--adapter", tmp_path / "run" / "adapter", "--benchmarks", benchmarks,
            "--data", data, "--text-column", "body", "--out", tmp_path / "eval",
            "--eval-options", '{"crows_pairs": {"max_pairs": 20}}']
    code, output = run(argv + (["--data-dir", shared] if shared else []), capsys)
    assert code == 0, output
    for name in ("base", "run"):
        record = json.loads((tmp_path / "eval" / "runs" / f"{name}.json").read_text())
        assert record["benchmarks"]["ppl"]["status"] == "ok"
        assert record["metrics"]["ppl"]["n"] == 4  # the file's test rows
        if shared:
            assert record["benchmarks"]["crows_pairs"]["status"] == "ok"


def test_chat_and_instruction_files_train(model, tmp_path, capsys):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation("the nurse said that", "she works")}] * 6)
    code, output = run(train(model, chat, tmp_path / "chat-run"), capsys)
    assert code == 0, output
    assert "chat messages through the tokenizer's chat template (loss on the assistant turns)" in output
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": "the engineer said that", "completion": " he studied"}] * 6)
    code, output = run(train(model, pairs, tmp_path / "pairs-run", "--long-docs", "truncate"), capsys)
    assert code == 0, output
    assert "prompt/completion pairs (loss on the completion)" in output and "none cut" in output


def test_columns_from_yaml_and_a_txt_corpus(model, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CSV_TEXTS * 3))
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {corpus}\nlong_docs: pack\n")
    code, output = run(["train", "--model", model, "--out", tmp_path / "run", "--config", config, "--max-steps", 1,
                        "--batch-size", 4, "--seq-len", 8, "--method", "vanilla"], capsys)
    assert code == 0, output
    assert "one document per line" in output and "; pack: concatenated" in output
    table = tmp_path / "table.csv"
    pd.DataFrame({"body": CSV_TEXTS, "sex": list("fmfmfm")}).to_csv(table, index=False)
    config.write_text(f"data: {table}\ntext_column: body\nsensitive_column: sex\n")
    code, output = run(["train", "--model", model, "--out", tmp_path / "run2", "--config", config, "--max-steps", 1,
                        "--batch-size", 4, "--seq-len", 8, "--method", "adversarial"], capsys)
    assert code == 0, output  # the adversary trains on the named sensitive column


CASES = {
    "columns of a built-in dataset": (["--data", "synthetic-bios", "--text-column", "body"],
                                      "--text-column name the columns of your own data file"),
    "a corpus for classification": (["--task", "classification"], "has no column 'label'"),
    "adversarial without a sensitive column": (["--method", "adversarial"],
                                               "trains on the sensitive attribute (column 'gender')"),
    "cda on chat data": (["--method", "cda", "--data", "CHAT"], "method 'cda' rewrites the text column"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_combinations_give_one_line(case, model, tmp_path, capsys):
    data = tmp_path / "texts.csv"
    pd.DataFrame({"text": CSV_TEXTS}).to_csv(data, index=False)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation("a", "b")}] * 4)
    flags, expected = CASES[case]
    argv = train(model, data, tmp_path / "run") + [chat if flag == "CHAT" else flag for flag in flags]
    code, output = run(argv, capsys)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], output
    assert not (tmp_path / "run" / "adapter").exists()
