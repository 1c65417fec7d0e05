"""The architecture of ``docs/architecture.md``, checked statically (nothing is imported).

* No import cycle among the modules of ``segmentation`` and ``networks`` (every ``import`` counts,
  function-level ones included).
* Every import between dermseg packages follows :data:`RULES`, the table that
  ``docs/architecture.md`` shows (a test checks that the two are the same table).
* No file of the repository points to a document outside it, and every relative markdown link
  resolves (anchors included).
* No ``sys.path`` manipulation in ``segmentation/``, ``networks/`` or ``tools/``.

Imports are read with :mod:`ast`. An edge goes to the module named by the import; for
``from pkg import name`` it goes to ``pkg.name`` when that is a module, else to ``pkg``. Parent
packages that Python also executes are not edges (every submodule would otherwise form a cycle
with its package's ``__init__``), as in import-linter and grimp.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("segmentation", "networks")
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"

# unit -> the dermseg units it may import (an entry also allows everything below it; a unit may
# always import its own modules). A module belongs to the longest unit that prefixes its name;
# every module directly under segmentation/ needs its own row. "*" allows anything.
RULES: dict[str, tuple[str, ...]] = {
    "networks.kernels": (),
    "networks.registry": (),
    "networks.common": (),
    "networks.blocks": ("networks.common", "networks.kernels"),
    "networks.segdt": (
        "networks.blocks", "networks.common", "networks.kernels", "networks.registry",
    ),
    "networks.sam": (
        "networks.blocks", "networks.common", "networks.kernels", "networks.registry",
    ),
    "networks": (
        "networks.blocks", "networks.common", "networks.kernels", "networks.registry",
        "networks.sam", "networks.segdt",
    ),
    "segmentation": (),
    "segmentation.errors": (),
    "segmentation.runtime": (),
    "segmentation.settings": (),
    "segmentation.distributed": ("segmentation.errors",),
    "segmentation.registry": ("networks",),
    "segmentation.optim": ("networks.registry", "segmentation.errors", "segmentation.registry"),
    "segmentation.losses": (
        "networks.blocks", "networks.registry", "segmentation.errors", "segmentation.registry",
    ),
    "segmentation.checkpoint": ("networks", "segmentation.errors"),
    "segmentation.data": ("networks.registry", "segmentation.errors", "segmentation.registry"),
    "segmentation.reporting.tables": (),
    "segmentation.evaluation": (
        "networks", "segmentation.checkpoint", "segmentation.data", "segmentation.distributed",
        "segmentation.errors", "segmentation.registry", "segmentation.reporting.tables",
    ),
    "segmentation.config": (
        "networks.registry", "segmentation.data", "segmentation.errors",
        "segmentation.evaluation", "segmentation.losses", "segmentation.optim",
        "segmentation.registry", "segmentation.settings",
    ),
    "segmentation.planning": (
        "networks", "segmentation.config", "segmentation.data", "segmentation.errors",
        "segmentation.registry",
    ),
    "segmentation.training": (
        "networks", "segmentation.checkpoint", "segmentation.config", "segmentation.data",
        "segmentation.distributed", "segmentation.errors", "segmentation.evaluation",
        "segmentation.losses", "segmentation.optim", "segmentation.planning",
        "segmentation.registry", "segmentation.reporting", "segmentation.runtime",
    ),
    "segmentation.evaluation.checkpoint_eval": (
        "networks", "segmentation.checkpoint", "segmentation.config", "segmentation.data",
        "segmentation.distributed", "segmentation.errors", "segmentation.evaluation",
        "segmentation.losses", "segmentation.registry", "segmentation.reporting",
        "segmentation.training",
    ),
    "segmentation.evaluation.results": (
        "networks", "segmentation.checkpoint", "segmentation.config", "segmentation.data",
        "segmentation.distributed", "segmentation.errors", "segmentation.evaluation",
        "segmentation.losses", "segmentation.registry", "segmentation.reporting",
        "segmentation.training",
    ),
    "segmentation.reporting": (
        "networks", "segmentation.checkpoint", "segmentation.config", "segmentation.data",
        "segmentation.errors", "segmentation.evaluation", "segmentation.registry",
        "segmentation.reporting.tables",
    ),
    "segmentation.inference": (
        "networks", "segmentation.checkpoint", "segmentation.data", "segmentation.errors",
        "segmentation.evaluation", "segmentation.registry", "segmentation.reporting",
    ),
    "segmentation.benchmark": (
        "networks", "segmentation.checkpoint", "segmentation.config", "segmentation.data",
        "segmentation.distributed", "segmentation.errors", "segmentation.evaluation",
        "segmentation.inference", "segmentation.losses", "segmentation.optim",
        "segmentation.planning", "segmentation.registry", "segmentation.reporting",
        "segmentation.runtime", "segmentation.training",
    ),
    "segmentation.cli": ("*",),
    "tools": ("segmentation.cli",),
}  # fmt: skip
# Third-party packages a unit may import besides the standard library (units not listed: any).
THIRD_PARTY: dict[str, tuple[str, ...]] = {"networks.kernels": ("torch", "triton")}

# Documents that live outside the repository, written so that this file does not match itself.
OUTSIDE_DOCUMENTS = re.compile(
    r"\b(?:" + "|".join(("PROTOCOL", "SYNTHETIC", "STYLE")) + r")\.md\b|\.\./shared|/work/share[d]"
)
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "runs", "node_modules"}


# -- the import graph ----------------------------------------------------------------------------


def _module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the two packages and of ``tools/``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for path in sorted((ROOT / "tools").glob("*.py")):
        modules[f"tools.{path.stem}"] = path
    return modules


MODULES = _module_files()


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every ``(imported name, line)`` of a file, absolute, function-level imports included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if path.name != "__init__.py":
                    package.pop()
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return out


def _internal_target(name: str) -> str | None:
    """The dermseg module an imported name resolves to (``None`` for third-party and stdlib)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported dermseg module: first line}}``."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for module, path in MODULES.items():
        for name, line in _imports(module, path):
            target = _internal_target(name)
            if target is not None and target != module:
                graph[module].setdefault(target, line)
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(MODULES):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One cycle through the first module of a strongly connected component (shortest path)."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, {})):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child in members and child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return component


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [
        f"{MODULES[a].relative_to(ROOT)}:{graph[a][b]} imports {b}"
        for a, b in zip(cycle, cycle[1:], strict=False)
    ]
    return " -> ".join(cycle) + " (" + "; ".join(steps) + ")"


def unit_of(module: str) -> str | None:
    """The row of :data:`RULES` a module belongs to (``None``: no row)."""
    best = None
    for unit in RULES:
        if module == unit or module.startswith(unit + "."):
            if best is None or len(unit) > len(best):
                best = unit
    # the package row covers segmentation/__init__.py only: each module under it has its own row
    if best == "segmentation" and module != "segmentation":
        return None
    return best


def _allowed(unit: str, target_unit: str) -> bool:
    allowed = RULES[unit]
    return (
        target_unit == unit
        or "*" in allowed
        or any(target_unit == a or target_unit.startswith(a + ".") for a in allowed)
    )


# -- tests ---------------------------------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph()
    cycles = [_describe(_cycle_in(c, graph), graph) for c in _strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_cycle_detection_finds_a_function_level_cycle(monkeypatch, tmp_path):
    """The detector itself: a two-module cycle through a function-level import is found."""
    (tmp_path / "a.py").write_text("import segmentation.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from segmentation import a\n")
    fake = {"segmentation.a": tmp_path / "a.py", "segmentation.b": tmp_path / "b.py"}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    graph = import_graph()
    assert graph == {
        "segmentation.a": {"segmentation.b": 1},
        "segmentation.b": {"segmentation.a": 2},
    }
    assert _strongly_connected(graph) == [["segmentation.a", "segmentation.b"]]
    assert _cycle_in(["segmentation.a", "segmentation.b"], graph) == [
        "segmentation.a", "segmentation.b", "segmentation.a",
    ]  # fmt: skip


def test_every_module_has_a_row():
    missing = [m for m in MODULES if unit_of(m) is None]
    assert not missing, (
        f"modules without a row in the import rules: {missing}; add a row to RULES in "
        "tests/test_architecture.py and to the table in docs/architecture.md."
    )


def test_imports_follow_the_rules():
    graph = import_graph()
    broken = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        for target, line in sorted(targets.items()):
            target_unit = unit_of(target) or target
            if unit is not None and not _allowed(unit, target_unit):
                broken.append(
                    f"{MODULES[module].relative_to(ROOT)}:{line} imports {target} "
                    f"({unit} may not import {target_unit})"
                )
    assert not broken, "imports that break docs/architecture.md:\n" + "\n".join(broken)


def test_restricted_units_import_only_their_third_party_packages():
    broken = []
    for module, path in MODULES.items():
        allowed = THIRD_PARTY.get(unit_of(module) or "")
        if allowed is None:
            continue
        for name, line in _imports(module, path):
            top = name.split(".")[0]
            if top and top not in PACKAGES and top != "__future__":
                if top not in sys.stdlib_module_names and top not in allowed:
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not broken, "imports outside torch and the standard library:\n" + "\n".join(broken)


def _table_in_doc() -> dict[str, tuple[str, ...]]:
    """The rules table of docs/architecture.md: ``| `unit` | `a`, `b` |`` rows, ``-`` for none."""
    text = ARCHITECTURE_DOC.read_text()
    section = text.split("<!-- import-rules:start -->", 1)[1].split("<!-- import-rules:end -->")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        allowed = tuple(re.findall(r"`([^`]+)`", cells[1]))
        rows[cells[0].strip("`")] = allowed
    return rows


def test_the_doc_shows_the_same_rules():
    doc = _table_in_doc()
    assert list(doc) == list(RULES), "the rows of docs/architecture.md and RULES differ in order"
    differ = {u: (doc[u], RULES[u]) for u in RULES if sorted(doc[u]) != sorted(RULES[u])}
    assert not differ, f"docs/architecture.md vs RULES (doc, test): {differ}"


def _repository_files():
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (here == ROOT and d == "data")  # user datasets (ignored by git)
        ]
        for name in files:
            path = here / name
            if path.stat().st_size < 2_000_000:
                try:
                    yield path, path.read_text(encoding="utf-8")
                except UnicodeDecodeError:  # binary files
                    continue


def test_no_file_points_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for path, text in _repository_files()
        for m in OUTSIDE_DOCUMENTS.finditer(text)
    ]
    assert not hits, "references to documents outside the repository (use docs/):\n" + "\n".join(
        hits
    )


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_markdown_links_resolve():
    broken = []
    for path, text in _repository_files():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+\s+(.*)$", linked.read_text(), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_no_sys_path_manipulation():
    hits = []
    for folder in ("segmentation", "networks", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                touches = (
                    isinstance(node, ast.Attribute)
                    and node.attr == "path"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"
                ) or (
                    isinstance(node, ast.ImportFrom)
                    and node.module in ("sys", "site")
                    and any(a.name in ("path", "addsitedir") for a in node.names)
                )
                if touches:
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not hits, (
        "sys.path manipulation (install the package with pip install -e . instead):\n"
        + "\n".join(hits)
    )


def test_version_is_stated_in_one_place():
    """``__version__`` in segmentation/__init__.py; setup.py reads it, nothing else repeats it."""
    init = (ROOT / "segmentation" / "__init__.py").read_text()
    version = re.search(r'^__version__ = "([^"]+)"$', init, re.M)
    assert version, 'segmentation/__init__.py must define __version__ = "X.Y.Z"'
    literal = re.compile(r"""\bversion\b\s*[=:]\s*["']?\d+\.\d+""", re.I)
    repeats = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
        for path, text in _repository_files()
        if path.suffix in (".py", ".toml", ".cfg", ".yaml", ".yml") and path.name != "__init__.py"
        for m in literal.finditer(text)
    ]
    assert not repeats, f"a version number is written outside segmentation/__init__.py: {repeats}"
