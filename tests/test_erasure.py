"""Concept erasure (LEACE through concept-erasure): the map, its fit, training, saving."""

from __future__ import annotations

import pytest
import torch
from conftest import batch, tiny_model
from datasets import Dataset

import crawd
from crawd import CrawdConfig
from crawd.erasure import ConceptEraser
from crawd.train import TrainSettings, train


def test_unfitted_eraser_is_the_identity_and_a_fresh_wrap_is_exact(tokenizer):
    x = torch.randn(3, 5, 8)
    assert torch.equal(ConceptEraser(8)(x), x)
    base = tiny_model("llama")
    enc = batch(tokenizer)
    with torch.no_grad():
        expected = base(**enc).logits
        got = crawd.wrap(base, tokenizer, CrawdConfig(num_heads=4, erase=True)).eval()(**enc).logits
    assert (got - expected).abs().max() < 1e-5


def test_fitted_eraser_removes_the_linear_signal_by_hand():
    # 2-d states: the concept sits in the first coordinate, the second is noise independent of it
    gen = torch.Generator().manual_seed(0)
    concept = torch.arange(200) % 2
    states = torch.stack([concept * 2.0 - 1.0 + 0.1 * torch.randn(200, generator=gen),
                          torch.randn(200, generator=gen)], dim=1)
    eraser = ConceptEraser(2)
    eraser.fit(states, concept)
    erased = eraser(states)
    # after LEACE the class means coincide (zero cross-covariance): no linear classifier beats a constant
    assert torch.allclose(erased[concept == 0].mean(0), erased[concept == 1].mean(0), atol=1e-4)
    # it finds the concept's coordinate by itself: that one is flattened to its mean, the noise one kept
    # (up to the noise's small sample correlation with the concept)
    assert states[:, 0].std() > 0.9 and erased[:, 0].std() < 0.15
    assert torch.allclose(erased[:, 1], states[:, 1], atol=0.1)
    with pytest.raises(ValueError, match="at least two values"):
        eraser.fit(states, torch.zeros(200, dtype=torch.long))


@pytest.mark.parametrize("arch, task, fields", [("bert", "classification", {}), ("llama", "lm", {}),
                                                ("llama", "lm", {"mode": "self"}),
                                                ("llama", "lm", {"head": "residual", "equalize": 1.0})])
def test_training_fits_saves_and_reloads_the_eraser(tmp_path, tokenizer, arch, task, fields):
    texts = ["she is a nurse", "he is a doctor", "she works as a teacher", "he works as a engineer"] * 6
    data = Dataset.from_dict({"text": texts, "label": [0, 1, 0, 1] * 6, "gender": ["f", "m", "f", "m"] * 6})
    model = crawd.wrap(tiny_model(arch, task, num_labels=2), tokenizer,
                       CrawdConfig(num_heads=4, erase=True, erase_refit_steps=2, **fields))
    fits = []
    original = model.fit_eraser
    model.fit_eraser = lambda batches: fits.append(len(batches)) or original(batches)
    train(model, tokenizer, data, tmp_path, TrainSettings(max_steps=4, batch_size=4, save_steps=4, progress=False))
    assert len(fits) == 2  # at the start and after step 2 (not after the last step)
    assert model.eraser.delta.abs().sum() > 0 and model.sensitive_values == ["f", "m"]
    loaded = crawd.load(tiny_model(arch, task, num_labels=2), tokenizer, tmp_path / "adapter").eval()
    assert torch.equal(loaded.eraser.delta, model.eraser.delta)
    enc = batch(tokenizer, side="left" if arch != "bert" else "right")
    enc.pop("token_type_ids", None)
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model.eval()(**enc).logits)


def test_erasure_needs_the_sensitive_column(tmp_path, tokenizer):
    data = Dataset.from_dict({"text": ["she is a nurse", "he is a doctor"] * 4, "label": [0, 1] * 4})
    model = crawd.wrap(tiny_model("llama"), tokenizer, CrawdConfig(num_heads=4, erase=True))
    with pytest.raises((ValueError, KeyError), match="gender"):
        train(model, tokenizer, data, tmp_path, TrainSettings(max_steps=1, batch_size=2, progress=False))
