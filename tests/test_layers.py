"""The package's layers point one way (../shared/ARCHITECTURE.md): nothing imports a module above it.

    cli → server, http/, batch/ → scoring/, training/, client/ → features/, tables
        → models/, batching, admission, flags, events, security, interceptors
        → metrics, config → errors, jit, labels, _proto, the package itself

A module may import its own layer and any layer below; imports under
`if TYPE_CHECKING:` are for the type checker only and do not count. Within
scoring/, the servicers are siblings: none imports another (what they share
lives below them: `engine.admission`, `engine.scoring.streams`, `engine.metrics`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "engine"

#: top to bottom; an entry names a module (engine.<name>) or a package (everything under it)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("server", "http", "batch"),
    ("scoring", "training", "client"),
    ("features", "trade_files"),
    ("models", "batching", "admission", "flag_store", "events", "security", "interceptors"),
    ("metrics", "config"),
    ("errors", "jit", "labels", "_proto", ""),
)
#: modules of one layer that must not import each other
SIBLINGS = ({"engine.scoring.trades", "engine.scoring.pairs", "engine.scoring.oip"},)


def _layer(module: str) -> int:
    """The layer of `engine...` module `module` (0: the top)."""
    rest = module.removeprefix("engine").lstrip(".")
    first = rest.split(".", 1)[0]
    for depth, names in enumerate(LAYERS):
        if first in names:
            return depth
    raise KeyError(f"{module} is in no layer of tests/test_layers.py: add it where ARCHITECTURE.md puts it")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, engine module) of every import that runs (not under `if TYPE_CHECKING:`), lazy ones too."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "engine"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.split(".")[0] != "engine":
                continue
            # `from engine import jit`, `from engine.features import kernels`: the submodule is the dependency
            for alias in node.names:
                candidate = f"{name}.{alias.name}"
                as_module = SRC.parent / Path(*candidate.split("."))
                if as_module.with_suffix(".py").exists() or (as_module / "__init__.py").exists():
                    out.append((node.lineno, candidate))
                else:
                    out.append((node.lineno, name))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "_proto" not in p.parts)


def upward_imports() -> list[str]:
    problems = []
    for path in _sources():
        module = _module_name(path)
        where = path.relative_to(SRC.parent)
        here = _layer(module)
        for line, imported in _runtime_imports(path):
            there = _layer(imported)
            if there < here:
                problems.append(f"{where}:{line}: {module} imports {imported}, a layer above")
            for group in SIBLINGS:
                owner = next((g for g in group if module == g or module.startswith(g + ".")), None)
                other = next((g for g in group if imported == g or imported.startswith(g + ".")), None)
                if owner and other and owner != other:
                    problems.append(f"{where}:{line}: {module} imports its sibling {imported}")
    return problems


def test_no_module_imports_a_layer_above_it() -> None:
    assert upward_imports() == []


def test_every_module_has_a_layer() -> None:
    for path in _sources():
        _layer(_module_name(path))


@pytest.mark.parametrize(
    ("source", "importer", "expected"),
    [
        ("from engine.server import EngineServer\n", "config.py", "imports engine.server"),
        ("from engine.scoring import trades\n", "scoring/pairs.py", "sibling engine.scoring.trades"),
        ("def f():\n    from engine.features import kernels\n", "models/spec.py", "engine.features.kernels"),
        ("from ..training import train\n", "features/extra.py", "engine.training.train"),
    ],
)
def test_the_check_finds_upward_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, importer: str, expected: str
) -> None:
    """The check itself can fail: a copy of the package with one upward import planted."""
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("_proto", "__pycache__", "default"))
    target = copy / importer
    target.write_text((target.read_text() if target.exists() else "") + "\n" + source)
    monkeypatch.setattr(__import__(__name__, fromlist=["SRC"]), "SRC", copy)
    assert any(expected in p for p in upward_imports()), upward_imports()
    safe = "from engine.errors import EngineError\n"
    target.write_text(safe)
    assert not any(importer in p for p in upward_imports())
