"""The house rules of `harness/` (docs/ARCHITECTURE.md), held by reading every module's imports (ast, no import):

- layers point down only: training_core's light modules < paths, outputs, rows < store < grid < run, report, gate
  (side by side) < plan, tune, doctor < cli < __main__; a stage never imports a stage above it;
- `report/` and `gate/` read stored rows and never import `grid/`, `run/` or each other; `run/` and `grid/` never
  import `report/` or `gate/`;
- launchers never import the runner (they get their options' slice, a row finisher and a captured environment);
- no import circle inside `harness/` (module-level and function-level imports alike);
- no torch (nor the rest of the ML stack) at module level anywhere in `harness/`: checked on the source, and by
  importing every module in a fresh interpreter (which also catches a light-looking module that pulls torch in).

Each rule is a function of a tree's root, so the planted-violation tests run the same check on a copy."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "accelerate", "flash_attn", "tokenizers",
         "safetensors", "datasets")

# The layer of each part of harness/ (longest prefix wins); a module may import its own part or a lower layer.
LAYERS = {
    "harness.paths": 1, "harness.outputs": 1, "harness.rows": 1, "harness.readers": 1,
    "harness.store": 2, "harness.prices": 2, "harness.table": 2,
    "harness.grid": 3, "harness.track": 3,
    "harness.run": 4, "harness.report": 4, "harness.gate": 4,
    "harness.plan": 5, "harness.tune": 5, "harness.results": 5, "harness.later_predictions": 5, "harness.doctor": 5, "harness.launchers": 5,  # the last: the old path's shim over run/
    "harness.cli": 6,
    "harness.__main__": 7,  # python -m harness
    "harness": 0,  # the package itself (a docstring): a module not listed above falls here, and may import nothing
}
SIDE_BY_SIDE = ("harness.run", "harness.report", "harness.gate")  # same layer, never each other
NEVER = {"harness.run.launchers": ("harness.run.runner",)}  # importer prefix -> what it may not import


def part(module: str) -> str:
    """The LAYERS key a module belongs to (its stage or shared module)."""
    return max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)


def modules(root: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((root / "harness").rglob("*.py"))}


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of a file; `from X import y` yields X.y when X.y is
    a module of the tree (resolved by the caller) and X otherwise. TYPE_CHECKING blocks count as not module level."""
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, path, child)
                out.extend((f"{base}.{alias.name}" if alias.name != "*" else base, child.lineno, top)
                           for alias in child.names)
                out.append((base, child.lineno, top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            else:
                visit(child, top)
    visit(tree, True)
    return out


def graph(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """Each harness module -> the harness and heavy modules it imports (a `from pkg import name` that is not a module
    is read as importing pkg)."""
    known = modules(root)
    out = {}
    for module, path in known.items():
        edges = []
        for name, line, top in imports(module, path):
            if name.split(".")[0] in HEAVY:
                edges.append((name, line, top))
            elif name.startswith("harness"):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in known and name != module:
                    edges.append((name, line, top))
        out[module] = sorted(set(edges))
    return out


def layer_violations(root: Path) -> list[str]:
    found = []
    for module, edges in graph(root).items():
        mine = part(module)
        for target, line, _ in edges:
            if not target.startswith("harness"):
                continue
            theirs = part(target)
            where = f"{module}:{line} imports {target}"
            if mine in SIDE_BY_SIDE and theirs in SIDE_BY_SIDE and mine != theirs:
                found.append(f"{where}: {mine} and {theirs} stand side by side and never import each other")
            elif LAYERS[theirs] > LAYERS[mine] and target != "harness":
                found.append(f"{where}: {theirs} (layer {LAYERS[theirs]}) is above {mine} (layer {LAYERS[mine]})")
            for importer, banned in NEVER.items():
                if module.startswith(importer) and any(target == b or target.startswith(b + ".") for b in banned):
                    found.append(f"{where}: launchers never import the runner")
    return found


def heavy_at_module_level(root: Path) -> list[str]:
    return [f"{module}:{line} imports {target} at module level" for module, edges in graph(root).items()
            for target, line, top in edges if top and target.split(".")[0] in HEAVY]


def circles(root: Path) -> list[list[str]]:
    """Every import circle among harness modules (strongly connected components of more than one module)."""
    edges = {m: sorted({t for t, _, _ in e if t.startswith("harness")}) for m, e in graph(root).items()}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def test_layers_point_down_and_stages_side_by_side_do_not_meet():
    assert layer_violations(ROOT) == []


def test_no_import_circle_inside_harness():
    assert circles(ROOT) == []


def test_no_ml_stack_at_module_level_in_harness():
    assert heavy_at_module_level(ROOT) == []


def test_importing_every_harness_module_loads_no_ml_stack():
    """Transitively: each module imported in turn in one fresh interpreter, the ML stack checked after each."""
    names = sorted(m for m in modules(ROOT) if m != "harness.__main__")
    code = ("import importlib, json, sys\nheavy, bad = json.loads(sys.argv[1]), {}\nfor name in sys.argv[2:]:\n"
            "    importlib.import_module(name)\n"
            "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
            "    if loaded:\n        bad[name] = loaded[:3]\n        break\nprint(json.dumps(bad))\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(HEAVY), *names], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                      "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}, "the first module that pulled in the ML stack"


def test_every_module_opens_with_its_job():
    """Each module's docstring is its caption: a newcomer reads what a file is for before its code."""
    missing = [m for m, path in modules(ROOT).items()
               if m != "harness.__main__" and not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


@pytest.fixture
def tree(tmp_path) -> Path:
    shutil.copytree(ROOT / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _plant(path: Path, line: str) -> None:
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + line + "\n", 1))


def test_the_rules_fail_on_a_planted_upward_import(tree):
    _plant(tree / "harness" / "report" / "summary.py", "import harness.run  # noqa")
    found = layer_violations(tree)
    assert any(v.startswith("harness.report.summary:") and "harness.run" in v and "side by side" in v
               for v in found), found
    _plant(tree / "harness" / "grid" / "cells.py", "from ..gate import rules  # noqa")
    assert any(v.startswith("harness.grid.cells:") and "is above harness.grid" for v in layer_violations(tree))
    _plant(tree / "harness" / "run" / "launchers" / "local.py", "from .. import runner  # noqa")
    assert any("launchers never import the runner" in v for v in layer_violations(tree))


def test_the_rules_fail_on_torch_at_module_level(tree):
    _plant(tree / "harness" / "rows.py", "import torch  # noqa")
    (found,) = heavy_at_module_level(tree)
    assert found.startswith("harness.rows:") and found.endswith(" imports torch at module level")
    # inside a function it is where it belongs (a command that needs it imports it when it runs)
    (tree / "harness" / "rows.py").write_text((ROOT / "harness" / "rows.py").read_text()
                                              + "\n\ndef _uses_torch():\n    import torch  # noqa\n")
    assert heavy_at_module_level(tree) == []


def test_the_rules_fail_on_an_import_circle(tree):
    _plant(tree / "harness" / "outputs.py", "from . import rows  # noqa")
    _plant(tree / "harness" / "rows.py", "from .outputs import table_cell  # noqa")
    assert circles(tree) == [["harness.outputs", "harness.rows"]]


def test_a_new_file_in_any_source_folder_is_not_ignored_by_git():
    """.gitignore's `data/` (meant for the root's data folder) ignored every new file under training_core/data/ and
    tests/data/: a module and a test file were written, run here and never committed. Each folder that holds tracked
    Python files must take a new one."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    folders = sorted({str(Path(p).parent) for p in tracked.stdout.split()})
    probes = [f"{folder}/new_module_probe.py" for folder in folders]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == [], f"git would ignore new files there: {ignored.stdout.split()}"
