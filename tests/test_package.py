"""The package's shape: the adapter imports nothing else of cgc, no library module imports the recipe layer, the
import paths the README teaches (and those it taught before the subpackages) work, one command line, small files,
and a README map that is the tree's."""

import ast
import importlib
import pickle
import re
import subprocess
import sys
import warnings

import pytest

import cgc
from cgc.cli import package_map_markdown
from cgc.moved import MOVED
from cgc.recipe.key_table import key_table
from tests.conftest import ROOT

LIBRARY = sorted((ROOT / "cgc").rglob("*.py"))
# Paths the README taught before cgc had subpackages (commit a5f3333): users' code may import them.
TAUGHT_BEFORE = [
    ("cgc.base_model", "load_base_model"),
    ("cgc.data", "load_examples"),
    ("cgc.data", "task_counts"),
    ("cgc.tokenization", "tokenize_dataset"),
    ("cgc.sampler", "ClusterAwareBatchSampler"),
    ("cgc.stats", "paired_bootstrap"),
    ("cgc.presets", "matched_budget"),
    ("cgc.target_loss", "forward_on_targets"),
    ("cgc.metrics", "MetricSpec"),
    ("cgc.evaluation", "generate_answers"),
    ("cgc.recipe_config", "load_recipe_config"),
    ("cgc.checkpoint", "to_universal"),
    ("cgc.clustering", "cluster_tasks"),
    ("cgc.config", "CGCLoraConfig"),
    ("cgc.config", "InvalidConfigError"),
    ("cgc.recipe_config", "ConfigError"),
    # not taught, but public names of the old modules, kept under their old module's name
    ("cgc.serving", "run_adapter"),
    ("cgc.serving", "VLLM_LORA_RANKS"),
    ("cgc.recipe_config", "key_table_markdown"),
]


def imported_modules(path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_adapter_imports_nothing_else_of_cgc():
    for path in sorted((ROOT / "cgc" / "adapter").glob("*.py")):
        outside = {m for m in imported_modules(path) if m.split(".")[0] == "cgc" and not m.startswith("cgc.adapter")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"
    # ... and at run time: importing it loads no other part of cgc (cgc/__init__ loads the adapter and the aliases).
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, cgc.adapter; print(' '.join(m for m in sys.modules if m[:3] == 'cgc'))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert {m for m in loaded if m not in ("cgc", "cgc.moved") and not m.startswith("cgc.adapter")} == set()
    assert "cgc.adapter.layer" in loaded  # the check above saw the adapter load


def test_a_recipe_that_exports_nothing_never_imports_peft():
    """peft's import takes seconds (most of `import cgc` when it was at the top): a run that stops at a bad input, or
    a compare.py parent, must not pay it. cgc.adapter.export imports it when it writes a PEFT adapter, finetune.py
    once its inputs are good (a broken peft fails before training, not after)."""
    code = (
        "import runpy, sys; sys.argv = ['recipes/finetune.py', '--config', 'no/such.yaml']\n"
        "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as stop: print(stop.code, 'peft' in sys.modules, 'cgc.adapter.export' in sys.modules)"
    )
    refused = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert refused.stdout.split() == ["2", "False", "True"], refused.stdout + refused.stderr
    library = [sys.executable, "-c", "import sys, cgc; print('peft' in sys.modules)"]  # e.g. a compare.py parent
    assert subprocess.run(library, cwd=ROOT, capture_output=True, text=True).stdout.split() == ["False"]


def test_no_library_module_imports_the_recipe_layer():
    for path in LIBRARY:
        part = path.relative_to(ROOT / "cgc").parts
        if part[0] in ("recipe", "cli.py", "moved.py", "__main__.py"):
            continue
        recipe = {m for m in imported_modules(path) if m == "cgc.recipe" or m.startswith("cgc.recipe.")}
        assert not recipe, f"{path.relative_to(ROOT)} imports {sorted(recipe)}"


def test_every_import_path_the_readme_teaches_works():
    readme = (ROOT / "README.md").read_text()
    imports = re.findall(r"^from (cgc[\w.]*) import ([\w, ]+)$", readme, flags=re.M)
    assert imports, "the README shows no cgc import"
    for module, names in imports:
        for name in names.split(","):
            assert hasattr(importlib.import_module(module), name.strip()), f"from {module} import {name}"
    keys = {key for key, _, _ in key_table()}  # `cgc.r` and friends are config keys, not modules
    references = set(re.findall(r"`(cgc(?:\.\w+)+)`", readme)) - keys
    assert len(references) > 10
    for reference in sorted(references):
        assert resolve(reference) is not None, reference


def resolve(dotted: str):
    """The module or attribute a dotted reference names (None when it names nothing)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            thing = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            thing = getattr(thing, attribute, None)
        return thing
    return None


@pytest.mark.parametrize("module, name", TAUGHT_BEFORE)
def test_the_paths_taught_before_the_subpackages_still_import(module, name):
    assert getattr(importlib.import_module(module), name) is not None


def test_an_old_module_path_is_the_new_module_itself_with_a_warning():
    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old  # one module: a monkeypatch through either name holds
        assert module.__spec__.name == new  # the real spec, not the alias's
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old


def test_an_old_module_command_names_the_command_that_replaced_it():
    old = subprocess.run([sys.executable, "-m", "cgc.checkpoint", "to-universal", "x"], capture_output=True, text=True)
    assert old.returncode == 1 and "`python -m cgc to-universal CHECKPOINT` now" in old.stderr
    assert "Traceback" not in old.stderr
    module = subprocess.run([sys.executable, "-m", "cgc.stats"], capture_output=True, text=True)
    assert module.returncode == 1 and "not a command: see `python -m cgc --help`" in module.stderr


def test_every_bad_input_error_is_a_cgc_error():
    from cgc.adapter.errors import AdapterConfigError, UnknownTaskError
    from cgc.data import DataError
    from cgc.recipe import RecipeConfigError
    from cgc.training.deepspeed_ops import StaleBuildLockError
    from cgc.training.run_dir import RunDirError

    for error in (AdapterConfigError, UnknownTaskError, DataError, RecipeConfigError, RunDirError, StaleBuildLockError):
        assert issubclass(error, cgc.CGCError) and issubclass(error, ValueError), error
    with pytest.raises(cgc.CGCError, match="r must be an integer >= 1") as refused:
        cgc.CGCLoraConfig(clusters={"a": ["x"]}, r=0)
    copy = pickle.loads(pickle.dumps(refused.value))  # e.g. an error sent between processes
    assert (
        type(copy) is AdapterConfigError and copy.problems == refused.value.problems and str(copy) == str(refused.value)
    )


def test_one_command_line_and_no_module_runs_as_a_script():
    scripts = [p.relative_to(ROOT) for p in LIBRARY if "__main__" in p.read_text() and p.name not in ("__main__.py",)]
    assert scripts == [], scripts  # commands live in cgc/cli.py, behind `python -m cgc`
    help_text = subprocess.run(
        [sys.executable, "-m", "cgc", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for command in ("to-universal", "cluster", "keys", "map", "build-ops"):
        assert command in help_text, command
    bad = subprocess.run([sys.executable, "-m", "cgc", "to-universal", "/nowhere"], capture_output=True, text=True)
    assert bad.returncode == 1 and "not a complete cgc checkpoint" in bad.stderr and "Traceback" not in bad.stderr
    installed = ROOT / ".venv" / "bin" / "cgc"  # pyproject's [project.scripts], installed by make install
    if installed.is_file():
        keys = subprocess.run([str(installed), "keys"], capture_output=True, text=True, check=True).stdout
        assert keys.startswith("| key | default | what it does |")


def test_the_readme_package_map_is_the_one_generated_from_the_tree():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- package map: python -m cgc map -->\n")
    end = readme.index("<!-- end package map -->")
    assert readme[start:end].split("\n", 1)[1] == package_map_markdown(), "stale: paste `python -m cgc map`"
    for package in ("adapter", "data", "models", "training", "recipe", "evaluation", "analysis", "serving"):
        assert f"| `cgc.{package}` |" in readme


def test_modules_and_functions_stay_small():
    """A module of cgc/ or recipes/ holds at most 350 lines, a function at most 80."""
    too_long = []
    for path in [*LIBRARY, *sorted((ROOT / "recipes").glob("*.py"))]:
        text = path.read_text()
        if len(text.splitlines()) > 350:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
                )
    assert not too_long, too_long


def test_code_and_tests_cite_nothing_outside_the_repository():
    sources = [
        *LIBRARY,
        *(ROOT / "recipes").rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]
    cited = [
        str(p.relative_to(ROOT))
        for p in sources
        if re.search(r"\bDESIGN\b|shared/", p.read_text()) and p.name != "test_package.py"
    ]
    assert not cited, cited
