"""The package's shape holds: no import cycle of modules or of packages (imports inside functions
included), run-directory file names spelled in one module, one name per run everywhere, every
TrainConfig field settable from the CLI, YAML and Python with one validation, and code that cites only
documents the repository has."""
from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gerbil"
ROOT = SRC.parents[1]


# ------------------------------------------------------------------------------------ import cycles
def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _deferred(tree: ast.Module, is_pkg: bool) -> set[int]:
    """ids of the import nodes that load nothing at run time: those under `if TYPE_CHECKING:` and those in
    a package's PEP 562 `__getattr__` (its lazy entry points)."""
    skip: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(node.body)
    if is_pkg:
        skip.update(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__")
    return {id(n) for top in skip for n in ast.walk(top)}


def _import_graph(deferred: bool = True) -> dict[str, set[str]]:
    """module → the gerbil modules it imports, counting imports inside functions; `deferred=False` leaves
    out TYPE_CHECKING blocks and packages' `__getattr__`."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        skip = set() if deferred else _deferred(tree, is_pkg)
        for node in ast.walk(tree):  # every import, also inside functions
            if id(node) in skip:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            for n in names:
                if not n.startswith("gerbil"):
                    continue
                t = target(n)
                if t is None or t == mod or (is_pkg and t.startswith(mod + ".")):
                    continue  # a package re-exporting its own children is fine
                graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_package_cycles():
    """Packages show the data's path: no cycle between gerbil's top-level subpackages and modules
    (`data`, `model`, `runs`, `train`, `eval`, `plan`, `export`, ...), counting imports inside functions
    but not TYPE_CHECKING blocks or a package's lazy `__getattr__`."""
    packages: dict[str, set[str]] = {}
    for mod, targets in _import_graph(deferred=False).items():
        if mod.count(".") == 0:
            continue  # gerbil/__init__.py itself
        a = mod.split(".")[1]
        packages.setdefault(a, set()).update(t.split(".")[1] for t in targets if t.count(".") and t.split(".")[1] != a)
    cycles = _cycles(packages)
    assert not cycles, "package cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_run_directory_file_names_are_spelled_in_one_module():
    """A run directory's file names (config.yaml, env.json, metrics.jsonl, result.json, a checkpoint's
    meta.json / model.safetensors / state.pt, ...) are spelled only in gerbil/runs/rundir.py, in private
    constants; everything else asks `RunDir` (or its checkpoint paths) for them. A few other formats
    happen to use the same names for their own files: each is allowed where it is owned, with its reason."""
    home = SRC / "runs" / "rundir.py"
    names = set()
    for node in ast.parse(home.read_text()).body:  # the module's name constants: _METRICS = "metrics.jsonl"
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            value, targets = node.value.value, [t.id for t in node.targets if isinstance(t, ast.Name)]
            if re.fullmatch(r"[\w-]+\.(json|jsonl|yaml|pt|safetensors)", value):
                assert all(t.startswith("_") for t in targets), f"{targets} must be private to {home.name}"
                names.add(value)
    assert {"config.yaml", "env.json", "metrics.jsonl", "result.json", "meta.json", "state.pt",
            "model.safetensors"} <= names
    elsewhere = {  # (name, module): why that module owns a file of the same name
        ("meta.json", "data/store_writer.py"): "a token store's index (written by it)",
        ("meta.json", "finetune/datasets/fuzzy.py"): "a generated dataset's metadata",
        ("config.json", "export/"): "transformers' config of an export folder (the export package)",
        ("model.safetensors", "export/"): "transformers' weights of an export folder (the export package)",
    }
    found = []
    for path in SRC.rglob("*.py"):
        if path == home:
            continue
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            owners = {rel, rel.split("/")[0] + "/"}  # the module, or the package it is in
            allowed = {m for (n, m) in elsewhere if n == node.value} if isinstance(node, ast.Constant) else set()
            if isinstance(node, ast.Constant) and node.value in names and not owners & allowed:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, "run-directory file names spelled outside gerbil/runs/rundir.py: " + ", ".join(found)


def test_torch_free_modules_stay_torch_free():
    """plan, the model config, the runs package (run directory, checkpoints' readers, registry), the
    checkpoint policy, the lock and the table read runs without importing torch (so `gerbil plan` /
    `gerbil table` answer instantly anywhere)."""
    code = ("import sys; import gerbil.plan, gerbil.model.config, gerbil.runs.rundir, gerbil.runs.env, "
            "gerbil.runs.registry, gerbil.train.config, gerbil.train.checkpoint, gerbil.lock, gerbil.units, "
            "gerbil.eval.tasks, gerbil.eval.table; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ sizes
#: A module past 500 lines or a function past 80 (its docstring and nested functions counted) does more
#: than one thing: split it. At most two justified exceptions of each, none past 650 / 120.
MODULE_LINES, FUNCTION_LINES = 500, 80
MODULE_CEILING, FUNCTION_CEILING = 650, 120
#: the exceptions, each with why ("path" for a module, "path:function" for a function)
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}
def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    """(module → lines, "module:function" → lines) of every module of gerbil."""
    modules, functions = {}, {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[f"{rel}:{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, functions


def test_modules_and_functions_stay_small():
    assert len(LONG_MODULES) <= 2 and len(LONG_FUNCTIONS) <= 2, "at most two exceptions of each"
    modules, functions = _sizes()
    for sizes, limit, ceiling, allowed in ((modules, MODULE_LINES, MODULE_CEILING, LONG_MODULES),
                                           (functions, FUNCTION_LINES, FUNCTION_CEILING, LONG_FUNCTIONS)):
        over = {k: n for k, n in sizes.items() if n > (ceiling if k in allowed else limit)}
        assert not over, f"over {limit} lines (split them, docs/architecture.md): {over}"
        stale = [k for k in allowed if sizes.get(k, 0) <= limit]
        assert not stale, f"no longer needed as exceptions: {stale}"


# ------------------------------------------------------------------------------------ documents
def test_code_cites_only_documents_in_the_repository():
    cited = set()
    for p in SRC.rglob("*"):
        if p.suffix in (".py", ".yaml"):
            cited |= set(re.findall(r"[\w./-]*\b[A-Za-z_-]+\.md\b", p.read_text()))
    missing = sorted(c for c in cited if not (ROOT / c).is_file() and not (ROOT / "docs" / Path(c).name).is_file())
    assert not missing, f"code cites documents the repository does not have: {missing}"
    assert not any("REFERENCE.md" in c or "ASSETS.md" in c for c in cited)


# ------------------------------------------------------------------------------------ one name
@pytest.mark.parametrize("objective", ["plain", "causal", "fim", "mlm", "blender"])
def test_run_export_and_table_names_agree(objective, tmp_path, tokenizer):
    """A run's directory, its export and its table row carry one name, for every objective and for a
    custom --tokens budget (no class in the name) as for a class budget."""
    from gerbil.data.store import TokenStore
    from gerbil.export import export, read_info
    from gerbil.eval.table import row_for_run
    from gerbil.train.config import TrainConfig

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50000, size=int(rng.integers(20, 80))) for _ in range(40)]
    store = TokenStore.write(tmp_path / "store", docs, tokenizer_sha256=tokenizer.sha256, vocab_size=50264,
                             val_fraction=0.1)
    from helpers import TINY
    from gerbil.train import train

    for kw, want in ((dict(tokens=256), {"plain": "Gerbil-tiny", "causal": "GerbilCausal-tiny",
                                         "fim": "GerbilFIM-tiny", "mlm": "GerbilMLM-tiny",
                                         "blender": "GerbilBlender-tiny"}[objective]),
                     (dict(cls="A", tokens=256), None)):
        r = train(TrainConfig(model=dict(TINY), data=str(store.path), objective=objective, seq_len=32,
                              batch_tokens=128, micro_batch=4, runs=str(tmp_path / "runs"), val_tokens=64,
                              progress=False, **kw))
        if want:
            assert r.name == want
        else:
            assert r.name.split("-")[1] == "A"
        out = export(r.run_dir, tmp_path / "exports" / r.name, tokenizer=False)
        assert read_info(out)["name"] == r.name == row_for_run(r.run_dir)["Model Name"] == r.run_dir.name


# ------------------------------------------------------------------------------------ one config
def test_every_train_config_field_has_a_flag_and_one_validation():
    from gerbil.cli import build_parser
    from gerbil.train.config import TrainConfig

    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}
    assert fields <= dests, f"fields without a flag: {sorted(fields - dests)}"
    flags = {s for a in train_parser._actions for s in a.option_strings}
    assert {"--class", "--from", "--resume", "--no-compile", "--no-progress", "--config"} <= flags


@pytest.mark.parametrize("data, message", [
    ({"seq_len": "128"}, "seq_len: expected an integer"),
    ({"size": 3.3}, "size: expected a string"),
    ({"weight_decay": "x"}, "weight_decay: expected a number"),
    ({"lr": -1}, "lr: must be > 0"),
    ({"lr": 0}, "lr: must be > 0"),
    ({"val_tokens": -5}, "val_tokens: must be >= 0"),
    ({"tokens": -8192}, "tokens: must be > 0"),
    ({"tokens": "lots"}, "tokens: count 'lots' is not a number"),
    ({"tokens": "-8192"}, "tokens: count must be positive"),
    ({"lr": "fast"}, "lr: expected a number"),
    ({"schedule": "linear"}, "schedule: 'linear' is not one of"),
    ({"compile": "yes"}, "compile: expected true/false"),
    ({"class": 5}, "class: expected a string"),
    ({"colour": "red"}, "unknown training option 'colour'"),
])
def test_bad_values_are_one_line_errors_naming_the_key(data, message):
    from gerbil.train.config import TrainConfig

    with pytest.raises(ValueError, match=re.escape(message)) as e:
        TrainConfig.from_dict(data)
    assert "\n" not in str(e.value)


def test_cli_yaml_and_python_agree(tmp_path, capsys):
    """The same options from a recipe, from flags and in Python build equal configs; broken YAML and
    `--config` with `--class`/`--from`/`--resume` are one-line errors, not tracebacks."""
    from gerbil.cli import build_parser, main
    from gerbil.options import config_from_args
    from gerbil.train.config import TrainConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("size: 3.3m\nclass: B\ntokens: 50M\nseq_len: 256\nbatch_tokens: 131k-262k\nlr: 0.002\n"
                      "blender_weights: [1, 2, 1]\nobjective: blender\n")
    flags = ["train", "--size", "3.3m", "--class", "B", "--tokens", "50M", "--seq-len", "256", "--batch-tokens",
             "131k-262k", "--lr", "0.002", "--blender-weights", "1,2,1", "--objective", "blender"]
    from_flags = config_from_args(build_parser().parse_args(flags), TrainConfig)
    from_yaml = TrainConfig.from_yaml(recipe)
    in_python = TrainConfig(size="3.3m", cls="B", tokens=50_000_000, seq_len=256, batch_tokens="131k-262k",
                            lr=0.002, blender_weights=[1.0, 2.0, 1.0], objective="blender")
    assert from_flags == from_yaml == in_python
    both = config_from_args(build_parser().parse_args(["train", "--class", "C", "--from", "runs/x"]), TrainConfig,
                            str(recipe))
    assert both.cls == "C" and both.from_run == "runs/x" and both.size == "3.3m"  # flags win over the recipe
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [3.3m\n")
    assert main(["train", "--config", str(bad), "--class", "A"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid YAML at line" in err and "\n" not in err


import numpy as np  # noqa: E402  (used by the names test above; kept out of the torch-free checks)
