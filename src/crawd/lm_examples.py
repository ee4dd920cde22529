"""Causal-LM training examples: token ids and per-token labels from text, chat and instruction rows.

A label is the token id where the loss applies and -100 where it does not:

* plain text (``text``): every token;
* chat (``messages``): the conversation is rendered by the tokenizer's chat template;
  only the tokens of the assistant turns (with the template's end-of-turn markup) are
  targets. The turns are found by rendering the conversation one turn at a time, so
  the template must render a shorter conversation as a prefix of a longer one;
* instruction (``prompt``, ``completion``): the completion and a closing
  end-of-sequence token are targets, the prompt is not.

Documents longer than ``seq_len`` tokens are handled as ``long_docs`` says:

* ``"chunk"``: cut into windows of ``seq_len`` tokens that overlap by one token, so
  every token is a target exactly once (the shared token is the context of the next
  window); documents are never mixed;
* ``"pack"``: documents, each closed by the end-of-sequence token, are concatenated
  (1000 rows at a time) and cut into windows as for chunk: no padding, but a window
  can hold the end of one document and the start of the next;
* ``"truncate"``: the first ``seq_len`` tokens; the rest are dropped (and counted).

Examples left without any target (e.g. a conversation whose assistant turn was cut
off) are dropped. :func:`lm_examples` returns the examples and one line that says
what happened.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from crawd.data.corpus import corpus_kind

__all__ = ["LONG_DOCS", "lm_examples", "token_labels"]

LONG_DOCS: dict[str, str] = {
    "chunk": "cut into windows of --seq-len tokens overlapping by one token, documents never mixed",
    "pack": "concatenated (each closed by the end-of-sequence token) and cut into windows of --seq-len tokens",
    "truncate": "cut at --seq-len tokens, the rest dropped",
}
"""How documents longer than the sequence length become training examples."""

IGNORE = -100


def token_labels(row: dict[str, Any], kind: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids and labels of one row (whole, not cut); ``kind`` as :func:`crawd.data.corpus.corpus_kind`."""
    if kind == "messages":
        return _chat(row["messages"], tokenizer)
    if kind == "prompt_completion":
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        completion += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return prompt + completion, [IGNORE] * len(prompt) + completion
    ids = tokenizer(row["text"])["input_ids"]
    return ids, list(ids)


def _chat(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template, which chat data ('messages') needs: use a chat "
                         "model, or give the data as prompt/completion columns")

    def render(turns: list[dict[str, str]], prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)

    full = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError("the tokenizer's chat template does not render a conversation turn by turn (a shorter "
                             "conversation is not the start of a longer one), so the assistant turns cannot be "
                             "found: give the data as prompt/completion columns")
        spans.append((len(before), len(through)))
    try:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError("chat data needs a fast tokenizer (one with offset mappings)") from None
    labels = [token if any(a < end and b > start for start, end in spans) else IGNORE
              for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


def _windows(ids: list[int], labels: list[int], seq_len: int, long_docs: str) -> list[tuple[list[int], list[int]]]:
    if long_docs == "truncate" or len(ids) <= seq_len:
        return [(ids[:seq_len], labels[:seq_len])]
    step = seq_len - 1  # one token shared: it is the context of the next window's first target
    return [(ids[start:start + seq_len], labels[start:start + seq_len]) for start in range(0, len(ids) - 1, step)]


def lm_examples(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, seq_len: int, long_docs: str = "truncate",
                sensitive: list[int] | None = None) -> tuple[Dataset, str]:
    """Training examples (``input_ids``, ``attention_mask``, ``labels``) and a one-line summary.

    ``sensitive``: one integer per row (the sensitive attribute, for models that ask
    for it), kept per example as ``sensitive_labels``; not possible with ``"pack"``.
    """
    if long_docs not in LONG_DOCS:
        raise ValueError(f"long_docs must be one of {', '.join(LONG_DOCS)}, got {long_docs!r}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 tokens (an input and a target), got {seq_len}")
    if sensitive is not None and long_docs == "pack":
        raise ValueError("this method trains on the sensitive attribute of each example, which packing mixes: "
                         "use --long-docs chunk or truncate")
    kind = corpus_kind(dataset.column_names)
    eos = tokenizer.eos_token_id

    def encode(rows: dict[str, list]) -> dict[str, list]:
        count = len(next(iter(rows.values())))
        pairs = [token_labels({k: rows[k][i] for k in rows}, kind, tokenizer) for i in range(count)]
        return {"input_ids": [p[0] for p in pairs], "labels": [p[1] for p in pairs]}

    whole = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
    if sensitive is not None:
        whole = whole.add_column("sensitive_labels", list(sensitive))

    def cut(rows: dict[str, list]) -> dict[str, list]:
        docs = list(zip(rows["input_ids"], rows["labels"]))
        if long_docs == "pack":
            ids: list[int] = []
            labels: list[int] = []
            for doc_ids, doc_labels in docs:
                closed = eos is None or (doc_ids and doc_ids[-1] == eos)
                ids += doc_ids + ([] if closed else [eos])
                labels += doc_labels + ([] if closed else [eos if doc_labels and doc_labels[-1] != IGNORE else IGNORE])
            docs = [(ids, labels)]
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        if "sensitive_labels" in rows:
            out["sensitive_labels"] = []
        for index, (doc_ids, doc_labels) in enumerate(docs):
            for window_ids, window_labels in _windows(doc_ids, doc_labels, seq_len, long_docs):
                if all(label == IGNORE for label in window_labels[1:]):
                    continue  # no target: the first position is never predicted
                out["input_ids"].append(window_ids)
                out["attention_mask"].append([1] * len(window_ids))
                out["labels"].append(window_labels)
                if "sensitive_labels" in rows:
                    out["sensitive_labels"].append(rows["sensitive_labels"][index])
        return out

    examples = whole.map(cut, batched=True, batch_size=1000, remove_columns=whole.column_names, desc=long_docs)
    lengths = [len(ids) for ids in whole["input_ids"]]
    return examples, _summary(lengths, len(examples), seq_len, long_docs, kind)


def _summary(lengths: list[int], examples: int, seq_len: int, long_docs: str, kind: str) -> str:
    long = sum(n > seq_len for n in lengths)
    unit = "conversations" if kind == "messages" else "documents"
    head = f"{len(lengths)} {unit}, {long} longer than {seq_len} tokens"
    if long_docs == "truncate":
        dropped = sum(max(n - seq_len, 0) for n in lengths)
        how = (f"truncated to {seq_len} tokens, {dropped} of {sum(lengths)} tokens dropped "
               "(--long-docs chunk or pack keeps them)") if long else "none cut"
    else:
        how = f"{long_docs}: {LONG_DOCS[long_docs]}"
    return f"training examples: {head}; {how} -> {examples} examples"
