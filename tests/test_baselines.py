"""The baselines change what they claim to change; the comparison configs are valid and small when quick."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import batch, shared_data_dir, tiny_config, tiny_model
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import AutoModelForSequenceClassification, set_seed

import crawd
from crawd.config import CrawdConfig
from crawd.methods import METHODS, get_method
from crawd.methods.adversarial import AdversarialModel, grad_reverse
from crawd.methods.blind import blind_transform
from crawd.methods.cda import cda_transform
from crawd.methods.debias_tuning import DebiasTuningModel, gendered_mass_penalty
from crawd.methods.ear import EARModel, attention_entropy
from crawd.mitigation.lexicon import gender_lexicon, swap_text
from crawd.train import Collator, TrainSettings, tokenize, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SETTINGS = {"max_steps": 3, "batch_size": 4, "save_steps": 3, "logging_steps": 1, "learning_rate": 1e-3,
            "progress": False, "seq_len": 16}


def bios_like() -> DatasetDict:
    features = Features({"text": Value("string"), "label": ClassLabel(names=["nurse", "engineer"]),
                         "gender": Value("string")})
    train_rows = {"text": ["Mary is a nurse. She said that her client trusts her.",
                           "John is an engineer. He studied with his brother, and the book is his."],
                  "label": [0, 1], "gender": ["female", "male"]}
    test_rows = {"text": ["she is a nurse"], "label": [0], "gender": ["female"]}
    return DatasetDict(train=Dataset.from_dict(train_rows, features=features),
                       test=Dataset.from_dict(test_rows, features=features))


def test_all_baselines_are_registered():
    for name in ("vanilla", "crawd", "cda", "blind", "adversarial", "ear", "debias_tuning"):
        assert get_method(name).name == name
    assert METHODS["cda"].transform is not None and METHODS["blind"].transform is not None


# ---- CDA ---------------------------------------------------------------------------------

def test_cda_swaps_both_ways_and_appends():
    data = bios_like()
    out = cda_transform(data, CrawdConfig())
    train = out["train"]
    assert len(train) == 4 and train["text"][:2] == data["train"]["text"]  # originals kept, copies appended
    assert train["text"][2] == "James is a nurse. He said that his client trusts him."
    assert train["text"][3] == "Jennifer is an engineer. She studied with her sister, and the book is hers."
    assert train["gender"][2:] == ["male", "female"]  # the attribute follows the text
    assert train["label"][2:] == [0, 1]
    assert out["test"]["text"] == data["test"]["text"]  # the test split is never touched
    twice = cda_transform(DatasetDict(train=train.select([2, 3]), test=data["test"]), CrawdConfig())
    assert twice["train"]["text"][2:] == data["train"]["text"]  # swapping twice is the identity here


def test_cda_word_rules():
    swaps, names = gender_lexicon()
    assert swap_text("She told her that his work was hers.", swaps, names) == "He told him that her work was his."
    assert swap_text("He gave her a book; it is his.", swaps, names) == "She gave him a book; it is hers."
    assert swap_text("Raj King is a king. King Raj met HIM.", swaps, names) == "Fatima King is a queen. Queen Fatima met HER."
    assert swap_text("Mark will mark the man's work", swaps, names).startswith("Michelle will mark the woman's")
    for name, partner in names.items():
        assert names[partner] == name  # every swap is an involution


def test_cda_replace_mode_and_extra_pairs():
    data = bios_like()
    config = CrawdConfig(extra={"cda_mode": "replace", "cda_pairs": [["black", "white"]]})
    out = cda_transform(data, config)
    assert len(out["train"]) == 2
    config = CrawdConfig(extra={"cda_pairs": [["black", "white"]]})
    rows = Dataset.from_dict({"text": ["Black people and white people"], "label": [0], "gender": ["black"]},
                             features=data["train"].features)
    out = cda_transform(DatasetDict(train=rows, test=data["test"]), config)
    assert out["train"]["text"][1] == "White people and black people"
    assert out["train"]["gender"][1] == "white"
    with pytest.raises(ValueError, match="cda_mode"):
        cda_transform(data, CrawdConfig(extra={"cda_mode": "both"}))


# ---- blind -------------------------------------------------------------------------------

def test_blind_masks_sensitive_words_in_train_only():
    data = bios_like()
    out = blind_transform(data, CrawdConfig())
    assert out["train"]["text"][0] == "person is a nurse. person said that person client trusts person."
    assert "brother" not in out["train"]["text"][1] and "John" not in out["train"]["text"][1]
    assert out["test"]["text"] == data["test"]["text"]
    custom = blind_transform(data, CrawdConfig(extra={"blind_words": ["nurse"], "blind_token": "[X]"}))
    assert custom["train"]["text"][0].startswith("Mary is a [X].")


# ---- adversarial -------------------------------------------------------------------------

def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))
    assert torch.equal(grad_reverse(x, 0.5), x)  # identity forward


def test_adversary_gradient_is_reversed_into_the_encoder_only(tokenizer):
    set_seed(0)
    config = CrawdConfig(extra={"adv_values": ["female", "male"], "adv_lambda": 1.0})
    model = AdversarialModel(tiny_model("bert", "classification", num_labels=2), tokenizer, config).eval()
    enc = batch(tokenizer)
    hidden = model.encode(enc["input_ids"], enc["attention_mask"]).last_hidden_state
    target = torch.tensor([0, 1])
    encoder_param = model.hf.bert.encoder.layer[-1].output.dense.weight

    def grads(reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model.encode(enc["input_ids"], enc["attention_mask"]).last_hidden_state
        pooled = model.pooled(out, enc["attention_mask"])
        logits = model.adversary(grad_reverse(pooled, 1.0) if reverse else pooled)
        torch.nn.functional.cross_entropy(logits, target).backward()
        return encoder_param.grad.clone(), model.adversary[0].weight.grad.clone()

    enc_rev, adv_rev = grads(True)
    enc_plain, adv_plain = grads(False)
    assert enc_plain.abs().sum() > 0
    assert torch.allclose(enc_rev, -enc_plain, atol=1e-6)  # the encoder climbs the adversary's loss
    assert torch.allclose(adv_rev, adv_plain, atol=1e-6)  # the adversary still descends it
    assert hidden.shape[-1] == model.hidden_size


def test_adversarial_trains_through_the_trainer_and_saves_a_vanilla_adapter(tmp_path, tokenizer):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["nurse", "engineer"]),
                         "gender": Value("string")})
    data = DatasetDict(train=Dataset.from_dict(
        {"text": ["the nurse said that she", "the engineer said that he"] * 6, "label": [0, 1] * 6,
         "gender": ["female", "male"] * 6}, features=features))
    set_seed(0)
    model = get_method("adversarial").build(tiny_model("bert", "classification", num_labels=2), tokenizer,
                                            CrawdConfig())
    assert model.adversary is None  # built from the training data's values
    tokenized = tokenize(data["train"], tokenizer, "classification", 16, model.sensitive_ids(data["train"]["gender"]))
    collated = Collator(tokenizer, "classification")([dict(tokenized[i]) for i in range(4)])
    assert collated["sensitive_labels"].tolist() == [0, 1, 0, 1]
    before = {k: v.clone() for k, v in model.adversary.state_dict().items()}
    result = train(model, tokenizer, data, tmp_path / "adv", TrainSettings(**SETTINGS))
    assert result.steps == 3 and model.sensitive_values == ["female", "male"]
    # the Trainer moves the model to CUDA where there is one: compare on the CPU
    model.cpu().eval()
    assert any(not torch.equal(before[k], v) for k, v in model.adversary.state_dict().items())
    loaded = crawd.load(tiny_model("bert", "classification", num_labels=2), tokenizer, tmp_path / "adv" / "adapter")
    enc = batch(tokenizer)
    with torch.no_grad():
        assert torch.allclose(loaded(**enc).logits, model(**enc).logits, atol=1e-5)


# ---- EAR ---------------------------------------------------------------------------------

def test_attention_entropy_on_known_maps():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    uniform = torch.zeros(2, 2, 4, 4)
    uniform[0] = 0.25
    uniform[1, :, :, :2] = 0.5  # padding keys get no weight
    assert attention_entropy([uniform], mask).item() == pytest.approx((math.log(4) + math.log(2)) / 2, abs=1e-5)
    one_hot = torch.zeros(2, 2, 4, 4)
    one_hot[..., 0] = 1.0
    assert attention_entropy([one_hot], mask).item() == pytest.approx(0.0, abs=1e-5)
    assert attention_entropy([uniform, one_hot], mask).item() == pytest.approx(
        (math.log(4) + math.log(2)) / 2, abs=1e-5)  # summed over layers
    # heads are averaged before the entropy: two opposite one-hot heads make a 50/50 row
    heads = torch.zeros(1, 2, 1, 2)
    heads[0, 0, 0, 0] = heads[0, 1, 0, 1] = 1.0
    assert attention_entropy([heads], torch.ones(1, 2)).item() == pytest.approx(math.log(2), abs=1e-5)


def test_ear_loss_is_task_loss_minus_strength_times_entropy(tokenizer):
    set_seed(0)
    base = AutoModelForSequenceClassification.from_config(
        tiny_config("bert", num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model = EARModel(base, tokenizer, CrawdConfig(extra={"ear_strength": 0.5}))
    enc, labels = batch(tokenizer), torch.tensor([0, 1])
    model.eval()
    with torch.no_grad():
        plain = model(**enc, labels=labels).loss
        out = model.encode(enc["input_ids"], enc["attention_mask"], output_attentions=True)
        entropy = attention_entropy(out.attentions, enc["attention_mask"])
    model.train()
    regularised = model(**enc, labels=labels).loss
    assert entropy > 0
    assert regularised.item() == pytest.approx(plain.item() - 0.5 * entropy.item(), abs=1e-5)
    regularised.backward()  # the term has a gradient into the attention
    assert model.hf.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_ear_runs_on_a_lora_decoder(tokenizer):
    model = get_method("ear").build(tiny_model("llama"), tokenizer, CrawdConfig()).train()
    enc = batch(tokenizer)
    out = model(**enc, labels=enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100))
    assert torch.isfinite(out.loss)


# ---- Debias Tuning -----------------------------------------------------------------------

def test_gendered_mass_penalty_on_known_distributions():
    vocab = 6
    female, male = torch.tensor([1]), torch.tensor([2, 3])
    logits = torch.full((1, 2, vocab), -1e9)
    logits[0, 0, 1] = 0.0  # all mass on a female word
    logits[0, 1, :] = 0.0  # uniform: 1/6 female, 2/6 male
    mask = torch.ones(1, 2, dtype=torch.long)
    got = gendered_mass_penalty(logits, mask, female, male, weight=1.0, gap_weight=2.0)
    expected = ((1.0 + 2.0 * 1.0) + (3 / 6 + 2.0 * 1 / 6)) / 2
    assert got.item() == pytest.approx(expected, abs=1e-6)
    masked = gendered_mass_penalty(logits, torch.tensor([[1, 0]]), female, male, 1.0, 0.0)
    assert masked.item() == pytest.approx(1.0)  # padding positions do not count


def test_debias_tuning_lowers_the_gendered_mass(tokenizer):
    set_seed(0)
    config = CrawdConfig(extra={"debias_weight": 5.0})
    model = DebiasTuningModel(tiny_model("llama"), tokenizer, config)
    he, she = tokenizer.convert_tokens_to_ids(["he", "she"])
    assert he in model.male_ids.tolist() and she in model.female_ids.tolist()
    enc = batch(tokenizer, ("the nurse said that", "the doctor said that"))

    def mass() -> float:
        model.eval()
        with torch.no_grad():
            probs = model(**enc).logits.softmax(-1)
        ids = torch.cat([model.female_ids, model.male_ids])
        return probs[..., ids].sum(-1)[enc["attention_mask"].bool()].mean().item()

    before = mass()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(5):
        loss = model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert mass() < before
    with pytest.raises(ValueError, match="causal LMs"):
        DebiasTuningModel(tiny_model("bert", "classification", num_labels=2), tokenizer, config)


# ---- configs -----------------------------------------------------------------------------

def load_config(name: str) -> dict:
    from crawd.settings import COMPARE_KEYS, read_yaml

    return read_yaml(CONFIGS / f"{name}.yaml", COMPARE_KEYS)


@pytest.mark.parametrize("name", ["bios-generation", "occupation-classification", "madlibs-toxicity",
                                  "self-vs-cross-generation", "ablation-grid", "mitigation",
                                  "mitigation-classification"])
def test_configs_are_valid_and_quick_is_tiny(name):
    from crawd.experiment import HEADLINES
    from crawd.metrics import BENCHMARKS
    from crawd.settings import expand_methods

    spec = load_config(name)
    TrainSettings(**spec.get("settings", {}))
    quick = dict(spec["quick"])
    assert quick.pop("seeds") == [0]
    for key in ("data_options", "eval_options"):  # `crawd compare --quick` merges these into the spec
        assert isinstance(quick.pop(key, {}), dict)
    assert TrainSettings(**{**spec.get("settings", {}), **quick}).max_steps <= 5
    assert len(spec["seeds"]) >= 3
    base = CrawdConfig.from_dict(spec.get("crawd", {}))
    entries = expand_methods(spec["methods"])
    assert "vanilla" in [e["method"] for e in entries]  # significance is against vanilla
    for entry in entries:
        get_method(entry["method"])
        CrawdConfig.from_dict({**base.to_dict(), **entry.get("overrides", {})})
    assert all(b in BENCHMARKS for b in spec["benchmarks"])
    headline_names = {h for b in spec["benchmarks"] for h, _ in HEADLINES[b]}
    assert set(spec["tradeoff"]) <= headline_names


@pytest.mark.parametrize("name", ["mitigation-selection", "mitigation-selection-classification"])
def test_selection_configs_score_the_validation_split_only(name):
    from crawd.settings import expand_methods

    spec = load_config(name)
    assert spec["eval_split"] == "validation" and spec["data_options"]["n_val"] > 0
    base = CrawdConfig.from_dict(spec.get("crawd", {}))
    for entry in expand_methods(spec["methods"]):
        get_method(entry["method"])
        CrawdConfig.from_dict({**base.to_dict(), **entry.get("overrides", {})})


def test_ablation_grid_covers_the_papers_ranges():
    from crawd.settings import expand_methods

    entries = [e for e in expand_methods(load_config("ablation-grid")["methods"]) if e["method"] == "crawd"]
    pairs = {(e["overrides"]["top_k"], e["overrides"]["decay"]) for e in entries}
    assert pairs == {(k, d) for k in (0.1, 0.2, 0.3, 0.4, 0.5) for d in (0.0, 0.1, 0.2, 0.3, 0.4)}


def test_partial_reference_config_compares_he_she_with_all_28_gendered_words():
    from crawd.metrics.gas import GENDERED_WORDS
    from crawd.settings import expand_methods

    spec = load_config("bios-generation")
    base = CrawdConfig.from_dict(spec.get("crawd", {}))
    words = {}
    for entry in expand_methods(spec["methods"]):
        if entry["method"] == "crawd":
            config = CrawdConfig.from_dict({**base.to_dict(), **entry.get("overrides", {})})
            words[entry.get("label", "crawd")] = config.words
    assert words["crawd"] == ("he", "she") and words["crawd-28-words"] == tuple(GENDERED_WORDS)
    assert "gas" in spec["benchmarks"] and spec["tradeoff"][0] == "gas"  # GAS always scores all 28 words


# ---- every method's model is scored the same way --------------------------------------------

@pytest.mark.parametrize("name,overrides", [("vanilla", {}), ("cda", {}), ("blind", {}), ("ear", {}),
                                            ("debias_tuning", {}), ("crawd", {"head": "residual"}),
                                            ("crawd", {"head": "concat"}), ("crawd", {"mode": "self"})])
def test_weat_representation_of_every_method_is_what_its_head_consumes(tokenizer, name, overrides):
    from crawd.metrics.weat import representation

    base = tiny_model("llama")
    enc = batch(tokenizer)
    with torch.no_grad():
        expected = base(**enc, output_hidden_states=True).hidden_states[-1]
        model = get_method(name).build(base, tokenizer, CrawdConfig(sensitive_words=["he", "she"], **overrides))
        got = representation(model.eval(), enc["input_ids"], enc["attention_mask"])
    if overrides.get("head") == "concat":  # [H_x, H_cross]
        assert torch.allclose(got[..., : expected.shape[-1]], expected, atol=1e-5)
        assert got.shape[-1] == 2 * expected.shape[-1]
    elif overrides.get("mode") == "self":  # the decay (lambda 0.2) changes the states it acts on
        assert got.shape == expected.shape and torch.isfinite(got).all() and not torch.allclose(got, expected)
    else:  # fresh LoRA (B = 0) and a fresh residual projection (P = 0) reproduce the base states
        assert torch.allclose(got, expected, atol=1e-5)
