"""Your own language-model data: every input kind, the bad ones, and how rows become training examples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_tokenizer
from datasets import Dataset, DatasetDict

from crawd.data import describe, from_files, load_data
from crawd.lm_examples import lm_examples
from crawd.train import Collator

TEXTS = ["the nurse said that she works with the client", "the engineer said that he studied",
         "he works as a doctor", "she was a teacher", "the man is old"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} [EOS] {% endfor %}"
                 "{% if add_generation_prompt %}assistant {% endif %}")


def chat_tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def all_texts(data: DatasetDict) -> list[str]:
    return list(data["train"]["text"]) + list(data["test"]["text"])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- reading each kind ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_text_only_table_is_a_corpus(tmp_path: Path, suffix: str) -> None:
    path, frame = tmp_path / f"data{suffix}", pd.DataFrame({"body": TEXTS})
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[suffix]()
    data = load_data(str(path), task="lm", text_column="body", test_size=0.2)
    assert data["train"].column_names == ["text"]  # no label, no sensitive column
    assert sorted(all_texts(data)) == sorted(TEXTS) and len(data["test"]) == 1
    assert describe(data) == f"data{suffix}: plain text (loss on every token): 4 train, 1 test rows"


def test_a_sensitive_column_is_kept_when_present_and_required_when_named(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    pd.DataFrame({"text": TEXTS, "sex": list("fmmfm"), "gender": list("xxxxx")}).to_csv(path, index=False)
    assert set(load_data(str(path), task="lm")["train"]["gender"]) == {"x"}  # the default name, when present
    assert set(load_data(str(path), task="lm", sensitive_column="sex")["train"]["gender"]) <= {"f", "m"}
    with pytest.raises(ValueError, match="no column 'race'.*--sensitive-column"):
        load_data(str(path), task="lm", sensitive_column="race")


@pytest.mark.parametrize("layout", ["lines", "blocks"])
def test_a_txt_file_holds_one_document_per_line_or_per_block(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "corpus.txt"
    if layout == "lines":
        path.write_text("\n".join(TEXTS) + "\n\n")  # trailing blank lines are not a separator
        expected, rule = TEXTS, "one document per line"
    else:
        path.write_text("first line\nsame document\n\n  \nsecond document\n\n\nthird\nstill third\n")
        expected, rule = ["first line\nsame document", "second document", "third\nstill third"], "blank-line"
    data = from_files(str(path), task="lm", test_size=0.3)
    assert sorted(all_texts(data)) == sorted(expected)
    assert rule in describe(data)


def test_chat_data_and_prompt_completion_data(tmp_path: Path) -> None:
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation(f"question {i}", "answer")}
                                                 for i in range(3)])
    data = load_data(str(chat), task="lm", test=str(chat))
    row = data["train"][0]
    assert row["messages"] == conversation("question 0", "answer") and row["text"] == "question 0\nanswer"
    assert "assistant turns" in describe(data)
    pairs = tmp_path / "pairs.csv"
    frame = pd.DataFrame({"prompt": ["the nurse said", "he is"], "completion": [" that she", " a man"]})
    frame.to_csv(pairs, index=False)
    data = load_data(str(pairs), task="lm", test_size=0.5)
    assert set(data["train"].column_names) == {"text", "prompt", "completion"}
    assert sorted(all_texts(data)) == ["he is a man", "the nurse said that she"]


def test_a_save_to_disk_folder(tmp_path: Path) -> None:
    Dataset.from_dict({"body": TEXTS}).save_to_disk(str(tmp_path / "one"))
    data = load_data(str(tmp_path / "one"), task="lm", text_column="body")
    assert len(data["train"]) + len(data["test"]) == 5
    saved = DatasetDict(train=Dataset.from_dict({"messages": [conversation("hi", "hello")] * 2}),
                        validation=Dataset.from_dict({"messages": [conversation("a", "b")]}))
    saved.save_to_disk(str(tmp_path / "two"))
    data = load_data(str(tmp_path / "two"), task="lm")
    assert len(data["train"]) == 2 and data["test"][0]["messages"] == conversation("a", "b")
    labelled = Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1, 0], "gender": list("fmfmf")})
    labelled = labelled.class_encode_column("label")
    labelled.save_to_disk(str(tmp_path / "three"))
    data = load_data(str(tmp_path / "three"), task="classification", test_size=0.4)
    assert data["train"].features["label"].names == ["0", "1"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a folder written by datasets' save_to_disk"):
        load_data(str(tmp_path / "plain"), task="lm")


# ---- bad data: one line each ------------------------------------------------------------------


BAD = {
    "empty file": (lambda p: p.with_suffix(".csv").write_text(""), ".csv", {}, "the train split is empty"),
    "blank txt": (lambda p: p.with_suffix(".txt").write_text("\n \n"), ".txt", {}, "the train split is empty"),
    "latin-1": (lambda p: p.with_suffix(".csv").write_bytes("text\ncaf\xe9 au lait\n".encode("latin-1")), ".csv",
                {}, "is not UTF-8 text (byte 0xe9 at position 8): save it as UTF-8"),
    "latin-1 txt": (lambda p: p.with_suffix(".txt").write_bytes("caf\xe9\n".encode("latin-1")), ".txt", {},
                    "is not UTF-8 text"),
    "no text column": (lambda p: pd.DataFrame({"body": TEXTS}).to_csv(p.with_suffix(".csv"), index=False), ".csv",
                       {}, "has no column 'text' (columns: body); set --text-column"),
    "empty text": (lambda p: pd.DataFrame({"text": ["a", " ", "b"], "gender": list("fmf")}).to_csv(
        p.with_suffix(".csv"), index=False),
                   ".csv", {}, "1 rows with an empty 'text' (first: row 1"),
    "broken jsonl": (lambda p: p.with_suffix(".jsonl").write_text('{"text": "a"}\n{"text": \n'), ".jsonl", {},
                     "is not valid JSON Lines"),
    "one document": (lambda p: p.with_suffix(".txt").write_text("only one\n"), ".txt", {},
                     "holds one document: give at least two"),
    "messages not a list": (lambda p: write_jsonl(p.with_suffix(".jsonl"), [{"messages": "hello"}]), ".jsonl", {},
                            "row 0: 'messages' must be a list of"),
    "no assistant turn": (lambda p: write_jsonl(p.with_suffix(".jsonl"), [
        {"messages": conversation("a", "b")}, {"messages": [{"role": "user", "content": "hi"}]}]), ".jsonl", {},
        "row 1 has no assistant turn"),
    "empty completion": (lambda p: pd.DataFrame({"prompt": ["a", "b"], "completion": ["c", None]}).to_csv(
        p.with_suffix(".csv"), index=False), ".csv", {}, "empty 'completion'"),
    "one class": (lambda p: pd.DataFrame({"text": TEXTS, "label": ["x"] * 5, "gender": list("fmfmf")}).to_csv(
        p.with_suffix(".csv"), index=False), ".csv", {"task": "classification"},
        "column 'label' has one class ('x'); classification needs at least two"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_gives_one_clear_line(tmp_path: Path, case: str) -> None:
    write, suffix, options, expected = BAD[case]
    write(tmp_path / "data")
    with pytest.raises(ValueError) as info:
        load_data(str((tmp_path / "data").with_suffix(suffix)), **{"task": "lm", **options})
    assert expected in str(info.value) and "\n" not in str(info.value)


# ---- rows -> training examples ----------------------------------------------------------------


def targets(example: dict, tokenizer) -> str:
    """The tokens the loss applies to (the first position is never a target: labels are shifted)."""
    return tokenizer.decode([t for t, label in zip(example["input_ids"][1:], example["labels"][1:]) if label != -100])


def test_chat_loss_is_on_the_assistant_turns_only() -> None:
    tokenizer = chat_tokenizer()
    turns = [{"role": "system", "content": "the"}, *conversation("the nurse said", "she works"),
             *conversation("and he", "he studied")]
    examples, _ = lm_examples(Dataset.from_dict({"messages": [turns]}), tokenizer, 64)
    assert targets(examples[0], tokenizer) == "she works [EOS] he studied [EOS]"
    assert tokenizer.decode(examples[0]["input_ids"]).startswith("[UNK] the [EOS] [UNK] the nurse said")
    with pytest.raises(ValueError, match="no chat template"):
        lm_examples(Dataset.from_dict({"messages": [turns]}), make_tokenizer(), 64)


def test_prompt_completion_loss_is_on_the_completion_only() -> None:
    tokenizer = make_tokenizer()
    rows = Dataset.from_dict({"prompt": ["the nurse said that"], "completion": ["she works"]})
    examples, _ = lm_examples(rows, tokenizer, 64)
    assert targets(examples[0], tokenizer) == "she works [EOS]"
    assert tokenizer.decode(examples[0]["input_ids"]) == "the nurse said that she works [EOS]"


def test_long_documents_are_chunked_packed_or_truncated_and_it_is_said() -> None:
    tokenizer = make_tokenizer()
    words = "the nurse said that she works with the client".split()  # 9 tokens
    rows = Dataset.from_dict({"text": [" ".join(words), "he is"]})
    chunked, note = lm_examples(rows, tokenizer, 4, "chunk")
    assert [tokenizer.decode(e) for e in chunked["input_ids"]] == [
        "the nurse said that", "that she works with", "with the client", "he is"]
    assert "2 documents, 1 longer than 4 tokens; chunk" in note and note.endswith("-> 4 examples")
    # every token after the first of each document is a target exactly once
    assert [targets(e, tokenizer) for e in chunked] == ["nurse said that", "she works with", "the client", "is"]
    packed, note = lm_examples(rows, tokenizer, 4, "pack")
    assert " ".join(targets(e, tokenizer) for e in packed) == (
        "nurse said that she works with the client [EOS] he is [EOS]")
    assert max(len(e) for e in packed["input_ids"]) == 4 and "pack" in note
    truncated, note = lm_examples(rows, tokenizer, 4, "truncate")
    assert [tokenizer.decode(e) for e in truncated["input_ids"]] == ["the nurse said that", "he is"]
    assert "truncated to 4 tokens, 5 of 11 tokens dropped" in note
    with pytest.raises(ValueError, match="long_docs must be one of chunk, pack, truncate"):
        lm_examples(rows, tokenizer, 4, "wrap")


def test_examples_without_a_target_are_dropped_and_sensitive_ids_follow_the_windows() -> None:
    tokenizer = chat_tokenizer()
    long_question = conversation("the nurse said that she works with the client", "old")
    rows = Dataset.from_dict({"messages": [long_question, conversation("he", "she")]})
    truncated, note = lm_examples(rows, tokenizer, 6, "truncate", sensitive=[0, 1])
    assert len(truncated) == 1 and list(truncated["sensitive_labels"]) == [1]  # the first lost its answer
    chunked, _ = lm_examples(rows, tokenizer, 6, "chunk", sensitive=[0, 1])
    # the question's windows have no target and are dropped; the answer's window keeps the row's id
    assert list(chunked["sensitive_labels"]) == [0, 1] and targets(chunked[0], tokenizer) == "old [EOS]"
    with pytest.raises(ValueError, match="packing mixes"):
        lm_examples(rows, tokenizer, 6, "pack", sensitive=[0, 1])


def test_collator_pads_token_labels_with_ignore() -> None:
    tokenizer = make_tokenizer()
    examples, _ = lm_examples(Dataset.from_dict({"prompt": ["the nurse said", "he"], "completion": ["she", "is"]}),
                              tokenizer, 16)
    batch = Collator(tokenizer, "lm")([dict(examples[i]) for i in range(2)])
    assert batch["labels"].tolist()[1] == [-100, tokenizer.convert_tokens_to_ids("is"), 2, -100, -100]
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([5, 3]))
