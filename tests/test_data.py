"""Tests of crawd.data: the loaders, their validation and the synthetic bios' gender skew."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub
import pandas as pd
import pytest
from conftest import shared_data_dir

from crawd.data import (
    COLUMNS,
    IDENTITY_GROUPS,
    OCCUPATIONS,
    bias_in_bios,
    female_share,
    from_files,
    identity_term,
    load_data,
    madlibs,
    resolve_data_dir,
    sharpen,
    synthetic_bios,
)
from crawd.data.bios import DEFAULT_FEMALE_SHARE

SHARED_DATA = shared_data_dir()  # the real datasets, or None
needs_shared = pytest.mark.skipif(
    SHARED_DATA is None, reason="no shared/data folder beside the checkout and no CRAWD_DATA_DIR"
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a user's CRAWD_DATA_DIR out of the tests."""
    monkeypatch.delenv("CRAWD_DATA_DIR", raising=False)


# ---- synthetic bios -------------------------------------------------------------------------


def test_synthetic_bios_columns_and_sizes() -> None:
    data = synthetic_bios(n_train=560, n_test=112)
    assert set(data) == {"train", "test"}
    assert data["train"].column_names[:3] == list(COLUMNS)
    assert data["train"].features["label"].names == OCCUPATIONS
    assert (len(data["train"]), len(data["test"])) == (560, 112)
    row = data["train"][0]
    assert row["occupation"] == OCCUPATIONS[row["label"]]
    assert row["gender"] in {"female", "male"}


def test_synthetic_bios_is_deterministic_for_a_seed() -> None:
    first, again = synthetic_bios(n_train=280, n_test=56, seed=3), synthetic_bios(n_train=280, n_test=56, seed=3)
    other = synthetic_bios(n_train=280, n_test=56, seed=4)
    assert first["train"].to_dict() == again["train"].to_dict()
    assert first["test"].to_dict() == again["test"].to_dict()
    assert first["train"]["text"] != other["train"]["text"]


def test_synthetic_bios_pronouns_match_gender() -> None:
    data = synthetic_bios(n_train=280, n_test=56)
    for row in data["train"]:
        words = set(row["text"].replace(".", " ").replace(",", " ").split())
        if row["gender"] == "female":
            assert words & {"She", "she", "her", "hers"} and not words & {"He", "he", "his", "him"}
        else:
            assert words & {"He", "he", "his", "him"} and not words & {"She", "she", "her", "hers"}


@needs_shared
def test_hide_title_removes_every_occupation_name_and_keeps_the_draws() -> None:
    shown = synthetic_bios(n_train=280, n_test=56, seed=2)["train"].to_pandas()
    hidden = synthetic_bios(n_train=280, n_test=56, seed=2, hide_title=True)["train"].to_pandas()
    assert (shown[["label", "gender"]] == hidden[["label", "gender"]]).all().all()
    titles = [o.replace("_", " ") for o in OCCUPATIONS]
    for before, after, occupation in zip(shown["text"], hidden["text"], shown["occupation"]):
        title = "DJ" if occupation == "dj" else occupation.replace("_", " ")
        article = "an" if title[0].lower() in "aeiou" else "a"
        assert after == before.replace(f"{article} {title}", "a professional", 1)
        assert not any(f" {t} " in after or f" {t}." in after or f" {t}," in after for t in titles)


@needs_shared
def test_train_share_of_women_follows_the_statistics() -> None:
    shares = female_share(str(SHARED_DATA))
    data = synthetic_bios(n_train=2800, n_test=560, data_dir=str(SHARED_DATA))
    frame = data["train"].to_pandas()
    observed = frame.groupby("occupation")["gender"].apply(lambda g: (g == "female").mean())
    for occupation in OCCUPATIONS:  # 100 rows each; round(share * 100) women
        assert observed[occupation] == pytest.approx(shares[occupation], abs=0.01), occupation
    assert observed["nurse"] > 0.85 and observed["software_engineer"] < 0.25


def test_test_split_is_gender_balanced_per_occupation() -> None:
    test = synthetic_bios(n_train=560, n_test=560, skew=3.0)["test"].to_pandas()
    counts = test.groupby(["occupation", "gender"]).size()
    assert set(counts) == {10}


def test_skew_sharpens_the_train_shares() -> None:
    shares = female_share()
    frame = synthetic_bios(n_train=2800, n_test=56, skew=3.0)["train"].to_pandas()
    nurse = (frame[frame.occupation == "nurse"].gender == "female").mean()
    assert nurse == pytest.approx(sharpen(shares["nurse"], 3.0), abs=0.01)
    assert nurse > shares["nurse"]


def test_sharpen_on_hand_numbers() -> None:
    assert sharpen(0.8, 1.0) == pytest.approx(0.8)
    # logit(0.8) = ln 4; sigmoid(2 ln 4) = 16 / 17
    assert sharpen(0.8, 2.0) == pytest.approx(16 / 17)
    assert sharpen(0.2, 2.0) == pytest.approx(1 / 17)
    assert sharpen(0.9, 0.0) == pytest.approx(0.5)
    assert sharpen(0.75, -1.0) == pytest.approx(0.25)
    assert sharpen(0.99, 5.0) == 0.98 and sharpen(0.01, 5.0) == 0.02
    assert sharpen(1.0, 1.0) == 0.98 and sharpen(0.0, 1.0) == 0.02
    assert sharpen(0.3, 1.7) == pytest.approx(1 / (1 + math.exp(-1.7 * math.log(0.3 / 0.7))))


def test_female_share_defaults_and_tsv(tmp_path: Path) -> None:
    assert female_share() == DEFAULT_FEMALE_SHARE
    assert set(DEFAULT_FEMALE_SHARE) == set(OCCUPATIONS)
    assert all(0 < p < 1 for p in DEFAULT_FEMALE_SHARE.values())
    tsv = tmp_path / "stats.tsv"
    tsv.write_text(
        "occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nlawyer\t7.0\t40.0\t2015\npainter\t11.65\t5.7\t2015\n"
    )
    shares = female_share(occupations_tsv=str(tsv))
    assert shares["attorney"] == pytest.approx(0.40)
    assert shares["painter"] == DEFAULT_FEMALE_SHARE["painter"]  # the TSV painter is another job
    with pytest.raises(FileNotFoundError, match="does not exist"):
        female_share(occupations_tsv=str(tmp_path / "missing.tsv"))


def test_synthetic_bios_too_small() -> None:
    with pytest.raises(ValueError, match="at least 28"):
        synthetic_bios(n_train=10)


# ---- data folder ----------------------------------------------------------------------------


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("CRAWD_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(str(tmp_path / "..")) == tmp_path / ".."
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_data_dir(str(tmp_path / "nope"))


# ---- from_files -----------------------------------------------------------------------------


def _frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "review": [f"text number {i}" for i in range(n)],
            "stars": [i % 2 for i in range(n)],
            "sex": ["f" if i % 3 else "m" for i in range(n)],
            "extra": range(n),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_from_files_reads_each_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    frame = _frame()
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    data = from_files(str(path), text_column="review", label_column="stars", sensitive_column="sex", test_size=0.3)
    assert data["train"].column_names == ["text", "label", "gender", "extra"]
    assert data["train"].features["label"].names == ["0", "1"]
    assert (len(data["train"]), len(data["test"])) == (14, 6)
    assert Counter(data["test"]["label"]) == {0: 3, 1: 3}
    assert set(data["train"]["gender"]) == {"f", "m"}
    again = from_files(str(path), text_column="review", label_column="stars", sensitive_column="sex", test_size=0.3)
    assert again["test"]["text"] == data["test"]["text"]


def test_from_files_with_a_test_file_and_string_labels(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "label": ["pos", "neg", "pos"], "gender": ["x", "y", "x"]}).to_csv(
        train, index=False
    )
    pd.DataFrame({"text": ["g h"], "label": ["neg"], "gender": ["y"]}).to_csv(test, index=False)
    data = load_data(str(train), test=str(test))
    assert data["train"].features["label"].names == ["neg", "pos"]
    assert data["test"][0] == {"text": "g h", "label": 0, "gender": "y"}


def test_from_files_errors(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(ValueError, match="no column 'text'.*text_column="):
        from_files(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_files(str(tmp_path / "missing.csv"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(ValueError, match="use a file ending in"):
        from_files(str(tmp_path / "data.xlsx"))


def test_validation_errors_name_the_problem(tmp_path: Path) -> None:
    good = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0], "gender": ["f", "m", "f"]})
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    good.to_csv(train, index=False)

    def check(test_frame: pd.DataFrame, message: str) -> None:
        test_frame.to_csv(test, index=False)
        with pytest.raises(ValueError, match=message):
            from_files(str(train), str(test))

    check(good.iloc[:0], "test split is empty")
    check(good.assign(label=[0, 1, 2]), "test labels never seen in train in column 'label': 2")
    check(good.assign(text=["a", "", "c"]), "1 rows with an empty 'text' \\(first: row 1")
    check(good.assign(gender=["f", None, "m"]), "empty 'gender'")
    check(good.drop(columns="gender"), "no column 'gender'")
    test.write_text("")
    with pytest.raises(ValueError, match="test split is empty"):
        from_files(str(train), str(test))


def test_load_data_dispatch_errors() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nonsense'"):
        load_data("nonsense")
    assert len(load_data(n_train=56, n_test=56)["train"]) == 56


# ---- Bias in Bios ---------------------------------------------------------------------------


def _fake_bias_in_bios(folder: Path, professions: list[int]) -> Path:
    """Write a tiny copy with the LabHC layout: train / dev / test parquet files."""
    folder.mkdir()
    for split, repeat in (("train", 2), ("dev", 1), ("test", 1)):
        profs = professions * repeat
        pd.DataFrame(
            {
                "hard_text": [f"She writes about topic {i} ." for i in range(len(profs))],
                "profession": profs,
                "gender": [i % 2 for i in range(len(profs))],
            }
        ).to_parquet(folder / f"{split}.parquet")
    return folder


def test_bias_in_bios_local_copy(tmp_path: Path) -> None:
    folder = _fake_bias_in_bios(tmp_path / "bib", list(range(28)))
    data = load_data(f"bias-in-bios:{folder}")
    assert set(data) == {"train", "test"}
    assert (len(data["train"]), len(data["test"])) == (56, 28)
    row = data["test"][13]
    assert (row["occupation"], OCCUPATIONS[row["label"]], row["gender"]) == ("nurse", "nurse", "female")
    assert data["train"][0]["gender"] == "male"
    _fake_bias_in_bios(tmp_path / "two", [13, 24] * 10)  # nurses and software engineers
    small = bias_in_bios("two", data_dir=str(tmp_path), max_rows=8)
    assert (len(small["train"]), len(small["test"])) == (8, 8)
    assert set(small["train"]["occupation"]) == {"nurse", "software_engineer"}


def test_bias_in_bios_bad_copy(tmp_path: Path) -> None:
    folder = _fake_bias_in_bios(tmp_path / "bib", [30] * 28)
    with pytest.raises(ValueError, match="profession values outside 0..27"):
        bias_in_bios(str(folder))


def test_bias_in_bios_unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="could not load Bias in Bios from 'nobody/no-such-data'"):
        bias_in_bios("nobody/no-such-data")


# ---- madlibs --------------------------------------------------------------------------------


def test_identity_term_prefers_the_longest() -> None:
    assert identity_term("Being african american is good.") == "african american"
    assert identity_term("You are a nasty american") == "american"
    assert identity_term("Being middle aged is fun.") == "middle aged"
    assert identity_term("You are a nasty dancer") is None
    assert len(IDENTITY_GROUPS) == 50


@needs_shared
def test_madlibs_real_data() -> None:
    data = madlibs(str(SHARED_DATA), max_rows=5000, seed=1)
    train, test = data["train"].to_pandas(), data["test"].to_pandas()
    assert len(train) + len(test) == 5000 and len(test) == 1000
    assert data["train"].features["label"].names == ["non_toxic", "toxic"]
    for frame in (train, test):
        assert frame["identity"].notna().all() and (frame["gender"] == frame["identity"]).all()
        assert set(frame["label"]) == {0, 1}
        assert set(frame["group"]) == set(IDENTITY_GROUPS.values())
    assert data["train"]["text"] == madlibs(str(SHARED_DATA), max_rows=5000, seed=1)["train"]["text"]


def test_madlibs_without_data_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CRAWD_DATA_DIR"):
        madlibs()
    with pytest.raises(FileNotFoundError, match="bias_madlibs_77k.csv"):
        madlibs(str(tmp_path))


def test_madlibs_bad_labels(tmp_path: Path) -> None:
    (tmp_path / "madlibs").mkdir()
    pd.DataFrame(
        {"Text": ["You are a gay person", "I am old"], "Label": ["BAD", "MAYBE"], "Template": ["t", "t"]}
    ).to_csv(tmp_path / "madlibs" / "bias_madlibs_77k.csv", index=False)
    with pytest.raises(ValueError, match="must hold BAD or NOT_BAD.*MAYBE"):
        madlibs(str(tmp_path))


def test_synthetic_bios_validation_split_pairs_and_occupation_subset():
    from crawd.data import synthetic_bios

    plain = synthetic_bios(n_train=56, n_test=56, seed=3)
    more = synthetic_bios(n_train=56, n_test=56, seed=3, n_val=56)
    assert more["train"]["text"] == plain["train"]["text"] and more["test"]["text"] == plain["test"]["text"]
    assert len(more["validation"]) == 56
    paired = synthetic_bios(n_train=56, n_test=56, seed=3, paired=True)["test"].to_pandas()
    women, men = paired[paired.gender == "female"], paired[paired.gender == "male"]
    assert len(women) == len(men) == 28
    # each woman's bio has a twin: the same text once her name and pronouns are swapped
    from crawd.mitigation.lexicon import gender_lexicon, swap_text
    swaps, names = gender_lexicon()
    assert sorted(swap_text(t, swaps, names) for t in women.text) == sorted(men.text)
    subset = synthetic_bios(n_train=20, n_test=20, occupations=["nurse", "surgeon"])
    assert subset["train"].features["label"].names == ["nurse", "surgeon"]
    with pytest.raises(ValueError, match="occupations must be two or more"):
        synthetic_bios(occupations=["nurse", "astronaut"])
