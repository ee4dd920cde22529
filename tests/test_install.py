"""What a fresh install needs: every third-party module src/ imports is declared (deptry), and the
word lists the mitigation reads ship inside the package, so the lexicon is the same without a data folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data_dir

from crawd.mitigation import lexicon

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("deptry") is None, reason="deptry is not installed (pip install -e '.[dev]')")
def test_every_imported_module_is_declared_directly():
    """deptry over src/: a module imported but not declared, or declared only through another package
    (transitive), fails; pyproject.toml's [tool.deptry] says which declared packages crawd never imports."""
    done = subprocess.run(["deptry", "src"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_lexicon_is_the_full_one_with_no_data_folder(monkeypatch):
    monkeypatch.delenv("CRAWD_DATA_DIR", raising=False)
    lexicon.gender_lexicon.cache_clear()
    swaps, names = lexicon.gender_lexicon()
    # one pair from each shipped list (Bolukbasi's definitional and equalize pairs, gn_glove), and a core pair
    for male, female in (("grandfather", "grandmother"), ("spokesman", "spokeswoman"), ("nephew", "niece"),
                         ("king", "queen"), ("sir", "madam")):
        assert swaps.get(male) == female or swaps.get(female) == male, (male, female)
    assert len(swaps) > 300 and names["Mary"] == "James"
    licenses = [lexicon.WORDLISTS / folder / "LICENSE" for folder in ("bolukbasi", "gn_glove")]
    assert all(path.is_file() for path in licenses)


@pytest.mark.skipif(shared_data_dir() is None, reason="the shared data folder (word lists) is absent")
def test_the_shipped_word_lists_are_the_published_ones():
    shared = shared_data_dir() / "wordlists"
    for name in ("bolukbasi/definitional_pairs.json", "bolukbasi/equalize_pairs.json", "bolukbasi/LICENSE",
                 "gn_glove/male_word_file.txt", "gn_glove/female_word_file.txt", "gn_glove/LICENSE"):
        assert (lexicon.WORDLISTS / name).read_bytes() == (shared / name).read_bytes(), name


def test_an_optional_extra_missing_is_one_line_naming_it():
    # a fresh interpreter in which lm-evaluation-harness cannot be imported, as if it were not installed
    code = "import sys; sys.modules['lm_eval'] = None; import crawd.harness"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("pip install 'crawd[lm-eval]'"), done.stderr[-500:]
