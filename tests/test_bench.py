"""crawd.bench on a tiny random Llama: the documented keys, sane positive ratios, the text report."""

from __future__ import annotations

import json

import pytest

from crawd import bench

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def result():
    return bench.run_bench(random_config="tiny", heads=("residual", "concat", "self", "debias"), batch=2, seq_len=16, ref_len=3, repeats=2, warmup=1,
                           gen_tokens=4, gen_repeats=2, gen_prompt_len=4, memory=False, device="cpu", threads=1,
                           verbose=False)


def test_run_bench_keys_and_ratios(result):
    assert {"machine", "versions", "settings", "train", "train_times", "generate", "memory", "parameters",
            "ratios", "seconds"} <= set(result)
    assert set(result["train"]) == {"vanilla", "residual", "concat", "self", "debias"}
    for stats in [*result["train"].values(), *result["generate"].values()]:
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert result["settings"]["ref_len"] == 3 and result["memory"] is None
    names = {(r["name"], r["head"]) for r in result["ratios"]}
    assert names == {(n, h) for n in ("train step time", "generation tokens/s") for h in ("residual", "concat", "self", "debias")}
    for row in result["ratios"]:
        assert 0 < row["min"] <= row["pair_median"] <= row["max"]
        assert 0.05 < row["median"] < 20
        assert row["met"] in (True, False) if row["head"] != "concat" else row["met"] is None
        assert row["target"] == ("<= 1.3" if (row["head"], row["key"]) == ("debias", "train_time") else
                                 bench.TARGETS[row["key"]][0] + " " + f"{bench.TARGETS[row['key']][1]:g}")
    json.dumps(result)  # JSON-ready


def test_parameter_counts_match_the_built_models(result):
    p = result["parameters"]
    d, vocab = 64, 512
    assert p["variants"]["vanilla"]["new"] == 0
    assert p["variants"]["residual"]["block"] == bench.block_parameters(d)
    assert p["variants"]["residual"]["head"] == d * d
    assert p["variants"]["concat"]["head"] == 2 * d * vocab
    assert p["variants"]["residual"]["lora"] == p["variants"]["vanilla"]["lora"] > 0
    assert p["variants"]["self"]["new"] == 0  # fixed similarity scoring: no new trainable weights
    assert p["variants"]["debias"]["new"] == 0  # the preset adds loss terms, no weights


def test_ffn_width_for_one_percent():
    # SmolLM2: the attention projections alone are 0.99% of the base model
    smol = bench.parameter_table(*bench.REFERENCE_SHAPES["smollm2-135m"])
    f = smol["max_ffn_for_1pct"]["block_only"]
    assert f > 0 and bench.block_parameters(576, f) <= 0.01 * 134_515_008 < bench.block_parameters(576, f + 1)
    assert smol["max_ffn_for_1pct"]["residual"] == 0


def test_format_bench(result):
    text = bench.format_bench(result)
    for word in ("train step time", "generation tokens/s", "residual", "concat", "torch", "FFN width"):
        assert word in text
    assert set(bench.BENCH_OPTIONS) >= {"model", "heads", "batch", "seq_len", "ref_len", "repeats", "gen_tokens",
                                        "device", "dtype", "memory"}


def test_cli_bench_passes_its_options(tmp_path, capsys):
    from crawd.cli import main

    out = tmp_path / "bench.json"
    main(["bench", "--random-config", "tiny", "--heads", "self", "--batch", "2", "--seq-len", "8", "--threads", "1",
          "--device", "cpu", "--no-memory", "--quick", "--repeats", "2", "--gen-tokens", "0", "--padding", "0.5",
          "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["settings"]["heads"] == ["self"] and result["settings"]["seq_len"] == 8
    assert result["settings"]["repeats"] == 2 and result["generate"] is None and result["settings"]["padding"] == 0.5
    assert set(result["train"]) == {"vanilla", "self"} and result["memory"] is None
    assert "train step time" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--random-config", "tiny", "--heads", "wide"])
    assert exit_info.value.code == 2
    assert "error: unknown head 'wide': use residual, concat, self, debias" in capsys.readouterr().out


def test_random_model_is_built_on_the_target_device():
    base, _ = bench.load_base(random_config="llama-1b", device="meta", dtype=torch.bfloat16)  # no CPU weights at all
    assert {p.device.type for p in base.parameters()} == {"meta"}
    assert sum(p.numel() for p in base.parameters()) > 1e9


def test_padded_training_batch_is_right_padded():
    ids, mask = bench.random_batch(6, 20, 100, torch.device("cpu"), seed=1, padding=0.5)
    lengths = mask.sum(-1)
    assert mask[0].all() and (lengths >= 10).all() and (lengths < 20).any()
    assert torch.equal(mask, (torch.arange(20)[None] < lengths[:, None]).long())  # valid tokens first
    assert torch.equal(bench.random_batch(6, 20, 100, torch.device("cpu"), seed=1)[0][mask.bool()], ids[mask.bool()])
