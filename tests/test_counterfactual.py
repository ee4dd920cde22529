"""Counterfactual twins, the consistency and equalizing losses: hand-checked values, gradients, training."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import batch as tokenized_batch, tiny_model
from datasets import Dataset
from transformers import TrainingArguments

import crawd
from crawd import CrawdConfig
from crawd.counterfactual import (DebiasCollator, GenderedClasses, align, bipartite_groups, gender_giving_tokens,
                                  spelling_ends, symmetric_kl, token_pairs)
from crawd.mitigation.lexicon import gender_lexicon, unnamed
from crawd.train import Collator, CrawdTrainer, TrainSettings, train


def test_alignment_of_a_swap_that_changes_the_token_count():
    # "Jennifer" (3 tokens) -> "John" (1): the twin's first token aligns with the name's last token
    assert align([7, 8, 9, 4, 5], [1, 4, 5]) == [2, 3, 4]
    assert align([3, 13, 17, 6, 22], [3, 13, 17, 5, 22]) == [0, 1, 2, 3, 4]  # "... she works" -> "... he works"


def test_bipartite_groups_merge_the_ambiguous_pronouns():
    his, her, him, hers, he, she = 1, 2, 3, 4, 5, 6
    groups = bipartite_groups([(his, her), (him, her), (his, hers), (he, she)])
    assert sorted(groups) == [([his, him], [her, hers]), ([he], [she])]
    assert bipartite_groups([(1, 2), (2, 3), (3, 1)]) == []  # an odd cycle has no two sides


def test_class_logprobs_and_swap_by_hand():
    classes = GenderedClasses(6, [([1], [2]), ([3, 4], [5])], word_tokens={1, 2, 3, 4, 5})
    logits = torch.tensor([0.0, 1.0, 2.0, 0.5, -1.0, 0.25])
    logp = logits.log_softmax(-1)
    got = classes.class_logprobs(logits)
    assert classes.kept.tolist() == [0, 1, 2, 3, 5]
    expected = torch.stack([logp[0], logp[1], logp[2], torch.logaddexp(logp[3], logp[4]), logp[5]])
    assert torch.allclose(got, expected)
    assert torch.allclose(got.exp().sum(), torch.tensor(1.0))
    assert classes.swap.tolist() == [0, 2, 1, 4, 3]
    assert classes.word_pairs.tolist() == [[1, 2], [3, 4]]
    # the equalizing term's ratios, read from the pairs' logits only, are those of the class log-probabilities
    batch = torch.randn(2, 3, 6)
    full = classes.class_logprobs(batch)
    expected_ratios = full[..., classes.word_pairs[:, 0]] - full[..., classes.word_pairs[:, 1]]
    assert torch.allclose(classes.pair_logratios(batch), expected_ratios, atol=1e-6)
    assert torch.allclose(classes.pair_logratios(logits), torch.stack([logp[1] - logp[2],
                                                                        torch.logaddexp(logp[3], logp[4]) - logp[5]]))


def test_symmetric_kl_by_hand():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
                      + 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))
    assert symmetric_kl(p.log(), q.log()).item() == pytest.approx(expected)


def objective_model(tokenizer, **fields):
    return crawd.wrap(tiny_model("llama"), tokenizer, CrawdConfig(num_heads=4, **fields))


def collator(tokenizer, twins=True, probes=False, probe_subject="name"):
    swaps, names = gender_lexicon()
    return DebiasCollator(Collator(tokenizer, "lm"), tokenizer, swaps, names, "lm", twins, probes, probe_subject)


def test_twin_collator_swaps_and_aligns(tokenizer):
    features = [dict(tokenizer(t)) for t in ("the nurse said that she works with her client", "a man is a doctor")]
    batch = collator(tokenizer)(features)
    twin = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["twin_input_ids"], batch["twin_attention_mask"])]
    assert twin == ["the nurse said that he works with his client", "a woman is a doctor"]
    assert batch["twin_source"][0, :9].tolist() == list(range(9)) and batch["twin_source"][1, 5:].eq(-1).all()
    assert torch.equal(batch["twin_labels"][1, :5], batch["twin_input_ids"][1, :5])
    assert batch["twin_labels"][1, 5:].eq(-100).all()


def test_probes_are_the_prefixes_before_the_first_gendered_word(tokenizer):
    features = [dict(tokenizer(t)) for t in ("the nurse said that she works", "he works as a doctor")]
    batch = collator(tokenizer, twins=False, probes=True)(features)
    probes = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["probe_input_ids"],
                                                                       batch["probe_attention_mask"])]
    assert probes == ["the nurse said that", ""]  # a row that opens with a gendered word has no probe
    assert "twin_input_ids" not in batch
    swaps, names = gender_lexicon()
    quarter = DebiasCollator(Collator(tokenizer, "lm"), tokenizer, swaps, names, "lm", False, True, probe_share=0.25)
    features = [dict(tokenizer(t)) for t in ("the nurse said that she works", "the doctor said that he works") * 4]
    assert quarter(features)["probe_input_ids"].shape[0] == 2  # ceil(0.25 * 8) rows get a probe
    person = collator(tokenizer, twins=False, probes=True, probe_subject="person")
    person.text = lambda ids: "Mary Smith said that she works"  # names are not in the tiny vocabulary
    assert person.probe_ids([0]) == person.encode("The person said that")


def test_person_probes_name_nobody():
    _, names = gender_lexicon()
    text = "Based in Paris, Mary Smith is a nurse. Today Mary works late, and John helps her."
    assert unnamed(text, names) == ("Based in Paris, the person is a nurse. Today the person works late, "
                                    "and the person helps her.")
    assert unnamed("Mary is a nurse.", names) == "The person is a nurse."


def test_consistency_at_a_neutral_position_is_the_kl_to_the_swapped_distribution(tokenizer):
    model = objective_model(tokenizer, counterfactual=1.0)
    objective = model.objective
    he, she = tokenizer.convert_tokens_to_ids(["he", "she"])
    logits = torch.randn(1, 1, len(tokenizer))
    logits[0, 0, he], logits[0, 0, she] = 2.0, 0.0
    p = objective.classes.class_logprobs(logits[0, 0])
    q = p[objective.classes.swap]
    term = objective.loss(logits, torch.ones(1, 1), logits, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long))
    assert term.item() == pytest.approx(symmetric_kl(p, q).item())  # twin prefix = row prefix: P(he) = P(she)
    # equal he / she (and every other pair) gives no term
    flat = torch.zeros(1, 1, len(tokenizer))
    assert objective.loss(flat, torch.ones(1, 1), flat, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long)) == 0


def test_equalizing_term_by_hand(tokenizer):
    model = objective_model(tokenizer, equalize=0.5, equalize_positions="all")
    objective = model.objective
    pairs = token_pairs(tokenizer, [("he", "she")])
    assert pairs == [tuple(sorted(tokenizer.convert_tokens_to_ids(["he", "she"])))]
    logits = torch.zeros(2, 3, len(tokenizer))
    he = tokenizer.convert_tokens_to_ids("he")
    logits[0, 1, he] = math.log(4.0)  # one position where P(he) = 4 P(she); every other pair equal
    term = objective.loss(logits, torch.ones(2, 3))
    expected = 0.5 * math.log(4.0) / (6 * len(objective.classes.word_pairs))
    assert term.item() == pytest.approx(expected, rel=1e-5)
    # the neutral scope reads the probes only: the rows' positions do not count
    neutral = objective_model(tokenizer, equalize=0.5).objective
    flat = torch.zeros(1, 2, len(tokenizer))
    assert neutral.loss(logits, torch.ones(2, 3), probe_logits=flat, probe_mask=torch.ones(1, 2)).item() == 0
    assert neutral.loss(flat, torch.ones(1, 2), probe_logits=logits, probe_mask=torch.ones(2, 3)).item() == \
        pytest.approx(expected, rel=1e-5)


def test_open_equalizing_and_neutralizing_by_hand(tokenizer):
    objective = objective_model(tokenizer, equalize=0.5, equalize_positions="open", neutralize=0.2).objective
    paired = objective.classes.pair_tokens[objective.classes.pair_valid].unique()
    he, she = tokenizer.convert_tokens_to_ids(["he", "she"])
    logits = torch.zeros(1, 2, len(tokenizer))
    logits[..., paired] = -30.0  # the second position: no gendered word is likely
    logits[0, 0, he], logits[0, 0, she] = math.log(3.0), 0.0  # the first: P(he) = 3 P(she)
    mass = 4.0 / (len(tokenizer) - len(paired) + 4.0)
    swap_kl = (0.75 - 0.25) * math.log(3.0)
    term = objective.loss(torch.zeros(1, 1, len(tokenizer)), torch.ones(1, 1), probe_logits=logits,
                          probe_mask=torch.ones(1, 2))
    # the second position weighs ~e-30 in the equalizing mean; neutralizing: -log(1 - P(gendered)) summed per probe
    assert term.item() == pytest.approx(0.5 * swap_kl + 0.2 * -math.log(1 - mass), rel=1e-4)
    # the rows' own positions never count: only probes leave the gender open
    assert objective.loss(logits, torch.ones(1, 2)).item() == 0
    with pytest.raises(ValueError, match="neutralize applies to causal LMs only"):
        crawd.wrap(tiny_model("bert", "classification"), tokenizer, CrawdConfig(num_heads=4, neutralize=1.0))
    with pytest.raises(ValueError, match="equalize_through='readout' applies to causal LMs only"):
        crawd.wrap(tiny_model("bert", "classification"), tokenizer,
                   CrawdConfig(num_heads=4, equalize=1.0, equalize_positions="open", equalize_through="readout"))


def test_rows_and_twins_share_one_backbone_pass_and_probes_take_their_own(tokenizer, monkeypatch):
    model = crawd.adapt(tiny_model("llama"), tokenizer, CrawdConfig(counterfactual=1.0, equalize=1.0,
                                                                     lora_dropout=0.0)).train()
    batch = collator(tokenizer, twins=True, probes=True)(
        [dict(tokenizer(t)) for t in ("the nurse said that she works", "a doctor is a man")])
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    loss = model(**batch).loss
    assert len(calls) == 2  # rows with twins; the (shorter) probes

    def logits(ids, mask):
        return model.head(encode(ids, mask).last_hidden_state, mask)

    own = logits(batch["input_ids"], batch["attention_mask"])
    twin = logits(batch["twin_input_ids"], batch["twin_attention_mask"])
    probe = logits(batch["probe_input_ids"], batch["probe_attention_mask"])
    sums = [torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
            for out, labels in ((own, batch["labels"]), (twin, batch["twin_labels"]))]
    count = sum((labels[:, 1:] != -100).sum() for labels in (batch["labels"], batch["twin_labels"]))
    term = model.objective.loss(own, batch["attention_mask"], twin, batch["twin_attention_mask"],
                                batch["twin_source"], probe, batch["probe_attention_mask"])
    assert loss.item() == pytest.approx((sum(sums) / count + term).item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["cross", "self"])
def test_equalizing_at_every_position_adds_its_term_in_either_mode(tokenizer, mode):
    model = objective_model(tokenizer, mode=mode, equalize=1.0, equalize_positions="all", lora_dropout=0.0)
    plain = objective_model(tokenizer, mode=mode, lora_dropout=0.0)
    plain.load_state_dict(model.state_dict())
    encoded = tokenizer(["the nurse said that she works"], return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    model.train(), plain.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    without = plain(input_ids=ids, attention_mask=mask, labels=ids)
    term = model.objective.loss(without.logits, mask)
    assert term.item() > 0
    assert loss.item() == pytest.approx((without.loss + term).item(), rel=1e-5)


@pytest.mark.parametrize("fields", [{"counterfactual": 1.0}, {"counterfactual": 1.0, "head": "residual"},
                                    {"counterfactual": 1.0, "mode": "self"}, {"equalize": 1.0},
                                    {"equalize": 1.0, "equalize_positions": "all", "counterfactual": 1.0},
                                    {"equalize": 1.0, "equalize_positions": "open", "neutralize": 1.0, "mode": "self"}])
def test_terms_reach_the_trained_weights_and_leave_inference_alone(tokenizer, fields):
    model = objective_model(tokenizer, **fields)
    plain = objective_model(tokenizer, **{k: v for k, v in fields.items() if k in ("head", "mode")})
    batch = model.objective.collator(Collator(tokenizer, "lm"), tokenizer)(
        [dict(tokenizer(t)) for t in ("she said that the nurse", "the nurse said that he")])
    model.train()
    torch.manual_seed(0)
    loss = model(**batch).loss
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(p.requires_grad for n, p in model.named_parameters() if n in grads)
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    enc = tokenizer(["the nurse said that she"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, plain(**enc).logits)


def test_the_term_is_added_to_the_task_loss(tokenizer):
    model = objective_model(tokenizer, counterfactual=2.0).train()
    batch = collator(tokenizer)([dict(tokenizer("the nurse said that she works"))])
    model.config.counterfactual = model.objective.counterfactual = 0.0
    model.base.eval(), model.block.eval()  # no dropout: the two passes see the same network
    base = model(**batch).loss
    model.objective.counterfactual = 2.0
    assert model(**batch).loss > base


def test_classifier_consistency_is_the_kl_between_the_twins(tokenizer):
    model = crawd.wrap(tiny_model("bert", "classification"), tokenizer, CrawdConfig(num_heads=4, counterfactual=1.0))
    logits, twin = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    term = model.objective.loss(logits, torch.ones(1, 4), twin)
    assert term.item() == pytest.approx(symmetric_kl(logits.log_softmax(-1), twin.log_softmax(-1)).item())


def test_training_puts_the_twins_in_the_batch(tmp_path, tokenizer):
    model = crawd.adapt(tiny_model("llama"), tokenizer, CrawdConfig(counterfactual=1.0))  # no H_b pass to count
    rows = []
    original = model.encode
    model.encode = lambda ids, mask, **kw: rows.append(ids.shape[0]) or original(ids, mask, **kw)
    texts = ["the nurse said that she works", "he works as a doctor"] * 8
    data = Dataset.from_dict({"text": texts, "label": [0] * 16, "gender": ["x"] * 16})
    result = train(model, tokenizer, data, tmp_path, TrainSettings(max_steps=2, batch_size=4, save_steps=2,
                                                                     progress=False))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert rows[:2] == [4, 4]  # batch_size counts the rows: 2 examples + their 2 twins
    loaded = crawd.load(tiny_model("llama"), tokenizer, tmp_path / "adapter")
    assert loaded.config.counterfactual == 1.0 and loaded.objective is not None


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="counterfactual must be a weight >= 0"):
        CrawdConfig(counterfactual=-1)
    with pytest.raises(ValueError, match="equalize_positions must be one of"):
        CrawdConfig(equalize_positions="some")
    with pytest.raises(ValueError, match="neutralize must be a weight >= 0"):
        CrawdConfig(neutralize=-0.5)
    with pytest.raises(ValueError, match=r"probe_share must be in \(0, 1\], got 0"):
        CrawdConfig(probe_share=0)
    with pytest.raises(ValueError, match=r"probe_share must be in \(0, 1\], got 1.5"):
        CrawdConfig(probe_share=1.5)


def test_a_classifier_trains_with_its_twins(tmp_path, tokenizer):
    model = crawd.adapt(tiny_model("bert", "classification", num_labels=2), tokenizer, CrawdConfig(counterfactual=1.0))
    texts = ["she is a nurse", "he works as a doctor"] * 8
    data = Dataset.from_dict({"text": texts, "label": [0, 1] * 8, "gender": ["f", "m"] * 8})
    result = train(model, tokenizer, data, tmp_path, TrainSettings(max_steps=2, batch_size=4, save_steps=2,
                                                                     progress=False))
    assert result.steps == 2 and math.isfinite(result.final_loss)


def loss_and_gradients(model, batch):
    """The training loss of ``batch`` and every trainable weight's gradient of it."""
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


READOUT = {"equalize": 1.0, "equalize_positions": "open", "neutralize": 1.0, "probe_subject": "person",
           "neutralize_through": "readout"}
EVENING = {**READOUT, "equalize_through": "readout"}


def test_the_readout_shifts_both_sides_of_each_pair_alike_by_hand(tokenizer):
    model = objective_model(tokenizer, mode="self", **READOUT).eval()
    readout = model.readout
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("he", "she", "his", "her", "him", "man", "woman")}
    assert set(ids.values()) <= set(readout.tokens.tolist())
    hidden, logits = torch.randn(2, 3, 32), torch.randn(2, 3, len(tokenizer))
    assert torch.equal(readout(hidden, logits), logits)  # zero-started: exactly the base
    with torch.no_grad():
        readout.delta.copy_(torch.randn_like(readout.delta))
    out = readout(hidden, logits)
    shift = {w: out[..., t] - logits[..., t] for w, t in ids.items()}
    pair = {t: p for t, p in zip(readout.tokens.tolist(), readout.pair_of_token.tolist())}
    assert torch.allclose(shift["he"], hidden @ readout.delta[pair[ids["he"]]], atol=1e-6)
    for a, b in (("he", "she"), ("his", "her"), ("him", "her"), ("man", "woman")):
        assert torch.allclose(shift[a], shift[b], atol=1e-6)  # the same for both genders
    assert not torch.allclose(shift["he"], shift["man"])  # one row per pair
    others = [t for t in range(len(tokenizer)) if t not in readout.tokens.tolist()]
    assert torch.equal(out[..., others], logits[..., others])


def test_the_gate_evens_each_pair_by_hand(tokenizer):
    model = objective_model(tokenizer, mode="self", **EVENING).eval()
    readout = model.readout
    assert readout.parts == ("delta", "gate")
    hidden, logits = torch.randn(2, 3, 32), torch.randn(2, 3, len(tokenizer))
    assert torch.equal(readout(hidden, logits), logits)  # zero-started: exactly the base
    he, she, his, him, her, hers = tokenizer.convert_tokens_to_ids(["he", "she", "his", "him", "her", "hers"])
    hidden = torch.zeros(2, 3, 32)
    hidden[0, :, 0], hidden[1, :, 0] = 1.0, 0.5  # g = 1 in the first row, 0.5 in the second
    with torch.no_grad():
        readout.gate[0] = 1.0
    out = readout(hidden, logits)
    for sides in (([he], [she]), ([his, him], [her, hers])):  # the readout's sides
        before = [logits[..., side].logsumexp(-1) for side in sides]
        after = [out[..., side].logsumexp(-1) for side in sides]
        even = torch.logaddexp(*before) - math.log(2)
        assert torch.allclose(after[0][0], even[0], atol=1e-5) and torch.allclose(after[1][0], even[0], atol=1e-5)
        for b, a in zip(before, after):  # halfway in log-probability at g = 0.5
            assert torch.allclose(a[1], (b[1] + even[1]) / 2, atol=1e-5)
    assert torch.allclose(out[..., his] - logits[..., his], out[..., him] - logits[..., him])  # a side moves as one
    others = [t for t in range(len(tokenizer)) if t not in readout.tokens.tolist()]
    assert torch.equal(out[..., others], logits[..., others])


def test_through_the_readout_the_equalizing_term_trains_the_gate_alone_and_probes_need_no_backward(tokenizer):
    model = objective_model(tokenizer, mode="self", lora_dropout=0.0, dropout=0.0, **EVENING).train()
    batch = model.objective.collator(Collator(tokenizer, "lm"), tokenizer)(
        [dict(tokenizer(t)) for t in ("the nurse said that she works", "a doctor is a man")])
    with torch.no_grad():  # a state where the next gendered word is not already even
        model.readout.gate.normal_(std=0.5)
    assert not model.objective.probes_train_model

    with_terms, grads = loss_and_gradients(model, batch)
    model.objective.equalize = 0.0
    without_equalizing, no_eq = loss_and_gradients(model, batch)
    model.objective.neutralize = 0.0
    task_alone, task = loss_and_gradients(model, batch)
    assert with_terms > without_equalizing > task_alone
    assert not torch.allclose(grads["readout.gate"], no_eq["readout.gate"])  # the equalizing term moves the gate
    assert torch.allclose(grads["readout.delta"], no_eq["readout.delta"], atol=1e-7)  # and not the shared shift
    for name in task:  # neither term reaches a weight outside the readout
        if not name.startswith("readout."):
            assert torch.allclose(grads[name], task[name], atol=1e-7), name


@pytest.mark.parametrize("mode,head,equalize", [("cross", "concat", 1.0), ("cross", "residual", 0.0),
                                                ("self", "concat", 1.0), ("self", "concat", 0.0)])
def test_through_the_readout_the_neutralizing_term_trains_the_readout_alone(tokenizer, mode, head, equalize):
    model = objective_model(tokenizer, mode=mode, head=head, lora_dropout=0.0, dropout=0.0,
                            **{**READOUT, "equalize": equalize}).train()
    batch = model.objective.collator(Collator(tokenizer, "lm"), tokenizer)(
        [dict(tokenizer(t)) for t in ("the nurse said that she works", "a doctor is a man")])

    with_term, grads = loss_and_gradients(model, batch)
    model.objective.neutralize = 0.0
    without, other_grads = loss_and_gradients(model, batch)
    assert with_term > without  # the neutralizing term is there ...
    assert grads.keys() == other_grads.keys()
    for name in grads:
        if name == "readout.delta":  # ... and it moves the readout
            assert not torch.allclose(grads[name], other_grads[name])
        else:  # and nothing else
            assert torch.allclose(grads[name], other_grads[name], atol=1e-7), name


@pytest.mark.parametrize("fields", [EVENING, {}])
def test_the_readout_is_clipped_apart_from_the_body(tokenizer, tmp_path, fields):
    model = objective_model(tokenizer, mode="self", **fields)
    trainer = CrawdTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), max_grad_norm=1.0,
                                                               use_cpu=True, report_to=[]))
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("readout.")]
    readout = list(model.readout.parameters()) if fields else []
    for p in body:  # the body's gradient has norm 2
        p.grad = torch.full_like(p, 2.0 / math.sqrt(sum(q.numel() for q in body)))
    for p in readout:  # the readout's has norm 30 (early in training it is 5 to 15 times the body's)
        p.grad = torch.full_like(p, 30.0 / math.sqrt(sum(q.numel() for q in readout)))
    norm = trainer._clip_grad_norm(model)
    body_norm = torch.cat([p.grad.flatten() for p in body]).norm().item()
    if fields:  # each clipped to 1 on its own; the norm returned (and logged) is the body's before clipping
        assert norm.item() == pytest.approx(2.0, rel=1e-5)
        assert body_norm == pytest.approx(1.0, rel=1e-5)
        assert torch.cat([p.grad.flatten() for p in readout]).norm().item() == pytest.approx(1.0, rel=1e-5)
    else:  # no readout: the stock clip of the whole model
        assert model.readout is None and norm.item() == pytest.approx(2.0, rel=1e-5)
        assert body_norm == pytest.approx(1.0, rel=1e-5)


def test_spelling_ends_by_hand():
    spellings = torch.tensor([[7, 8, 9], [7, 5, -1]])  # a word in three tokens, another in two
    ids = torch.tensor([[1, 7, 8, 9, 7, 5], [7, 8, 1, 9, 7, 7]])
    assert spelling_ends(ids, spellings, (2, 3)).tolist() == [[False, False, False, True, False, True], [False] * 6]


def test_the_tokens_that_give_a_gender(tokenizer):
    swaps, names = gender_lexicon()
    gives = gender_giving_tokens(tokenizer, len(tokenizer), swaps, names)
    marked = set(tokenizer.convert_ids_to_tokens(gives.nonzero().flatten().tolist()))
    assert {"he", "she", "his", "her", "him", "man", "woman"} <= marked
    assert not marked & {"the", "nurse", "they", "said", "[PAD]", "[EOS]"}
    readout = objective_model(tokenizer, readout_where="open", **READOUT).readout
    ids = tokenized_batch(tokenizer, texts=("the nurse said that she works", "a man said that he"))["input_ids"]
    whole = readout.open_positions(ids)
    assert whole.tolist() == [[True] * 4 + [False] * 2, [True, False, False, False, False, False]]
    state = {}  # cached generation: a token at a time, what came before carried in the state
    assert torch.equal(torch.cat([readout.open_positions(ids[:, i:i + 1], state) for i in range(6)], 1), whole)


@pytest.mark.parametrize("mode,head", [("self", "concat"), ("cross", "concat"), ("cross", "residual")])
def test_an_open_readout_acts_only_before_the_text_gives_a_gender(tokenizer, mode, head):
    model = objective_model(tokenizer, mode=mode, head=head, readout_where="open", **READOUT).eval()
    enc = tokenized_batch(tokenizer, texts=("the nurse said that she works with the client",))
    with torch.no_grad():
        model.readout.delta.normal_()
        gated = model(**enc).logits
        model.readout.gives_gender = None  # the same readout, everywhere
        everywhere = model(**enc).logits
        model.readout.delta.zero_()
        without = model(**enc).logits
    # "the nurse said that" leaves the gender open; from "she" on the text has given it
    assert torch.equal(gated[0, :4], everywhere[0, :4]) and not torch.allclose(gated[0, :4], without[0, :4])
    assert torch.equal(gated[0, 4:], without[0, 4:])


@pytest.mark.parametrize("mode,where,fields", [("cross", "all", READOUT), ("cross", "open", READOUT),
                                               ("self", "all", READOUT), ("self", "open", READOUT),
                                               ("self", "open", EVENING), ("cross", "all", EVENING)])
def test_a_trained_readout_is_saved_loaded_and_used_in_cached_generation(tmp_path, tokenizer, mode, where, fields):
    model = objective_model(tokenizer, mode=mode, readout_where=where, **fields).eval()
    enc = tokenized_batch(tokenizer, texts=("the nurse said that", "he works as a doctor in the"), side="left")
    with torch.no_grad():
        before = model(**enc).logits
        for weight in model.readout.parameters():
            weight.normal_()
        after = model(**enc).logits
    assert (after - before).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    loaded = crawd.load(tiny_model("llama"), tokenizer, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, after)
    cached = loaded.generate(**enc, max_new_tokens=6, eos_token_id=-1)
    assert torch.equal(cached, loaded.generate(**enc, max_new_tokens=6, eos_token_id=-1, use_cache=False))


def test_the_readout_needs_a_term_through_it():
    with pytest.raises(ValueError, match="neutralize_through='readout' trains the readout with the neutralizing "
                                         "term: set neutralize > 0"):
        CrawdConfig(neutralize_through="readout")
    with pytest.raises(ValueError, match="neutralize_through must be one of 'model', 'readout', got 'body'"):
        CrawdConfig(neutralize=1.0, neutralize_through="body")
    with pytest.raises(ValueError, match="readout_where='open' places the readout of neutralize_through='readout' "
                                         "or equalize_through='readout': set one of them"):
        CrawdConfig(neutralize=1.0, readout_where="open")
    with pytest.raises(ValueError, match="equalize_through='readout' trains the readout with the equalizing term where "
                                         "the gender is open: set equalize > 0 and equalize_positions='open'"):
        CrawdConfig(equalize=1.0, equalize_through="readout")
    with pytest.raises(ValueError, match="equalize_through must be one of 'model', 'readout', got 'head'"):
        CrawdConfig(equalize=1.0, equalize_positions="open", equalize_through="head")
    evening_only = CrawdConfig(equalize=1.0, equalize_positions="open", equalize_through="readout", readout_where="open")
    assert evening_only.has_readout and not CrawdConfig().has_readout


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_probe_gradient_reaches_only_the_last_layers_asked(tokenizer, arch):
    fields = {"mode": "self", "equalize": 1.0, "equalize_positions": "open", "lora_dropout": 0.0}
    model = crawd.wrap(tiny_model(arch), tokenizer, CrawdConfig(num_heads=4, probe_backward_layers=1, **fields))
    full = crawd.wrap(tiny_model(arch), tokenizer, CrawdConfig(num_heads=4, **fields))
    batch = model.objective.collator(Collator(tokenizer, "lm"), tokenizer)(
        [dict(tokenizer(t)) for t in ("the nurse said that she works", "a doctor is a man")])
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    for p in lora_b.values():  # peft starts B at zero: give the probes' gradient a path into every layer
        torch.nn.init.normal_(p, std=0.02)
    full.load_state_dict(model.state_dict())
    layer_of = {n: int(n.split(".layers.")[-1].split(".")[0]) if ".layers." in n
                else int(n.split(".h.")[-1].split(".")[0]) for n in lora_b}
    last = max(layer_of.values())

    def probe_gradients(wrapped):
        wrapped.train()
        wrapped.zero_grad()
        torch.manual_seed(0)  # GPT-2's own dropout draws alike in both models
        with_terms = wrapped(**batch).loss
        with_terms.backward()
        grads = {n: p.grad.clone() for n, p in wrapped.named_parameters() if "lora_B" in n}
        wrapped.zero_grad()
        wrapped.objective.equalize = 0.0
        torch.manual_seed(0)
        wrapped(**batch).loss.backward()
        wrapped.objective.equalize = 1.0
        return with_terms.item(), {n: grads[n] - p.grad for n, p in wrapped.named_parameters() if "lora_B" in n}

    loss, cut = probe_gradients(model)
    full_loss, uncut = probe_gradients(full)
    assert loss == pytest.approx(full_loss, rel=1e-6)  # the same values; only the backward pass stops early
    for name, layer in layer_of.items():
        if layer < last:
            assert cut[name].abs().max() == 0, name
            assert uncut[name].abs().max() > 0, name
    assert any(cut[n].abs().max() > 0 for n, layer in layer_of.items() if layer == last)
    with pytest.raises(ValueError, match="probe_backward_layers=9, but the model has 2 layers"):
        crawd.wrap(tiny_model(arch), tokenizer, CrawdConfig(num_heads=4, probe_backward_layers=9, **fields))
    with pytest.raises(ValueError, match="probe_backward_layers must be a whole number >= 1 or None, got 0"):
        CrawdConfig(probe_backward_layers=0)
