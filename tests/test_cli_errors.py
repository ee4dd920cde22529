"""Bad input through the CLI: one ``error:`` line, exit status 2, no traceback, nothing written over.

Each case runs ``crawd.cli.main`` in-process (the same code path as the ``crawd`` command).
Training cases point ``--out`` at a folder that already holds an adapter and check that
every file there is left exactly as it was; adapter cases go through ``crawd eval``
and check that its report folder is never created.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import WORDS, make_tokenizer, save_tiny_model, tiny_model, write_csv

import crawd
from crawd.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-errors")
    model = save_tiny_model(root / "model")
    data = write_csv(root / "data.csv")
    adapter = root / "adapter"
    crawd.wrap(tiny_model("llama"), make_tokenizer(), num_heads=4).save_pretrained(str(adapter))
    return {"root": root, "model": model, "data": data, "adapter": adapter}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def assert_one_error(code: int, output: str, expected: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2, output
    assert len(errors) == 1, output
    assert "Traceback" not in output
    assert expected in errors[0], errors[0]
    print(f"\n[message] {errors[0]}")  # shown with -s: the exact line each case produces
    return errors[0]


@pytest.fixture
def out_with_adapter(tmp_path: Path) -> Path:
    """An output folder that already holds a finished run: it must survive every failed command."""
    out = tmp_path / "out"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "crawd_adapter.safetensors").write_bytes(b"earlier run")
    (out / "train_summary.json").write_text("{}")
    return out


def train_args(assets: dict[str, Path], out: Path, *extra: object) -> list[object]:
    return ["train", "--model", assets["model"], "--data", assets["data"], "--out", out, "--max-steps", 2,
            "--batch-size", 4, "--seq-len", 16, *extra]


TRAIN_CASES = {
    "missing model folder": (lambda a: ["--model", a["root"] / "no-such-model"], "does not exist"),
    "folder that is not a model": (lambda a: ["--model", a["root"]], "is not a transformers model folder"),
    "top_k out of range": (lambda a: ["--top-k", 1.5], "top_k must be in [0, 1], got 1.5"),
    "decay out of range": (lambda a: ["--decay", -0.1], "decay must be in [0, 1], got -0.1"),
    "unencodable sensitive word": (lambda a: ["--sensitive-words", "he,zebra"],
                                   "sensitive word 'zebra' is not in the tokenizer's vocabulary"),
    "qlora without CUDA": (lambda a: ["--qlora"], "--qlora needs a CUDA device and bitsandbytes; none found"),
    "bf16 without CUDA": (lambda a: ["--bf16"], "--bf16 needs a CUDA device; none found"),
    # typer parses these before any crawd code runs: its own error classes must still become one line
    "unknown option": (lambda a: ["--output-dir", "x"], "No such option: --output-dir"),
    "value of the wrong type": (lambda a: ["--max-steps", "abc"], "Invalid value for '--max-steps'"),
    "option without its value": (lambda a: ["--top-k"], "Option '--top-k' requires an argument"),
}


NO_CUDA_CASES = ("qlora without CUDA", "bf16 without CUDA")


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the flag is valid"))
    if case in NO_CUDA_CASES else case for case in TRAIN_CASES])
def test_train_bad_input(case, assets, out_with_adapter, capsys):
    extra, expected = TRAIN_CASES[case]
    before = snapshot(out_with_adapter)
    argv = train_args(assets, out_with_adapter)
    flags = extra(assets)
    if flags[0] == "--model":  # replace the good model folder
        argv[argv.index("--model") + 1] = flags[1]
        flags = []
    code, output = run_cli(argv + flags, capsys)
    assert_one_error(code, output, expected)
    assert snapshot(out_with_adapter) == before


def test_unknown_command(capsys):
    assert_one_error(*run_cli(["trian"], capsys), "No such command 'trian'")


def test_bad_cpu_linear_backend_is_an_error_before_anything_is_written(assets, out_with_adapter, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("CRAWD_CPU_LINEAR", "mkl")
    before = snapshot(out_with_adapter)
    code, output = run_cli(train_args(assets, out_with_adapter), capsys)
    assert_one_error(code, output, "CRAWD_CPU_LINEAR='mkl' is not a CPU linear backend; set it to one of auto, onednn, torch")
    assert snapshot(out_with_adapter) == before


def test_model_folder_with_a_bad_config(assets, out_with_adapter, tmp_path, capsys):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"hello": 1}')
    before = snapshot(out_with_adapter)
    argv = train_args(assets, out_with_adapter)
    argv[argv.index("--model") + 1] = bad
    code, output = run_cli(argv, capsys)
    assert_one_error(code, output, f"{bad} is not a usable transformers model (config or tokenizer)")
    assert snapshot(out_with_adapter) == before


@pytest.mark.parametrize("case", ["missing column", "empty text", "unseen test labels"])
def test_train_bad_dataset(case, assets, out_with_adapter, tmp_path, capsys):
    rows = "text,label,gender\nhe is a nurse,nurse,male\nshe is a doctor,doctor,female\nthe nurse,nurse,female\n"
    train_csv, extra = tmp_path / "train.csv", []
    if case == "missing column":  # classification needs the sensitive column (a corpus for --task lm does not)
        train_csv.write_text("text,label\nhe is a nurse,nurse\nshe is a doctor,doctor\n")
        extra = ["--task", "classification"]
        expected = "has no column 'gender'"
    elif case == "empty text":
        train_csv.write_text(rows + '"",doctor,male\n')
        expected = "rows with an empty 'text'"
    else:
        train_csv.write_text(rows)
        (tmp_path / "test.csv").write_text("text,label,gender\nhe is a teacher,teacher,male\n")
        extra = ["--test-data", tmp_path / "test.csv", "--task", "classification"]
        expected = "test labels never seen in train in column 'label': teacher"
    before = snapshot(out_with_adapter)
    argv = train_args(assets, out_with_adapter, *extra)
    argv[argv.index("--data") + 1] = train_csv
    code, output = run_cli(argv, capsys)
    assert_one_error(code, output, expected)
    assert snapshot(out_with_adapter) == before


def test_yaml_unknown_key_names_the_nearest(assets, out_with_adapter, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("top_kk: 0.3\n")
    before = snapshot(out_with_adapter)
    code, output = run_cli(train_args(assets, out_with_adapter, "--config", config), capsys)
    assert_one_error(code, output, f"unknown key 'top_kk' in {config.resolve()}; did you mean 'top_k'?")
    assert snapshot(out_with_adapter) == before


def test_unwritable_output_folder(assets, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, output = run_cli(train_args(assets, blocker / "out"), capsys)
    assert_one_error(code, output, f"cannot write to output folder {blocker / 'out'}")


def test_disk_full_is_caught_before_training(assets, tmp_path, monkeypatch, capsys):
    import shutil

    from crawd import train as train_module

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage._replace(free=200_000))
    out = tmp_path / "out"
    code, output = run_cli(train_args(assets, out), capsys)
    assert_one_error(code, output, f"not enough free disk space for output folder {out}: 0.2 MiB free")
    assert not list(out.glob("checkpoint-*")) and not (out / "adapter").exists()


@pytest.mark.parametrize("case", ["another base", "corrupt safetensors", "truncated safetensors", "pickle file"])
def test_eval_bad_adapter(case, assets, tmp_path, capsys):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(assets["adapter"], adapter)
    weights = adapter / "crawd_adapter.safetensors"
    if case == "another base":
        shutil.rmtree(adapter)
        from transformers import LlamaConfig, LlamaForCausalLM

        other = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, vocab_size=len(WORDS)))
        crawd.wrap(other, make_tokenizer(), num_heads=4).save_pretrained(str(adapter))
        expected = (f"was saved for another base model (llama, hidden size 64, vocabulary {len(WORDS)}); "
                    f"this base is llama, hidden size 32, vocabulary {len(WORDS)}")
    elif case == "corrupt safetensors":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
        expected = "crawd_adapter.safetensors is corrupt or truncated"
    elif case == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[:-100])
        expected = "crawd_adapter.safetensors is corrupt or truncated"
    else:
        (adapter / "adapter_model.bin").write_bytes(b"\x80\x04cos\nsystem\n")  # never unpickled
        expected = "holds pickle files (adapter_model.bin); crawd loads only safetensors and JSON"
    out = tmp_path / "eval-out"
    code, output = run_cli(["eval", "--model", assets["model"], "--adapter", adapter, "--benchmarks", "ppl",
                            "--data", assets["data"], "--out", out], capsys)
    assert_one_error(code, output, expected)
    assert not out.exists()


def test_trust_remote_code_is_off_unless_asked(assets, tmp_path, monkeypatch, capsys):
    from crawd import models

    seen: list[bool] = []

    class Refuse:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.append(kwargs["trust_remote_code"])
            raise ValueError("stopped by the test")

    monkeypatch.setitem(models._TASKS, "lm", Refuse)
    for flags, expected in (([], False), (["--trust-remote-code"], True)):
        code, output = run_cli(train_args(assets, tmp_path / "out", *flags), capsys)
        assert_one_error(code, output, "stopped by the test")
        assert seen[-1] is expected


def test_paths_are_resolved_and_reported(assets, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(assets["data"], tmp_path / "mine.csv")
    Path("run.yaml").write_text("data: mine.csv\ntop_k: 2.0\n")  # fails right after the paths are shown
    code, output = run_cli(["train", "--model", assets["model"], "--out", "out", "--config", "run.yaml"], capsys)
    assert_one_error(code, output, "top_k must be in [0, 1], got 2.0")
    code, output = run_cli(["train", "--model", "./nope", "--out", "out", "--config", "run.yaml", "--top-k", 0.4],
                           capsys)
    assert f"config: {tmp_path / 'run.yaml'}" in output
    assert f"data: {tmp_path / 'mine.csv'}" in output
    assert f"out: {tmp_path / 'out'}" in output
    assert f"model: {tmp_path / 'nope'}" in output
    assert_one_error(code, output, f"model folder {tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize("earlier, later",
                         [("vanilla", "crawd"), ("crawd", "vanilla"), ("crawd", "crawd --head residual")])
def test_out_holding_another_methods_run_is_refused_at_the_start(earlier, later, assets, tmp_path, monkeypatch, capsys):
    """Issue 17.3: another method in a run's folder used to fail deep in checkpoint or optimizer loading."""
    from crawd import models

    out = tmp_path / "run"
    main([str(a) for a in train_args(assets, out, "--method", earlier)])  # a finished run in --out
    capsys.readouterr()
    before = snapshot(out)
    loads: list[str] = []
    monkeypatch.setattr(models, "_resolve", lambda name, cache_dir: loads.append(name) or name)
    method, *flags = later.split()
    code, output = run_cli(train_args(assets, out, "--method", method, *flags), capsys)
    described = {"vanilla": "vanilla", "crawd": "crawd (mode cross, head concat)"}
    assert_one_error(code, output, f"--out holds a {described[earlier]} run")
    assert "choose another folder or the same method" in output
    assert not loads  # refused before the model was loaded
    assert snapshot(out) == before
