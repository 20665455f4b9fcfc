"""The package's stages and their import rules, checked with `ast` over lib/tpuflow (no module is
imported, so this runs in well under a second and never loads TensorFlow).

Stages, in the order data flows (each may import the ones its rule lists, never a later one):
  tpuflow (root)  `cli`, `backend`: shared by every stage
  storage         paths, file I/O, sync, the run-dir lock, tables: the bottom layer
  prep            data preparation: split, frames, records written without TensorFlow
  inputs          the input pipeline: tf.data, parsers, one input source, frame-store assembly, augmentation
  results         predictions, scores, the run card, the leaderboard (no TensorFlow)
  ensemble        weight search over saved predictions (NumPy/SciPy/pandas)
  training        configuration, the fold loop, models, runtime: may use every stage but ensemble

Third-party packages are allowed per stage (a module-level import in a TensorFlow-free stage would
make its tools and worker processes load TensorFlow); a few modules may import one more inside a
function, each listed with the reason. JAX is never imported at module level: only inside the
functions of `backend`, `training.runtime` and `training.hosts` that run under the JAX backend,
and of `training.tpu_plan` that compile for TPU targets.
"""
from __future__ import annotations

import ast
import os
import sys

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
ROOT = "tpuflow"
PACKAGES = ("storage", "prep", "inputs", "results", "ensemble", "training")

# stage -> the tpuflow stages it may import (ROOT: `tpuflow.__version__`, `cli`, `backend`)
MAY_IMPORT = {
    ROOT: set(),
    "storage": {ROOT},
    "prep": {ROOT, "storage"},
    "inputs": {ROOT, "storage", "prep"},
    "results": {ROOT, "storage", "prep"},
    "ensemble": {ROOT, "storage", "results"},
    "training": {ROOT, "storage", "prep", "inputs", "results"},
}

# stage -> third-party packages it may import (anywhere in its modules)
THIRD_PARTY = {
    ROOT: {"absl"},
    "storage": {"numpy", "pandas", "google", "google_crc32c", "requests"},
    "prep": {"numpy", "pandas", "PIL", "sklearn", "google_crc32c", "apache_beam"},
    "inputs": {"numpy", "tensorflow", "keras"},
    "results": {"numpy", "pandas", "matplotlib"},
    "ensemble": {"numpy", "scipy", "pandas", "matplotlib"},
    "training": {"numpy", "pandas", "matplotlib", "tensorflow", "keras", "absl"},
}
# module -> {third-party package: why} it may import inside a function only, beyond its stage's
LAZY_THIRD_PARTY = {
    "tpuflow.backend": {"jax": "asks JAX whether it sees a TPU, only where libtpu is installed"},
    "tpuflow.training.runtime": {"jax": "the devices and the mesh under the JAX backend"},
    "tpuflow.training.hosts": {"jax": "process index and gathering across hosts under the JAX backend"},
    "tpuflow.training.tpu_plan": {"jax": "TPU topologies and AOT compilation, only when a plan is made"},
    "tpuflow.training.resume": {"orbax": "backups under the JAX backend (the orbax extra)",
                                "jax": "Orbax reads backups into JAX arrays, under either backend"},
    "tpuflow.prep.store": {"tensorflow": "parses a frame-store record with TensorFlow's protobuf "
                                         "classes when assembly reads the store (never while building)"},
}
TF_FREE = (ROOT, "storage", "prep", "results", "ensemble")


def _modules() -> dict[str, str]:
    """Every module of lib/tpuflow: dotted name -> path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(LIB, ROOT)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), LIB)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] not in PACKAGES):
        return ROOT
    return parts[1] if parts[1] in PACKAGES else None


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or
                                         isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: str) -> list[tuple[str, bool, bool, int]]:
    """(imported module or package, inside a function, for type checkers only, line) of every
    absolute import in a file; `from tpuflow.x import y` names module `tpuflow.x.y` where that is a
    module, else `tpuflow.x`."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []

    def visit(node, lazy, typing_only):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            types = typing_only or _type_checking(child)
            if isinstance(child, ast.Import):
                found.extend((a.name, inner, types, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}:{child.lineno}: relative import; use `from tpuflow.<stage> import ...`"
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in MODULES else child.module, inner, types, child.lineno))
            visit(child, inner, types)

    visit(tree, False, False)
    return found


def _edges():
    """(importer, imported, inside a function, where) of every import; those inside functions and
    under `if TYPE_CHECKING:` count for the stage rules and for cycles (a type is a dependency too:
    two modules that need each other's names belong together, or what they share lower down)."""
    for module, path in MODULES.items():
        for imported, lazy, _, line in _imports(path):
            yield module, imported, lazy, f"{os.path.relpath(path, os.path.dirname(LIB))}:{line}"


def test_every_module_belongs_to_a_stage():
    flat = sorted(m for m in MODULES if stage_of(m) == ROOT)
    assert flat == ["tpuflow", "tpuflow.backend", "tpuflow.cli"], (
        f"modules outside a stage: {sorted(set(flat) - {'tpuflow', 'tpuflow.backend', 'tpuflow.cli'})}; "
        "put each in the subpackage of its stage")
    assert all(stage_of(m) for m in MODULES), [m for m in MODULES if not stage_of(m)]
    on_disk = sorted(d for d in os.listdir(os.path.join(LIB, ROOT))
                     if os.path.isdir(os.path.join(LIB, ROOT, d)) and d != "__pycache__")
    assert on_disk == sorted(PACKAGES), "a subpackage without rules here (or rules for a missing one)"
    assert set(MAY_IMPORT) == set(THIRD_PARTY) == {ROOT, *PACKAGES}
    for module in LAZY_THIRD_PARTY:
        assert module in MODULES, f"{module}: named in the rules but gone; update tests/test_layout.py"


def test_stages_import_only_the_stages_they_may():
    bad = []
    for module, imported, _, where in _edges():
        if imported != ROOT and not imported.startswith(ROOT + "."):
            continue
        mine, theirs = stage_of(module), stage_of(imported)
        if theirs == mine or theirs in MAY_IMPORT[mine]:
            continue
        bad.append(f"{where}: {module} imports {imported} ({mine} may import only "
                   f"{sorted(MAY_IMPORT[mine]) or 'no other stage'})")
    assert not bad, "\n".join(bad)


def test_stages_import_only_their_third_party_packages():
    bad, used = [], set()
    for module, imported, lazy, where in _edges():
        top = imported.split(".")[0]
        if top in sys.stdlib_module_names or top in (ROOT, "__future__"):
            continue
        if top in THIRD_PARTY[stage_of(module)]:
            continue
        if lazy and top in LAZY_THIRD_PARTY.get(module, {}):
            used.add((module, top))
            continue
        bad.append(f"{where}: {module} imports {top}"
                   + (" at module level" if top in LAZY_THIRD_PARTY.get(module, {}) else "")
                   + f" ({stage_of(module)} may import {sorted(THIRD_PARTY[stage_of(module)])})")
    assert not bad, "\n".join(bad)
    listed = {(m, p) for m, pkgs in LAZY_THIRD_PARTY.items() for p in pkgs}
    assert used == listed, f"lazy imports no longer there, drop them: {listed - used}"


KINDS = f"{ROOT}.prep.kinds"  # the dataset kinds: one module each, registered in the package


def test_a_dataset_kind_is_one_module_over_the_base():
    """A kind module imports no other part of tpuflow but `kinds.base`, so that adding a kind is one
    new module (plus its line in the registry, the one module that imports the kinds)."""
    kind_modules = [m for m in MODULES if m.startswith(KINDS + ".") and m != f"{KINDS}.base"]
    assert kind_modules, "no dataset kind modules found"
    for module in kind_modules:
        ours = {i for i, _, _, _ in _imports(MODULES[module]) if i.startswith(ROOT)}
        assert ours == {f"{KINDS}.base"}, f"{module} imports {sorted(ours)}; a kind may import only {KINDS}.base"
    importers = {m for m, i, _, _ in _edges() if i in kind_modules}
    assert importers == {KINDS}, f"kind modules are imported by {sorted(importers)}; ask the registry instead"


def test_tensorflow_free_stages_and_jax_stay_so():
    """The rules above, stated as what they promise (a guard against loosening the tables)."""
    for stage in TF_FREE:
        assert not THIRD_PARTY[stage] & {"tensorflow", "keras", "jax"}, stage
    assert not any("jax" in allowed for allowed in THIRD_PARTY.values()), "JAX only inside functions"
    assert {m for m, pkgs in LAZY_THIRD_PARTY.items() if "jax" in pkgs} == {
        "tpuflow.backend", "tpuflow.training.runtime", "tpuflow.training.hosts", "tpuflow.training.tpu_plan",
        "tpuflow.training.resume"}
    assert THIRD_PARTY["ensemble"] <= {"numpy", "scipy", "pandas", "matplotlib"}
    assert MAY_IMPORT["storage"] == {ROOT} and MAY_IMPORT[ROOT] == set()


# Modules that load no TensorFlow when imported (nor any tpuflow module that does): the model, its
# configuration, the training step and the device-side augmentation and TTA build where only JAX is
# installed (benchmarks/device_check.py on a GPU machine); the jobs and the parsers import it when they run.
TF_FREE_MODULES = ("tpuflow.inputs.ondevice", "tpuflow.training.loop", "tpuflow.training.models",
                   "tpuflow.training.experiment")


def test_model_code_loads_no_tensorflow_at_import():
    """Module-level imports only, followed through tpuflow's own modules."""
    seen, bad, todo = set(), [], [(m, m) for m in TF_FREE_MODULES]
    while todo:
        module, chain = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported, lazy, typing_only, line in _imports(MODULES[module]):
            if lazy or typing_only:
                continue
            if imported.split(".")[0] == "tensorflow":
                bad.append(f"{os.path.relpath(MODULES[module], LIB)}:{line}: {chain} imports tensorflow")
            targets = [imported] if imported in MODULES else [m for m in MODULES if imported.startswith(m + ".")]
            todo.extend((t, f"{chain} -> {t}") for t in targets if t != module)
            parent = imported.rsplit(".", 1)[0]  # importing tpuflow.x.y runs tpuflow.x's __init__ first
            if parent in MODULES and parent != module:
                todo.append((parent, f"{chain} -> {parent}"))
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, imported, _, _ in _edges():
        if imported in MODULES and imported != module and not module.startswith(imported + "."):
            graph[module].add(imported)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("source", [
    "from tpuflow.prep.a import X\n",
    "def f():\n    from tpuflow.prep import a\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tpuflow.prep.a import X\n",
])
def test_an_import_cycle_is_caught(tmp_path, monkeypatch, source):
    """At module level, inside a function or for type checkers only (as `build_encode` and
    `build_write` once took `build_plan.DatasetPlan` from the planner that imports them)."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from tpuflow.prep import b\n")
    b.write_text("from tpuflow.prep import recordio\n")
    monkeypatch.setitem(MODULES, "tpuflow.prep.a", str(a))
    monkeypatch.setitem(MODULES, "tpuflow.prep.b", str(b))
    test_no_import_cycles_between_modules()
    b.write_text(source)
    with pytest.raises(pytest.fail.Exception, match="import cycle: tpuflow.prep.a -> tpuflow.prep.b -> tpuflow.prep.a"):
        test_no_import_cycles_between_modules()


@pytest.mark.parametrize("source,message", [
    ("import tensorflow as tf\n", "imports tensorflow"),
    ("def f():\n    import jax\n", "imports jax"),
    ("from tpuflow.training import runner\n", "imports tpuflow.training.runner"),
])
def test_a_violation_is_caught(tmp_path, monkeypatch, source, message):
    """The checks fail on a breach: a TensorFlow-free module that imports TensorFlow, JAX, or training."""
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    monkeypatch.setitem(MODULES, "tpuflow.prep.bad", str(bad))
    for check in (test_stages_import_only_the_stages_they_may, test_stages_import_only_their_third_party_packages):
        try:
            check()
        except AssertionError as err:
            if message in str(err):
                return
    pytest.fail(f"no check caught {source!r}")


# ---------------------------------------------------------------------------------------------
# README's layout section: the same stages, modules and rules as the tree and the tables above

README = os.path.join(os.path.dirname(LIB), "README.md")


def _holds_code(path: str) -> bool:
    body = ast.parse(open(path, encoding="utf-8").read()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _readme_rows() -> dict[str, list[list[str]]]:
    """Stage -> the backticked names of each cell of its row in the README's layout table."""
    import re  # noqa: PLC0415

    text = open(README, encoding="utf-8").read()
    assert "\n## Layout\n" in text, "README lost its Layout section"
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `tpuflow") and len(cells) == 5:
            name = re.findall(r"`([^`]+)`", cells[0])[0]
            rows[ROOT if name == ROOT else name.removeprefix(ROOT + ".")] = [re.findall(r"`([^`]+)`", c) for c in cells]
    return rows


def test_readme_layout_lists_every_stage_and_module():
    rows = _readme_rows()
    assert sorted(rows) == sorted([ROOT, *PACKAGES]), f"README's layout table has rows {sorted(rows)}"
    for stage, cells in rows.items():
        package = ROOT if stage == ROOT else f"{ROOT}.{stage}"  # names below it: `frames`, `kinds.mean`
        modules = {"__init__" if m == package else m.removeprefix(package + ".") for m, path in MODULES.items()
                   if stage_of(m) == stage and (not path.endswith("__init__.py") or _holds_code(path))}
        listed = set(cells[2])
        assert listed == modules, (f"README's layout row for {stage}: add {sorted(modules - listed)}, "
                                   f"drop {sorted(listed - modules)}")


def test_readme_layout_states_the_import_rules():
    for stage, cells in _readme_rows().items():
        may = {ROOT if n == ROOT else n.removeprefix(ROOT + ".") for n in cells[3]}
        assert may == MAY_IMPORT[stage], f"README's layout row for {stage}: may import {sorted(MAY_IMPORT[stage])}"
        assert set(cells[4]) == THIRD_PARTY[stage], (
            f"README's layout row for {stage}: third-party {sorted(THIRD_PARTY[stage])}")
