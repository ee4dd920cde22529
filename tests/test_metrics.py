"""Metrics against hand-computed cases on a toy bigram LM, plus a real-data smoke test."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import shared_data_dir
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from crawd import metrics as M
from crawd.metrics.pronoun_skew import next_token_masses
from crawd.metrics.weat import word_vectors

WORDS = ["[PAD]", "[UNK]", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]", "the", "man", "woman",
         "cat", "is", "good", "bad", "said", "that", "she", "her", "he", "his", "nurse", "doctor",
         "teacher", "."]
ID = {w: i for i, w in enumerate(WORDS)}
V = len(WORDS)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace WordLevel tokenizer over WORDS; unknown words become [UNK]."""
    tk = Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def bigram_table() -> np.ndarray:
    """P[prev, next]: uniform rows except the transitions set here (rows renormalised)."""
    rows = {"the": {"woman": 0.4, "man": 0.2, "cat": 0.05},
            "woman": {"is": 0.5}, "man": {"is": 0.1}, "cat": {"cat": 0.001},
            "that": {"she": 0.3, "he": 0.1},
            "nurse": {"she": 0.3, "her": 0.1, "he": 0.1, "his": 0.1},
            "doctor": {"she": 0.1, "her": 0.1, "he": 0.3, "his": 0.1},
            "teacher": {"she": 0.1, "he": 0.1, "good": 0.5}}
    P = np.full((V, V), 1.0 / V)
    for prev, nxt in rows.items():
        rest = (1 - sum(nxt.values())) / (V - len(nxt))
        P[ID[prev]] = rest
        for w, p in nxt.items():
            P[ID[prev], ID[w]] = p
    return P


P = bigram_table()


def lp(prev: str, nxt: str) -> float:
    return math.log(P[ID[prev], ID[nxt]])


class BigramLM(torch.nn.Module):
    """Causal toy LM: logits at position t are log P[ids[t], :]; hidden state = a fixed embedding."""

    def __init__(self, shift: bool = False) -> None:
        super().__init__()
        self.register_buffer("logp", torch.tensor(np.log(P), dtype=torch.float32))
        self.emb = torch.nn.Parameter(torch.randn(V, 4, generator=torch.Generator().manual_seed(0)))
        self.shift = shift  # masked-LM mode: position t is predicted from ids[t-1]

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        src = torch.cat([input_ids[:, :1], input_ids[:, :-1]], dim=1) if self.shift else input_ids
        return SimpleNamespace(logits=self.logp[src], hidden_states=(self.emb[input_ids],))

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        ids = input_ids
        for _ in range(max_new_tokens):
            ids = torch.cat([ids, self.logp[ids[:, -1]].argmax(-1, keepdim=True)], dim=1)
        return ids


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


# ---------------------------------------------------------------- stats

def test_bootstrap_is_deterministic_and_covers_the_estimate():
    x = np.random.default_rng(1).normal(size=200)
    ci = M.bootstrap_ci(x, seed=3)
    assert ci == M.bootstrap_ci(x, seed=3) and ci[0] < x.mean() < ci[1]
    est = M.estimate((x, x ** 2), lambda a, b: float(b.mean() - a.mean() ** 2))
    assert est.ci_low <= est.value <= est.ci_high and est.to_dict()["n"] == 200
    with pytest.raises(ValueError):
        M.bootstrap_ci([])


def test_paired_difference_test():
    a = np.arange(20.0)
    shifted = M.paired_difference_test(a + 1, a, n_boot=2000)
    assert shifted["difference"] == 1 and shifted["ci_low"] == shifted["ci_high"] == 1
    assert shifted["p_value"] == pytest.approx(1 / 2001, abs=1e-3)
    assert M.paired_difference_test(a, a)["p_value"] == 1.0


# ---------------------------------------------------------------- log-likelihood

def test_sequence_and_continuation_logprobs(tok):
    model = BigramLM()
    texts = ["the man", "the woman is good", "cat"]
    expected = [lp("<s>", "the") + lp("the", "man"),
                lp("<s>", "the") + lp("the", "woman") + lp("woman", "is") + lp("is", "good"),
                lp("<s>", "cat")]
    for batch_size in (1, 3):  # right padding must not change any score
        out = M.sequence_logprobs(model, tok, texts, batch_size=batch_size)
        np.testing.assert_allclose(out.sum, expected, rtol=1e-5)
        np.testing.assert_array_equal(out.count, [2, 4, 1])
    cont = M.continuation_logprobs(model, tok, ["the", "the man"], ["woman is", "is"])
    np.testing.assert_allclose(cont.sum, [lp("the", "woman") + lp("woman", "is"), lp("man", "is")],
                               rtol=1e-5)
    np.testing.assert_allclose(cont.mean, cont.sum / [2, 1])


def test_length_batches_sort_and_fill_a_token_budget(monkeypatch):
    from crawd.metrics import loglik

    lengths = [3, 9, 1, 9, 4, 2]
    assert loglik.length_batches(lengths, 4, None, default=16) == [[1, 3, 4, 0], [5, 2]]  # longest first
    assert loglik.length_batches(lengths, None, BigramLM(), default=5) == [[1, 3, 4, 0, 5], [2]]  # CPU: default
    monkeypatch.setattr(loglik, "token_budget", lambda model: 12)  # as on a GPU with room for 12 tokens
    batches = loglik.length_batches(lengths, None, BigramLM(), default=5, extra_tokens=1)
    assert batches == [[1], [3], [4, 0], [5, 2]]
    assert all(len(b) * (lengths[b[0]] + 1) <= 12 for b in batches)


def test_results_keep_their_order_whatever_the_batches(tok, monkeypatch):
    from crawd.metrics import loglik

    texts = ["the man", "the woman is good", "cat", "the woman is", "the"]
    model = BigramLM()
    one = M.sequence_logprobs(model, tok, texts, batch_size=1)
    vectors = word_vectors(model, tok, ["nurse", "cat", "doctor"], batch_size=1)
    masses = next_token_masses(model, tok, texts, [ID["she"]], [ID["he"]], batch_size=1)
    monkeypatch.setattr(loglik, "token_budget", lambda model: 7)  # by tokens: batches of 1 to 3 rows
    auto = M.sequence_logprobs(model, tok, texts)
    np.testing.assert_allclose(auto.sum, one.sum, rtol=1e-6)
    np.testing.assert_array_equal(auto.count, one.count)
    np.testing.assert_allclose(word_vectors(model, tok, ["nurse", "cat", "doctor"]), vectors, rtol=1e-6)
    for a, b in zip(next_token_masses(model, tok, texts, [ID["she"]], [ID["he"]]), masses):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_perplexity(tok):
    texts = ["the man", "the woman is good"]
    nll = -(2 * lp("<s>", "the") + lp("the", "man") + lp("the", "woman") + lp("woman", "is")
            + lp("is", "good"))
    est = M.perplexity(BigramLM(), tok, texts)
    assert est.value == pytest.approx(math.exp(nll / 6), rel=1e-5)
    assert est.ci_low <= est.value <= est.ci_high and est.n == 2


# ---------------------------------------------------------------- CrowS-Pairs

def write_crows(root: Path) -> Path:
    (root / "crows_pairs").mkdir(parents=True)
    rows = [("the woman is bad", "the man is bad", "gender"),   # more wins (0.4 > 0.2)
            ("the man is good", "the woman is good", "gender"),  # less wins
            ("the woman is .", "the cat is .", "race")]          # more wins
    lines = ["sent_more,sent_less,stereo_antistereo,bias_type"]
    lines += [f"{a},{b},stereo,{t}" for a, b, t in rows]
    (root / "crows_pairs" / "crows_pairs_anonymized.csv").write_text("\n".join(lines) + "\n")
    return root


def test_crows_pairs_causal(tok, tmp_path):
    out = M.crows_pairs(BigramLM(), tok, write_crows(tmp_path), progress=False)
    assert out["pct_stereotype"]["value"] == pytest.approx(200 / 3)
    assert out["by_bias_type"]["gender"]["value"] == 50 and out["by_bias_type"]["race"]["value"] == 100
    diffs = [abs(lp("the", "woman") + lp("woman", "is") - lp("the", "man") - lp("man", "is"))] * 2
    diffs.append(abs(lp("the", "woman") + lp("woman", "is") - lp("the", "cat") - lp("cat", "is")))
    assert out["mean_abs_ll_diff"]["value"] == pytest.approx(np.mean(diffs), rel=1e-5)
    assert out["n_pairs"] == 3


def test_crows_pairs_keeps_only_the_named_bias_types(tok, tmp_path):
    out = M.crows_pairs(BigramLM(), tok, write_crows(tmp_path), progress=False, bias_types=["gender"])
    assert out["n_pairs"] == 2 and out["pct_stereotype"]["value"] == 50 and set(out["by_bias_type"]) == {"gender"}
    with pytest.raises(ValueError, match="unknown CrowS-Pairs bias type.*religion.*choose from gender, race"):
        M.crows_pairs(BigramLM(), tok, tmp_path, progress=False, bias_types=["religion"])


def test_crows_pairs_masked_pll(tok, tmp_path):
    # shifted toy MLM: a masked token is predicted from its left neighbour, so only the
    # shared token right after the modified word ("is") differs between the sentences.
    mlm = BigramLM(shift=True)
    more, less = M.pseudo_loglikelihoods(mlm, tok, ["the woman is bad"], ["the man is bad"])
    shared = lp("[CLS]", "the") + lp("is", "bad")
    assert more[0] == pytest.approx(shared + lp("woman", "is"), rel=1e-5)
    assert less[0] == pytest.approx(shared + lp("man", "is"), rel=1e-5)
    out = M.crows_pairs(mlm, tok, write_crows(tmp_path), kind="encoder", progress=False)
    assert out["pct_stereotype"]["value"] == pytest.approx(200 / 3)


# ---------------------------------------------------------------- StereoSet

def test_parse_choices_handles_numpy_quoting():
    assert M.parse_choices("['a b' \"it's\"\n 'c\\'d']") == ["a b", "it's", "c'd"]
    with pytest.raises(ValueError):
        M.parse_choices("['only' 'two']")


def test_stereoset_scores(tok, tmp_path):
    (tmp_path / "stereoset").mkdir()
    (tmp_path / "stereoset" / "intrasentence_stereo_set.csv").write_text(
        "prompt,choices,bias_type,target\n"
        "the BLANK is good,['woman' 'man' 'cat'],gender,x\n"  # s>u, a>u, s>a
        "the BLANK is good,['cat' 'man' 'woman'],race,y\n")  # none
    (tmp_path / "stereoset" / "intersentence_stereo_set.csv").write_text(
        "prompt,choices,bias_type,target\n"
        "\"the nurse said that\",\"['she is good' 'he is good'\n 'cat cat cat']\",gender,z\n")
    out = M.stereoset(BigramLM(), tok, tmp_path, progress=False)
    intra, inter = out["intrasentence"]["overall"], out["intersentence"]["overall"]
    both = out["all"]["overall"]
    assert (intra["lms"]["value"], intra["ss"]["value"], intra["icat"]["value"]) == (50, 50, 50)
    assert (inter["lms"]["value"], inter["ss"]["value"], inter["icat"]["value"]) == (100, 100, 0)
    assert both["lms"]["value"] == pytest.approx(200 / 3) and both["ss"]["value"] == pytest.approx(200 / 3)
    assert both["icat"]["value"] == pytest.approx((200 / 3) * (100 / 3) / 50)
    assert out["intrasentence"]["by_bias_type"]["race"]["ss"]["value"] == 0
    assert "first word" in out["note"]


# ---------------------------------------------------------------- WEAT

def test_weat_effect_size_and_exact_p_value():
    A, B = np.array([[1.0, 0]]), np.array([[0.0, 1]])
    X, Y = np.array([[1.0, 0], [2, 0]]), np.array([[0.0, 1], [1, 1]])
    s = np.array([1, 1, -1, 0])  # s(w, A, B) by hand
    assert M.weat_effect_size(X, Y, A, B) == pytest.approx(1.5 / s.std(ddof=1))
    # 6 partitions of 4 words; S takes values 3, -1, 1, -1, 1, -3: only the observed one >= 3
    assert M.weat_p_value(X, Y, A, B) == pytest.approx(1 / 6)
    sampled = M.weat_p_value(X, Y, A, B, n_perm=6000, exact_limit=0)
    assert sampled == pytest.approx(1 / 6, abs=0.02)


def test_weat_word_vectors_use_the_words_own_tokens(tok):
    model = BigramLM()
    vec = word_vectors(model, tok, ["nurse", "cat"], template="the {word} .")
    np.testing.assert_allclose(vec, model.emb[[ID["nurse"], ID["cat"]]].detach().numpy())

    class WithFinal(BigramLM):
        def final_representation(self, input_ids, attention_mask):
            return torch.ones(*input_ids.shape, 3)

    ids = torch.tensor([[ID["the"]]])
    assert M.representation(WithFinal(), ids, torch.ones_like(ids)).shape == (1, 1, 3)


# ---------------------------------------------------------------- GAS and pronoun skew

def test_gas_score_whole_words_case_insensitive():
    out = M.gas_score(["He said", "the cat", "Sheriff hers", "his wife"])
    assert out["gas"]["value"] == 0.75
    assert out["female_share"]["value"] == 0.5 and out["male_share"]["value"] == 0.5
    counts = out["word_counts"]
    assert (counts["he"], counts["hers"], counts["his"], counts["wife"], counts["she"]) == (1, 1, 1, 1, 0)
    assert len(M.GENDERED_WORDS) == 28


def test_gas_on_greedy_generations(tok):
    out = M.gas(BigramLM(), tok, occupations=("nurse", "doctor", "teacher"),
                templates=("{occupation}",), max_new_tokens=1, progress=False)
    assert out["gas"]["value"] == pytest.approx(2 / 3)  # she, he, good
    assert out["by_occupation"] == {"nurse": 1.0, "doctor": 1.0, "teacher": 0.0}
    assert [s["continuation"].strip() for s in out["samples"]] == ["she", "he", "good"]


def test_pronoun_skew(tok, tmp_path):
    (tmp_path / "occupations").mkdir()
    (tmp_path / "occupations" / "occupations-stats.tsv").write_text(
        "occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\n"
        "nurse\t1\t90\t2015\ndoctor\t1\t40\t2015\nteacher\t1\t70\t2015\n")
    out = M.pronoun_skew(BigramLM(), tok, tmp_path, occupations=("nurse", "doctor", "teacher"),
                         templates=("{occupation}",), progress=False)
    p_female = [0.4 / 0.6, 0.2 / 0.6, 0.5]  # (she+her) / (she+her+he+his) from the table
    assert out["pronoun_skew"]["value"] == pytest.approx(np.mean(np.abs(np.array(p_female) - 0.5)))
    assert out["signed_skew"]["value"] == pytest.approx(0.0, abs=1e-7)
    assert out["bls_correlation"]["value"] == pytest.approx(np.corrcoef(p_female, [90, 40, 70])[0, 1])
    assert [r["p_female"] for r in out["by_occupation"]] == pytest.approx(p_female, rel=1e-5)
    assert any("dropped" in n for n in out["notes"])  # capitalised forms are all [UNK] here


def test_the_bls_correlation_of_a_tied_skew_is_nan_not_the_roundings():
    from crawd.metrics.pronoun_skew import ROUNDING_SPREAD, _pearson
    share = np.array([0.9, 0.4, 0.7, 0.2])
    rounding = 0.5 + np.array([3e-8, -2e-8, 4e-8, -1e-8])  # perfectly ordered, but only float32 rounding apart
    assert np.std(rounding) < ROUNDING_SPREAD and np.isnan(_pearson(rounding, share))
    spread = 0.5 + 0.1 * np.array([3.0, -2.0, 4.0, -1.0])
    assert _pearson(spread, share) == pytest.approx(np.corrcoef(spread, share)[0, 1])


# ---------------------------------------------------------------- classification

def test_group_metrics_tpr_and_fpr_gaps():
    y_true = [1, 1, 0, 0, 1, 1, 0, 0]
    y_pred = [1, 0, 0, 1, 1, 1, 0, 0]
    groups = ["female"] * 4 + ["male"] * 4
    out = M.group_metrics(y_true, y_pred, groups)
    assert out["accuracy"]["value"] == 0.75
    assert out["accuracy_by_group"] == {"female": 0.5, "male": 1.0}
    assert out["tpr_gap"] == {"0": -0.5, "1": -0.5}
    assert out["tpr_gap_rms"]["value"] == 0.5 and out["tpr_gap_max"] == 0.5
    assert out["fpr_by_group"] == {"female": 0.5, "male": 0.0} and out["fpr_overall"] == 0.25
    assert out["fpr_equality_difference"] == 0.5 and out["fpr_max_gap"] == 0.25
    assert out["fnr_equality_difference"] == 0.5
    three = M.group_metrics([0, 1, 2] * 3, [0, 1, 2, 0, 1, 0, 0, 0, 2], list("aaabbbccc"))
    assert three["tpr_gap"] == {"0": 0.0, "1": 1.0, "2": 1.0}  # max - min over groups
    assert "fpr_by_group" not in three
    with pytest.raises(ValueError):
        M.group_metrics([1], [1, 0], ["a"])


def test_predict_labels():
    class Classifier(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.stack([input_ids[:, 0] % 2, 1 - input_ids[:, 0] % 2], 1))

    preds = M.predict_labels(Classifier(), make_tokenizer(), ["the cat", "man"], batch_size=1)
    np.testing.assert_array_equal(preds, [1 - ID["the"] % 2, 1 - ID["man"] % 2])


# ---------------------------------------------------------------- registry

def test_run_benchmarks_skips_with_reasons(tok):
    out = M.run_benchmarks(BigramLM(), tok, ["crows_pairs", "gas", "ppl", "tpr_gap"], None,
                           "encoder", progress=False)
    assert {r["status"] for r in out.values()} == {"skipped"}
    assert "crows_pairs" in out["crows_pairs"]["reason"] and "encoder" in out["gas"]["reason"]
    ran = M.run_benchmarks(BigramLM(), tok, ["ppl"], model_kind="decoder", progress=False,
                           ppl={"texts": ["the man"]})
    assert ran["ppl"]["status"] == "ok" and ran["ppl"]["seconds"] >= 0
    assert ran["ppl"]["result"]["perplexity"]["value"] == pytest.approx(
        math.exp(-(lp("<s>", "the") + lp("the", "man")) / 2), rel=1e-5)
    with pytest.raises(ValueError):
        M.run_benchmarks(BigramLM(), tok, ["nope"])


def test_a_benchmark_must_name_its_options():
    with pytest.raises(TypeError, match=r"benchmark 'catch_all' takes \*\*options: name each option it reads"):
        M.register_benchmark("catch_all")(lambda model, tokenizer, data_dir, **options: {})
    assert "catch_all" not in M.BENCHMARKS


# ---------------------------------------------------------------- real data smoke test

DATA = shared_data_dir()


@pytest.mark.skipif(DATA is None or not (DATA / "crows_pairs").is_dir(),
                    reason="the shared data folder (../shared/data or $CRAWD_DATA_DIR) is absent")
def test_real_data_smoke_tiny_gpt2():
    from tokenizers import decoders, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    frame = M.load_crows_pairs(DATA, max_pairs=20)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(frame["sent_more"].tolist() + frame["sent_less"].tolist(),
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer),
                                       n_positions=256, bos_token_id=0, eos_token_id=0)).eval()
    out = M.run_benchmarks(
        model, tokenizer, ["crows_pairs", "stereoset", "weat", "gas", "bold_gas", "pronoun_skew"],
        DATA, "decoder", progress=False, n_boot=50, crows_pairs={"max_pairs": 20},
        stereoset={"max_examples": 10}, weat={"n_perm": 200},
        gas={"occupations": ("nurse", "software engineer"), "max_new_tokens": 3},
        bold_gas={"max_prompts": 4, "max_new_tokens": 3},
        pronoun_skew={"templates": ("The {occupation} said that",)})
    assert all(r["status"] == "ok" for r in out.values()), out
    res = {k: r["result"] for k, r in out.items()}
    assert res["crows_pairs"]["n_pairs"] == 20 and set(res["crows_pairs"]["pct_stereotype"]) == {
        "value", "ci_low", "ci_high", "n"}
    assert {"lms", "ss", "icat"} <= set(res["stereoset"]["all"]["overall"])
    assert {"weat6", "weat7", "weat8"} <= set(res["weat"])
    assert 0 <= res["gas"]["gas"]["value"] <= 1 and res["bold_gas"]["n_prompts"] == 4
    assert res["pronoun_skew"]["bls_correlation"]["n"] > 50
    assert len(res["pronoun_skew"]["by_occupation"]) > 60


def test_stereoset_keeps_the_asked_bias_types(tokenizer):
    from conftest import tiny_model

    from crawd.metrics.stereoset import stereoset

    data_dir = shared_data_dir()
    if data_dir is None:
        pytest.skip("shared data folder (../shared/data) not found")
    result = stereoset(tiny_model("llama"), tokenizer, data_dir, bias_types=["gender"], max_examples=6,
                       n_boot=20, progress=False)
    assert set(result["all"]["by_bias_type"]) == {"gender"} and result["all"]["n"] == 12
    with pytest.raises(ValueError, match="unknown bias type"):
        stereoset(tiny_model("llama"), tokenizer, data_dir, bias_types=["colour"], progress=False)
