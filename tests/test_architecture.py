"""The library's shape is enforced, not hoped for: imports flow one way between layers, a stage
package never imports another (one declared exception), and no module imports itself back
through others. The checker runs on the real tree and on small synthetic trees, so it is
known to catch what it claims to."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOUNDATION = ("core", "records")
STAGES = ("ingest", "detect", "clips", "curate", "metrics", "export", "relabel")
# What each top-level package of utils/ may import (besides itself).
ALLOWED = {
    "core": set(),
    "records": {"core"},
    "runner": {"core", "records"},
    **{stage: {"core", "records", "runner"} for stage in STAGES},
    "use": {"core", "records"},
    "testing": {"core", "records", "runner", *STAGES},
}
# Declared exceptions: (importing module, imported module).
CROSS_STAGE_EXCEPTIONS = {
    ("utils.clips.released", "utils.ingest.download"),
    # relabel/search encode text with the text encoder of the detector that made the track embeddings
    ("utils.relabel.text", "utils.detect.detectors.base"),
    ("utils.relabel.text", "utils.detect.detectors.registry"),
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# "package.module:callable" in a string: a plug-in imported by name (a registry entry)
IMPORT_STRING = re.compile(r"(utils(?:\.\w+)+):[A-Za-z_][\w.]*")


def imports_of(path: Path, module: str) -> set[str]:
    """Every ``utils...`` module ``module`` imports, at any depth (lazy imports count), also by
    name: a string ``"utils.pkg.mod:callable"`` (a registry entry) imports ``utils.pkg.mod``."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(m.group(1) for m in IMPORT_STRING.finditer(node.value))
        elif isinstance(node, ast.JoinedStr):  # f"{__package__}.owlv2:..." is relative to the module's package
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            found.update(m.group(1) for m in IMPORT_STRING.finditer(text.replace("{}", package)))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from utils.pkg import submodule`` imports the submodule
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "utils" or name.startswith("utils.")}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = {module_name(root, p): p for p in (root / "utils").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path, name) if m in modules and m != name}
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        parts = module.split(".")
        if len(parts) < 2:
            continue
        own = parts[1]
        for target in sorted(targets):
            other = target.split(".")[1] if "." in target else ""
            if other in ("", own) or (module, target) in CROSS_STAGE_EXCEPTIONS:
                continue
            if own not in ALLOWED:
                problems.append(f"{module}: package utils.{own} is not in the layer map")
            elif other not in ALLOWED[own]:
                problems.append(f"{module} imports {target}: utils.{own} may not import utils.{other}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_real_tree_follows_the_layers():
    problems = layer_violations(import_graph(ROOT))
    assert not problems, "\n".join(problems)


def test_real_tree_has_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_checker_catches_a_cycle_and_cross_stage_imports(tmp_path):
    root = write_tree(tmp_path, {
        "utils/__init__.py": "",
        "utils/core/__init__.py": "",
        "utils/core/io.py": "from utils.records.tracks import TrackRecord\n",  # upward
        "utils/records/__init__.py": "",
        "utils/records/tracks.py": "import utils.core.io\nTrackRecord = 1\n",
        "utils/ingest/__init__.py": "",
        "utils/ingest/download.py": "def f():\n    from utils.curate import index  # lazy still counts\n",
        "utils/curate/__init__.py": "",
        "utils/curate/index.py": "from . import report\n",
        "utils/curate/report.py": "from utils.curate.index import x\n",
        "utils/clips/__init__.py": "",
        "utils/clips/released.py": "from utils.ingest.download import f\n",  # declared exception
        "utils/clips/cut.py": "from utils.ingest.download import f\n",  # not declared
        "utils/metrics/stage.py": "PLUGINS = {'x': 'utils.export.frames:Writer'}\n",  # by name, in a registry
        "utils/export/__init__.py": "",
        "utils/export/frames.py": "Writer = 1\n",
    })
    graph = import_graph(root)
    problems = layer_violations(graph)
    assert any(p.startswith("utils.core.io imports utils.records.tracks") for p in problems)
    assert any(p.startswith("utils.ingest.download imports utils.curate.index") for p in problems)
    assert any(p.startswith("utils.clips.cut imports utils.ingest.download") for p in problems)
    assert any(p.startswith("utils.metrics.stage imports utils.export.frames") for p in problems)
    assert not any(p.startswith("utils.clips.released") for p in problems)
    assert sorted(cycles(graph)) == [["utils.core.io", "utils.records.tracks"],
                                     ["utils.curate.index", "utils.curate.report"]]


@pytest.mark.parametrize("module", ["utils.curate.subsets", "utils.curate.index", "utils.use.dataset",
                                    "utils.records.tracks", "utils.core.video"])
def test_library_imports_without_the_launcher(module):
    """A notebook importing the curation or training code loads neither submitit nor the runner."""
    code = (f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] == 'submitit' "
            "or m.startswith('utils.runner')); print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_test_modules_share_helpers_only_through_tests_helpers():
    """Shared test code lives in tests/helpers.py (and fixtures in conftest.py): no test module
    imports another test module or conftest, so a helper exists once."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name} imports {n}" for n in names
                          if n == "tests.conftest" or n.startswith("tests.test_") or n in ("conftest",)]
    assert offenders == []
