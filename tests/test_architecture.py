"""The shape of the package: imports run one way through the layers of docs/architecture.md, no cycle (also
none through imports inside functions), methods behind the registry, old import paths still working."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_model

import crawd
from crawd.adapted import AdaptedModel
from crawd.methods import METHODS, get_method
from crawd.methods.registry import register_method

PACKAGE = Path(crawd.__file__).parent

#: The layers of docs/architecture.md, lowest first: a module imports from its own layer or lower ones only.
#: A name ending in ".*" covers a package and everything in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("settings and data", ("crawd.config", "crawd.sensitive", "crawd.models", "crawd.onednn", "crawd.data.*")),
    ("model pieces", ("crawd.block", "crawd.erasure", "crawd.mitigation.*", "crawd.storage")),
    ("adapted base", ("crawd.adapted",)),
    ("methods", ("crawd.methods.*",)),
    ("loading", ("crawd.loading",)),
    ("training and evaluation", ("crawd.lm_examples", "crawd.train", "crawd.metrics.*", "crawd.experiment",
                                 "crawd.pool", "crawd.report", "crawd.export", "crawd.harness", "crawd.bench.*")),
    ("command line", ("crawd.settings", "crawd.cli", "crawd.__main__")),
    ("public API and old paths", ("crawd", "crawd.model", "crawd.self_decay", "crawd.serialization")),
]
#: Old module paths kept as thin re-exports that warn: nothing in the package may import them.
DEPRECATED = {"crawd.model", "crawd.self_decay", "crawd.serialization", "crawd.methods.baselines"}


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def crawd_imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """Every crawd module ``path`` imports, anywhere in it (top level, functions, ``if`` blocks), and whether
    the import sits inside a function."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inside) for a in child.names if a.name.split(".")[0] == "crawd")
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}: relative import"
                if child.module and child.module.split(".")[0] == "crawd":
                    for alias in child.names:  # ``from crawd import experiment`` imports the module crawd.experiment
                        sub = f"{child.module}.{alias.name}"
                        found.append((sub if sub in modules else child.module, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and (module + ".").startswith(member[:-1])):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool]]]:
    modules = module_names()
    return {name: crawd_imports(path, set(modules)) for name, path in modules.items()}


def test_every_module_sits_in_a_layer_and_imports_only_downwards(graph):
    wrong = []
    for module, imports in graph.items():
        for target, _ in imports:
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_not_even_through_imports_inside_functions(graph):
    edges = {module: sorted({target for target, _ in imports} - {module}) for module, imports in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in edges.get(module, []):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                walk(target, path + [module])
        state[module] = 2

    for module in edges:
        if module not in state:
            walk(module, [])


def test_no_crawd_import_inside_a_function_and_none_of_an_old_path(graph):
    inside = [f"{module} imports {target} inside a function" for module, imports in graph.items()
              for target, in_function in imports if in_function]
    old = [f"{module} imports the old path {target}" for module, imports in graph.items()
           for target, _ in imports if target in DEPRECATED and module not in DEPRECATED]
    assert not inside and not old, "\n".join(inside + old)


def test_model_code_imports_neither_training_nor_the_benchmark(graph):
    model_layers = {name for name, _ in LAYERS[:4]}
    for module, imports in graph.items():
        if LAYERS[layer_of(module)][0] in model_layers:
            assert not [t for t, _ in imports if t.startswith(("crawd.bench", "crawd.train", "crawd.experiment"))]


# ---- the registry of methods --------------------------------------------------------------------

def test_each_method_lives_in_its_own_module():
    for name, method in METHODS.items():
        if method.build is None:
            continue
        home = method.transform.__module__ if method.transform else method.build.__module__
        assert home == f"crawd.methods.{name}", f"method {name!r} is defined in {home}"


def test_loading_goes_through_the_registry(tmp_path):
    """A method registered outside the package loads back as its own class: crawd.load lists no method."""

    class ToyModel(AdaptedModel):
        saved_as = "toy-test"

    register_method("toy-test", "a method defined by this test")(ToyModel)
    try:
        tokenizer = make_tokenizer()
        model = get_method("toy-test").build(tiny_model("llama"), tokenizer, crawd.CrawdConfig(num_heads=4))
        model.save_pretrained(str(tmp_path))
        assert json.loads((tmp_path / "crawd_config.json").read_text())["method"] == "toy-test"
        assert type(crawd.load(tiny_model("llama"), tokenizer, tmp_path)) is ToyModel
    finally:
        del METHODS["toy-test"]


@pytest.mark.parametrize("method, mode, expected", [("vanilla", "cross", "AdaptedModel"),
                                                    ("crawd", "cross", "CrawdModel"),
                                                    ("crawd", "self", "SelfDecayModel")])
def test_adapters_saved_as_before_still_load(method, mode, expected, tmp_path):
    """The folder format is unchanged: "method" is crawd or vanilla, crawd's mode is in the "crawd" config."""
    tokenizer = make_tokenizer()
    config = crawd.CrawdConfig(num_heads=4, mode=mode)
    model = crawd.wrap(tiny_model("llama"), tokenizer, config) if method == "crawd" else \
        crawd.adapt(tiny_model("llama"), tokenizer, config)
    model.save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / "crawd_config.json").read_text())
    assert meta["method"] == method and meta["crawd"]["mode"] == mode and meta["format"] == "crawd-adapter/1"
    loaded = crawd.load(tiny_model("llama"), tokenizer, tmp_path)
    assert type(loaded).__name__ == expected
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(ids).logits, model.eval()(ids).logits, atol=1e-6)


def test_old_import_paths_still_work_and_warn(monkeypatch):
    old = {"crawd.model": ("CrawdModel", "wrap", "adapt"), "crawd.self_decay": ("SelfDecayModel", "default_layers"),
           "crawd.serialization": ("load", "AutoCrawdModel", "read_adapter", "save_adapter", "write_json"),
           "crawd.methods.baselines": ("AdversarialModel", "EARModel", "DebiasTuningModel", "cda_transform",
                                       "blind_transform", "DEFAULTS")}
    for name, attrs in old.items():
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh: it warns again
        with pytest.warns(DeprecationWarning, match=name.replace(".", r"\.") + " is deprecated"):
            module = importlib.import_module(name)
        assert all(hasattr(module, a) for a in attrs), name
    assert crawd.model.CrawdModel is crawd.CrawdModel and crawd.model.wrap is crawd.wrap
    assert crawd.serialization.load is crawd.load and crawd.self_decay.SelfDecayModel is crawd.SelfDecayModel


def test_public_names_still_import():
    assert crawd.__all__ == ["AdaptedModel", "AutoCrawdModel", "CrawdConfig", "CrawdModel", "CrossAttentionBlock",
                             "GROUPS", "SelfDecayModel", "adapt", "load", "topk_decay", "wrap"]
    assert all(hasattr(crawd, name) for name in crawd.__all__)
