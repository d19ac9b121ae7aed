"""The code's shape, checked: no import cycles, small modules, a thin CLI, one error base.

These are the rules docs/DESIGN.md's map relies on; a change that breaks one should fail here, not
in a reviewer's head.
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"engine": "walrewind.engine", "cli": "walrewind.cli"}
MAX_LINES = 500
# Modules allowed past MAX_LINES for now, each with the issue that owns splitting it.
TOO_LONG_FOR_NOW = {
}
# Back-references still to be cut, each with the issue that owns it.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def modules() -> dict[str, pathlib.Path]:
    """Every project module by its installed name (pyproject.toml's package-dir: engine/api/ is the
    top-level ``walrewind`` package, the Python API)."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if folder == "engine" and parts[:1] == ("api",):
                out[".".join(("walrewind", *parts[1:]))] = path
                continue
            out[".".join((package, *parts))] = path
    return out


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (functions and TYPE_CHECKING included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            # `from pkg import submodule` depends on the submodule; `from pkg import name` on pkg.
            candidates = submodules if len(submodules) == len(node.names) else [target, *submodules]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            # A submodule needs its own package initialised; that is structure, not a dependency.
            if candidate in known and candidate != name and not name.startswith(candidate + "."):
                found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(name, path, known) for name, path in mods.items()}
    for a, b in KNOWN_BACK_EDGES:
        edges[a].discard(b)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_between_project_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_500_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    over = {name: n for name, n in long.items() if n > MAX_LINES and name not in TOO_LONG_FOR_NOW}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_the_cli_is_thin():
    """cli/ starts no threads, installs no signal handlers and opens no SQLite connection itself
    (the interactive `db shell` runs apsw's shell on a connection the engine opened)."""
    for name, path in modules().items():
        if not name.startswith("walrewind.cli"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                dotted = f"{getattr(node.value, 'id', '')}.{node.attr}"
                assert dotted not in ("threading.Thread", "signal.signal", "apsw.Connection", "sqlite3.connect"), \
                    f"{path}: uses {dotted}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"threading", "signal", "sqlite3"} & set(names), f"{path}: imports {names}"


def test_every_engine_exception_derives_from_walrewind_error():
    import importlib

    from walrewind.engine.errors import WalrewindError

    offenders = []
    for name in modules():
        if not name.startswith("walrewind.engine") and name.count(".") > 1:
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                if not issubclass(value, WalrewindError):
                    offenders.append(f"{name}.{attr}")
    assert not offenders, f"exceptions not derived from WalrewindError: {offenders}"


@pytest.mark.parametrize("command", ["--help"])
def test_help_imports_no_command_module(command):
    """`walrewind --help` imports no command module, no engine code (but the error classes the
    top-level API re-exports), numpy or boto3 (fast start)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from walrewind.cli.main import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "light = {'walrewind.engine', 'walrewind.engine.errors'}  # the API re-exports the error classes\n"
        "loaded = [m for m in sys.modules if (m.startswith(('walrewind.engine', 'numpy', 'boto3', 'apsw'))\n"
        "          or m.endswith('_cmd')) and m not in light]\n"
        "print(','.join(sorted(loaded)), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", f"--help imported: {res.stderr.strip()}"
    assert "restore" in res.stdout and "replicate" in res.stdout
