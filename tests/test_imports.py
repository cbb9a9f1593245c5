"""The package's import structure: no import circle, a light load path, small modules."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refusal_lens"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
MAX_LINES = 400
#: modules whose import from the load path would mean training, suffix or pipeline code
HEAVY = ("organism", "organism_eval", "suffixes", "cli_organism", "cli_suffix", "pipeline",
         "peft")


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported refusal_lens module, at module level?) for every import in ``tree``; imports
    under ``if TYPE_CHECKING:`` are skipped (they never run)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level == 1:
                    names = ([child.module.split(".")[0]] if child.module
                             else [a.name for a in child.names])
                elif child.level == 0 and (child.module or "").startswith("refusal_lens"):
                    parts = child.module.split(".")
                    names = parts[1:2] or [a.name for a in child.names]
                else:
                    names = []
                found.extend((n, inner) for n in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name.split(".")[1], inner) for a in child.names
                             if a.name.startswith("refusal_lens."))
            visit(child, inner)

    visit(tree, True)
    return found


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    """Module -> the refusal_lens modules it imports (at module level, or anywhere)."""
    graph = {}
    for name in MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        graph[name] = {m for m, top in _imports(tree)
                       if m in MODULES and m != name and (top or not module_level_only)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_at_module_level():
    assert cycles(import_graph(module_level_only=True)) == []


def test_no_import_cycle_with_function_level_imports():
    """Imports inside functions (deferred so the command line starts fast) close no circle."""
    assert cycles(import_graph(module_level_only=False)) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_package_loads_no_torch():
    loaded = _loaded_after("import refusal_lens")
    assert "torch" not in loaded and "transformers" not in loaded


@pytest.mark.embedded
def test_loading_the_embedded_model_imports_no_training_suffix_or_pipeline_code():
    loaded = _loaded_after("import refusal_lens\nrefusal_lens.load_model('embedded')")
    bad = [m for m in loaded if m.split(".")[-1] in HEAVY and m.split(".")[0] in
           ("refusal_lens", "peft")]
    assert bad == []


@pytest.mark.parametrize("name", MODULES)
def test_module_is_at_most_400_lines(name):
    n = len((PACKAGE / f"{name}.py").read_text().splitlines())
    assert n <= MAX_LINES, f"refusal_lens/{name}.py has {n} lines (at most {MAX_LINES})"
