"""The mitigation (crawd.mitigation): probes, the gender-state estimate, the readout and the terms, checked by
hand on tiny models; that they train what they say and nothing else; that a vanilla run never enters them."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast
from datasets import Dataset

import crawd
from crawd import CrawdConfig
from crawd.mitigation import Mitigation
from crawd.mitigation.lexicon import gender_lexicon, gendered_spans, unnamed, word_genders
from crawd.mitigation.objective import (ALL_PRONOUN_PAIRS, PRONOUN_PAIRS, GenderedPairs, bipartite_groups, equalize_all,
                                       neutralizing, pronoun_first_token_pairs, token_pairs)
from crawd.mitigation.probes import PROBE_SUBJECTS, ProbeCollator, gets_probe, probe_text
from crawd.mitigation.readout import EVEN_CAP, GRADIENT_SCALE, GenderedReadout, scaled_gradient
from crawd.mitigation.cues import CueTokens, GenderCues, cue_examples
from crawd.train import Collator, TrainSettings, train

NEUTRAL = {"even_open": True, "neutralize": 1.0, "probe_share": 1.0}
TEXTS = ["Mary Smith works as a nurse . she studied in the city", "James Smith is a doctor . he works with the client",
         "the nurse said that she works with the client", "Sarah is a teacher and her client is a man",
         "John works as a engineer . his client said that he was late"]


def mitigated(tokenizer, **fields):
    return crawd.wrap(tiny_model("llama"), tokenizer, CrawdConfig(num_heads=4, **fields))


# ---- lexicon and probes -----------------------------------------------------------------
def test_the_lexicon_knows_each_words_gender_and_finds_the_gendered_spans():
    swaps, names = gender_lexicon()
    genders = word_genders()
    assert (genders["she"], genders["he"], genders["her"], genders["his"]) == ("female", "male", "female", "male")
    assert (genders["mother"], genders["nephew"], genders["Mary"], genders["James"]) == ("female", "male", "female",
                                                                                         "male")
    assert all(genders[w] != genders[partner] for w, partner in swaps.items())
    text = "Raj King met his aunt, and King smiled."  # a capitalised word inside a sentence: a surname
    assert [m.group(0) for m in gendered_spans(text, swaps, names)] == ["Raj", "his", "aunt"]
    assert unnamed("Mary Smith is a nurse. Later, James Lee said so.", names, "someone") == \
        "Someone is a nurse. Later, someone said so."


def test_a_probe_hides_the_listed_person_and_stops_before_the_first_gendered_word():
    swaps, names = gender_lexicon()
    text = "Sarah Smith is a nurse based in Chicago. She studied at UCLA, and her work is about care."
    probe, hidden = probe_text(text, swaps, names)
    subject = next(s for s in PROBE_SUBJECTS if probe.lower().startswith(s))
    assert hidden and probe == subject[:1].upper() + subject[1:] + " is a nurse based in Chicago."
    # a name no list holds stays (the gender-state estimate weighs such probes), a gendered word still cuts
    assert probe_text("Priyanka Rao is a nurse. She works nights.", swaps, names) == ("Priyanka Rao is a nurse.", False)
    assert probe_text("She is a nurse.", swaps, names) == ("", False)


def test_the_probe_collator_adds_the_probes_of_a_share_of_the_rows_chosen_by_the_rows_themselves(tokenizer):
    swaps, names = gender_lexicon()
    rows = [dict(tokenizer(t)) for t in TEXTS * 8]
    everyone = ProbeCollator(Collator(tokenizer, "lm"), tokenizer, swaps, names, share=1.0)(rows[:4])
    assert everyone["probe_input_ids"].shape[0] == 4
    first = tokenizer.decode(everyone["probe_input_ids"][0][everyone["probe_attention_mask"][0].bool()])
    assert first.endswith("works as a nurse .") and "Mary" not in first and "she" not in first
    half = ProbeCollator(Collator(tokenizer, "lm"), tokenizer, swaps, names, share=0.5)
    chosen = [gets_probe(row["input_ids"], 0.5) for row in rows]
    assert 0 < sum(chosen) < len(rows)
    assert half(rows)["probe_input_ids"].shape[0] == sum(chosen)
    # a row's fate does not depend on the batch it is in (so a batch split over processes keeps its probes)
    assert sum(half(rows[i:i + 4])["probe_input_ids"].shape[0] for i in range(0, len(rows), 4)) == sum(chosen)


# ---- the gender cues ----------------------------------------------------------------------
def test_cue_labels_mark_the_last_token_of_names_and_gendered_words(tokenizer):
    swaps, names = gender_lexicon()
    (row, row_labels), (probe, probe_labels) = cue_examples(["Mary Smith works as a nurse . Smith said that she works"],
                                                            tokenizer, swaps, names)
    words = tokenizer.convert_ids_to_tokens(row)
    assert [(w, label) for w, label in zip(words, row_labels) if label != 0] == [
        ("Mary", 1), ("Smith", 1),  # the name written in full: the first name and the surname right after it
        ("Smith", -100),  # a capitalised word the lexicon does not hold, alone: maybe a name no list holds
        ("she", 1)]
    assert tokenizer.decode(probe).endswith("works as a nurse . Smith said that") and set(probe_labels) <= {0, -100}
    (_, known), _ = cue_examples(["James Smith is a doctor . the Smith said"], tokenizer, swaps, names,
                                 known_words=True)
    assert known == [1, 1, 0, 0, 0, 0, 0, 0, 0]  # every word known: a surname alone is no cue


def test_the_cues_fit_a_separable_case_and_the_text_stays_given_once_it_gave_a_gender():
    cues = GenderCues(4)
    states = torch.randn(200, 4)
    assert torch.all(cues.probabilities(states) > 1 - 1e-6)  # before fit: every token is one (the readout is off)
    labels = (torch.arange(200) % 4 == 0).long()
    states[:, 0] += 6.0 * labels
    cues.fit(states, labels)
    assert cues.fitted and ((cues.probabilities(states) > 0.5).long() == labels).float().mean() > 0.95
    text = torch.zeros(1, 5, 4)
    text[0, :, 0] = -6.0
    text[0, 2, 0] = 12.0  # the third token gives a gender
    given = cues.given(text, torch.ones(1, 5))
    assert given[0, :2].max() < 0.1 and given[0, 2:].min() > 0.9  # from that token on, and never open again
    share = cues.open_share(given)
    assert share[0, :2].min() == 1.0 and share[0, 2:].max() == 0.0
    state = {}  # cached generation: a token at a time gives the same
    assert torch.equal(torch.cat([cues.given(text[:, i:i + 1], torch.ones(1, 5), state) for i in range(5)], 1), given)
    assert cues.given(text, torch.tensor([[1, 1, 0, 1, 1]]))[0].max() < 0.1  # a padding position is no cue
    with pytest.raises(ValueError, match="need tokens that give a gender and tokens that do not"):
        cues.fit(states, torch.zeros(200, dtype=torch.long))


def test_only_capitalised_words_and_gendered_words_may_be_cues(tokenizer):
    # GPT-2-style pieces ("\u0120": a space before the piece), given as ids by hand: a word's flag follows the word,
    # not the piece ("inist" of "machinist" is none, "yanka" of "Priyanka" is), and a gendered word counts at
    # a piece that is one ("mother" of "grandmother")
    pieces = ["<s>", "The", "\u0120mach", "inist", "\u0120said", "\u0120Pri", "yanka", "\u0120was", ".", "\u0120her",
              "\u0120grand", "mother", "\u0120she", "\u0120late"]
    model = models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<s>")
    byte_level = Tokenizer(model)
    byte_level.decoder = decoders.ByteLevel()
    cases = {
        PreTrainedTokenizerFast(tokenizer_object=byte_level, bos_token="<s>"): {
            "<s> The \u0120mach inist \u0120said \u0120Pri yanka \u0120was \u0120late .": "0 1 0 0 0 1 1 0 0 0",
            "\u0120her \u0120grand mother \u0120said . \u0120she": "1 0 1 0 0 1"},
        tokenizer: {"the nurse said that she works with the client": "0 0 0 0 1 0 0 0 0",  # every token a word
                    "Mary Smith works as a nurse . her client": "1 1 0 0 0 0 0 1 0"},
    }
    for tok, texts in cases.items():
        cue_tokens = CueTokens(tok, set(word_genders()))
        for text, expected in texts.items():
            ids = tok.convert_tokens_to_ids(text.split())
            may_cue = cue_tokens.may_cue(torch.tensor([ids]))[0].tolist()
            assert may_cue == [f == "1" for f in expected.split()], (text, may_cue)
            state = {}  # cached generation, a token at a time: the same
            assert torch.cat([cue_tokens.may_cue(torch.tensor([[i]]), state) for i in ids], 1)[0].tolist() == may_cue


# ---- the readout -----------------------------------------------------------------------------
def readout_of(tokenizer, even: bool = True, shift: bool = True) -> GenderedReadout:
    pairs = GenderedPairs(tokenizer, gender_lexicon()[0])
    return GenderedReadout(pairs.pair_tokens, pairs.pair_valid, 32, even=even, shift=shift)


def test_bipartite_groups_merge_the_ambiguous_pronouns():
    his, her, him, hers, he, she = 1, 2, 3, 4, 5, 6
    assert sorted(bipartite_groups([(his, her), (him, her), (his, hers), (he, she)])) == [([his, him], [her, hers]),
                                                                                           ([he], [she])]
    assert bipartite_groups([(1, 2), (2, 3), (3, 1)]) == []  # an odd cycle has no two sides


class PiecesTokenizer:
    """A tokenizer of a few spellings, " Herself" in two pieces (as SmolLM2's: " Hers" + "elf")."""

    unk_token_id = None
    pieces = {" He": [1], " She": [2], " His": [3], " Him": [4], " Her": [5], " Hers": [6], " Himself": [7],
              " Herself": [6, 8], " himself": [9], " herself": [10]}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.pieces.get(text, [0, 0])}  # any other spelling: several unknown pieces


def test_a_pronoun_whose_counterpart_is_several_tokens_is_paired_with_its_first_token():
    tokenizer = PiecesTokenizer()
    pronouns = {t for pair in token_pairs(tokenizer, list(ALL_PRONOUN_PAIRS)) for t in pair}
    assert pronouns == {1, 2, 3, 4, 5, 6, 9, 10}  # " Himself" has no single-token counterpart
    assert pronoun_first_token_pairs(tokenizer, pronouns) == [(7, 6)]  # " Himself" with " Hers" (of " Herself")
    assert pronoun_first_token_pairs(tokenizer, pronouns - {6}) == []  # a first piece that is no pronoun: none
    groups = bipartite_groups(token_pairs(tokenizer, list(PRONOUN_PAIRS)) + [(7, 6)])
    assert ([3, 4, 7], [5, 6]) in groups


def test_the_shift_moves_both_sides_of_each_pair_alike_where_the_gender_is_open(tokenizer):
    readout = readout_of(tokenizer, even=False)
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("he", "she", "his", "her", "him", "man", "woman")}
    assert set(ids.values()) <= set(readout.tokens.tolist())
    hidden, logits, share = torch.randn(2, 3, 32), torch.randn(2, 3, len(tokenizer)), torch.rand(2, 3)
    assert torch.equal(readout(hidden, logits, share), logits)  # zero-started: exactly the base
    with torch.no_grad():
        readout.shift.copy_(torch.randn_like(readout.shift))
    out = readout(hidden, logits, share)
    moved = {w: out[..., t] - logits[..., t] for w, t in ids.items()}
    pair = dict(zip(readout.tokens.tolist(), readout.pair_of_token.tolist()))
    assert torch.allclose(moved["he"], share * (hidden @ readout.shift[pair[ids["he"]]]), atol=1e-5)
    for a, b in (("he", "she"), ("his", "her"), ("him", "her"), ("man", "woman")):
        assert torch.allclose(moved[a], moved[b], atol=1e-6)  # the same for both genders
    assert torch.equal(readout(hidden, logits, torch.zeros(2, 3)), logits)  # a given gender: untouched
    others = [t for t in range(len(tokenizer)) if t not in readout.tokens.tolist()]
    assert torch.equal(out[..., others], logits[..., others])


def test_the_readout_evens_each_pair_where_the_gender_is_open(tokenizer):
    readout = readout_of(tokenizer, shift=False)
    he, she, his, him, her, hers = tokenizer.convert_tokens_to_ids(["he", "she", "his", "him", "her", "hers"])
    logits, hidden = torch.randn(3, len(tokenizer)), torch.randn(3, 32)
    out = readout(hidden, logits, torch.tensor([1.0, 0.5, 0.0]))  # open, half open, given
    for sides in (([he], [she]), ([his, him], [her, hers])):
        before = [logits[..., side].logsumexp(-1) for side in sides]
        after = [out[..., side].logsumexp(-1) for side in sides]
        even = torch.logaddexp(*before) - math.log(2)
        for b, a in zip(before, after):  # EVEN_CAP of the way in log-probability where open, half that at a
            # share of 0.5; untouched at 0
            assert torch.allclose(a[0], b[0] + EVEN_CAP * (even[0] - b[0]), atol=1e-5)
            assert torch.allclose(a[1], b[1] + EVEN_CAP * (even[1] - b[1]) / 2, atol=1e-5)
            assert torch.allclose(a[2], b[2])
        # the sides' margin shrinks to 1 - EVEN_CAP of itself, its sign kept: never a tie, never reversed
        kept = 1 - EVEN_CAP * torch.tensor([1.0, 0.5, 0.0])
        assert torch.allclose(after[0] - after[1], (before[0] - before[1]) * kept, atol=1e-5)
    assert torch.allclose(out[0, his] - logits[0, his], out[0, him] - logits[0, him])  # a side moves as one
    others = [t for t in range(len(tokenizer)) if t not in readout.tokens.tolist()]
    assert torch.equal(out[..., others], logits[..., others])
    again = readout(hidden, out, torch.ones(3))[0]  # never past even, however often applied
    assert ((again[he] - again[she]) * (logits[0, he] - logits[0, she])).item() > 0


def test_the_readouts_gradient_is_scaled_and_adams_steps_are_not():
    weight = torch.randn(5, requires_grad=True)
    scaled_gradient(weight, 0.01).pow(2).sum().backward()
    assert torch.allclose(weight.grad, 0.02 * weight.detach())
    assert torch.equal(scaled_gradient(weight, 0.01), weight)
    steps = []
    for scale in (1.0, GRADIENT_SCALE):  # Adam's update does not depend on the gradient's scale
        w = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([w], lr=0.1, weight_decay=0.0)
        for k in range(3):
            (scaled_gradient(w, scale) * torch.tensor([1.0, -2.0, 3.0 + k])).sum().backward()
            optimizer.step(), optimizer.zero_grad()
        steps.append(w.detach().clone())
    assert torch.allclose(*steps, atol=1e-6)


# ---- the terms -----------------------------------------------------------------------------
def test_equalizing_at_every_position_by_hand(tokenizer):
    pairs = GenderedPairs(tokenizer, gender_lexicon()[0])
    assert token_pairs(tokenizer, [("he", "she")]) == [tuple(sorted(tokenizer.convert_tokens_to_ids(["he", "she"])))]
    logits = torch.zeros(2, 3, len(tokenizer))
    logits[0, 1, tokenizer.convert_tokens_to_ids("he")] = math.log(4.0)  # P(he) = 4 P(she) there; the rest even
    labels = torch.ones(2, 3, dtype=torch.long)
    # the positions that predict a target (0 and 1 of each row): 4 positions
    assert equalize_all(pairs, logits, labels).item() == pytest.approx(math.log(4.0) / (4 * len(pairs.pair_tokens)))
    labels[0, 2] = -100  # position 1 of row 0 predicts nothing now
    assert equalize_all(pairs, logits, labels).item() == 0


def test_the_neutralizing_term_by_hand(tokenizer):
    pairs = GenderedPairs(tokenizer, gender_lexicon()[0])
    paired = pairs.pair_tokens[pairs.pair_valid].unique()
    logits = torch.zeros(2, 2, len(tokenizer))
    logits[..., paired] = -30.0  # nowhere is a gendered word likely ...
    logits[0, 0, paired] = 0.0  # ... but at row 0's first position
    mass = len(paired) / len(tokenizer)
    share = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
    # the sum over the probes' positions of share x -log(1 - P(gendered)), per expected probe (here 4)
    assert neutralizing(pairs, logits, torch.ones(2, 2), share, 4.0).item() == pytest.approx(
        0.5 * -math.log(1 - mass) / 4, rel=1e-3)
    assert neutralizing(pairs, logits, torch.ones(2, 2), torch.zeros(2, 2), 4.0).item() == 0  # nothing open


def test_the_probe_terms_train_the_readout_alone_and_inference_is_as_without_them(tokenizer):
    model = mitigated(tokenizer, mode="self", lora_dropout=0.0, **NEUTRAL).train()
    batch = model.mitigation.collator(Collator(tokenizer, "lm"), tokenizer)([dict(tokenizer(t)) for t in TEXTS[:2]])
    with torch.no_grad():  # a state where the readout does something, and every position open
        model.mitigation.readout.shift.normal_(std=0.5)
        model.mitigation.cues.bias.fill_(-30.0)

    def gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_terms, grads = gradients()
    assert with_terms.terms > 0 and torch.isclose(with_terms.loss, model.task_loss(with_terms.logits, batch["labels"])
                                                  + with_terms.terms)
    model.mitigation.neutralize = 0.0
    _, task = gradients()
    for name, grad in task.items():  # the term reaches no weight outside the readout's shift ...
        if name != "mitigation.readout.shift":
            assert torch.allclose(grads[name], grad, atol=1e-7), name
    assert not torch.allclose(grads["mitigation.readout.shift"], task["mitigation.readout.shift"])  # ... but it
    plain = crawd.wrap(tiny_model("llama"), tokenizer, CrawdConfig(num_heads=4, mode="self", **NEUTRAL))
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    enc = tokenizer(["the nurse said that she"], return_tensors="pt")
    model.mitigation.neutralize = 1.0
    with torch.no_grad():  # at inference the weights alone count, not the terms
        assert torch.equal(model(**enc).logits, plain(**enc).logits)


def test_a_fresh_neutral_model_is_exactly_its_base(tokenizer):
    base = tiny_model("llama")
    tokenizer.padding_side = "right"
    enc = tokenizer(["the nurse said that she", "Mary said that"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = base(**enc).logits
        model = crawd.wrap(base, tokenizer, CrawdConfig.preset("neutral", "lm", num_heads=4)).eval()
        assert not model.mitigation.cues.fitted  # unfitted, no token is left out as a possible cue
        assert torch.equal(model(**enc).logits, expected)


def test_the_mitigation_refuses_what_it_cannot_do(tokenizer):
    with pytest.raises(ValueError, match="equalize and neutralize apply to causal LMs only"):
        crawd.wrap(tiny_model("bert", "classification"), tokenizer, CrawdConfig(num_heads=4, neutralize=1.0))
    with pytest.raises(ValueError, match=r"gender_cue_layer=5 is not a layer of this body, which has 2 \(choose 1 to 1\)"):
        mitigated(tokenizer, gender_cue_layer=5, **NEUTRAL)
    with pytest.raises(ValueError, match="gender_cue_layer must be a whole number >= 1 or None, got 0"):
        CrawdConfig(gender_cue_layer=0)
    with pytest.raises(ValueError, match=r"readout_where='open' were removed from crawd .* commit d5f2194"):
        CrawdConfig.from_dict({"readout_where": "open", "neutralize": 1.0})
    with pytest.raises(ValueError, match=r"equalize_positions='open' were removed"):
        CrawdConfig.from_dict({"equalize": 0.1, "equalize_positions": "open"})
    assert CrawdConfig.from_dict({"readout_where": "all", "counterfactual": 0.0, "equalize_positions": "neutral"}) == \
        CrawdConfig()  # removed options at the value under which they did nothing
    assert CrawdConfig.from_dict({"equalize": 0.3, "equalize_positions": "all"}) == CrawdConfig(equalize=0.3)


# ---- training, saving, generation ------------------------------------------------------------
@pytest.mark.parametrize("mode,head", [("cross", "concat"), ("cross", "residual"), ("self", "concat")])
def test_a_trained_mitigation_is_saved_loaded_and_used_in_cached_generation(tmp_path, tokenizer, mode, head):
    model = mitigated(tokenizer, mode=mode, head=head, gender_cue_refit_steps=2, **NEUTRAL)
    fits = []
    fit = Mitigation.fit_cues
    model.mitigation.fit_cues = lambda *args: fits.append(1) or fit(model.mitigation, *args)
    data = Dataset.from_dict({"text": TEXTS * 4})
    train(model, tokenizer, data, tmp_path, TrainSettings(max_steps=4, batch_size=4, save_steps=4, seq_len=16,
                                                           progress=False))
    assert len(fits) == 2 and model.mitigation.cues.fitted  # before training and after step 2
    assert model.mitigation.readout.shift.abs().sum() > 0
    loaded = crawd.load(tiny_model("llama"), tokenizer, tmp_path / "adapter").eval()
    enc = tokenizer(["the nurse said that", "Mary said that she"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model.eval()(**enc).logits)
    prompt = tokenizer(["the nurse said that"], return_tensors="pt")
    assert torch.equal(loaded.generate(**prompt, max_new_tokens=5), loaded.generate(**prompt, max_new_tokens=5,
                                                                                      use_cache=False))


def test_a_vanilla_run_never_enters_the_mitigations_code(tmp_path, tokenizer):
    folder = str(Path(crawd.mitigation.__file__).parent)
    entered = []

    def watch(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(folder):
            entered.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(watch)
    try:
        model = crawd.adapt(tiny_model("llama"), tokenizer)
        train(model, tokenizer, Dataset.from_dict({"text": TEXTS}), tmp_path,
              TrainSettings(max_steps=1, batch_size=2, save_steps=1, seq_len=16, progress=False))
        model.generate(**tokenizer(["the nurse said that"], return_tensors="pt"), max_new_tokens=2)
    finally:
        sys.setprofile(None)
    assert model.mitigation is None and entered == []
