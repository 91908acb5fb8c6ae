"""The seams the code is built on: MLflow only inside its plugin, no import cycles, a frozen façade."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlcache
from mlcache.errors import InvalidSetting
from mlcache.testing import InMemoryPlugin, MemoryBackend

PACKAGE = Path(mlcache.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = node.module or ""
            full = f"{base}.{name}".strip(".") if node.level else name
            found.add(full)
            found.update(f"{full}.{alias.name}" for alias in node.names)
    return found


def test_only_the_mlflow_plugin_imports_mlflow() -> None:
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "plugins/mlflow" not in path.as_posix()
        and any(name == "mlflow" or name.startswith("mlflow.") for name in _imports(path))
    )
    assert importers == []


def test_the_offline_path_runs_with_mlflow_unimportable(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "import mlcache\n"
        f"api = mlcache.get_api('offline', cache_dir={str(tmp_path)!r})\n"
        "try:\n"
        "    api.get_model('absent')\n"
        "except mlcache.CacheMiss as exc:\n"
        "    print('miss', type(exc).__name__)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mlflow') and sys.modules[m] is not None))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["miss CacheMiss", "[]"]


def test_core_modules_import_no_plugin() -> None:
    core = [p for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "cli.py"}]
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith("mlcache.plugins.mlflow"))
        for path in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_facade_is_frozen(tmp_path: Path) -> None:
    api = InMemoryPlugin(cache_dir=tmp_path, backend=MemoryBackend())
    with pytest.raises(InvalidSetting, match="cache_dir"):
        api.cache_dir = tmp_path / "other"  # type: ignore[misc]
    with pytest.raises(InvalidSetting, match="offline_mode"):
        api.offline_mode = True  # type: ignore[misc]
    moved = api.in_offline_mode
    assert moved.offline_mode and not api.offline_mode and moved.cache_dir == api.cache_dir


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports when it is loaded (not inside functions or TYPE_CHECKING):
    `from . import x` imports the module `x`, `from .m import y` the module `m`."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            full = f"{base}.{node.module}" if node.module else base
            submodules = {f"{full}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {full})
    return found


def test_the_package_has_no_import_cycles() -> None:
    modules = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    graph = {
        name: {dep for dep in _module_level_imports(path, set(modules)) if dep in modules and dep != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_copies_with_other_settings_are_validated(tmp_path: Path) -> None:
    from mlcache.plugins.offline import OfflineApi

    api = InMemoryPlugin(cache_dir=tmp_path, backend=MemoryBackend())
    with pytest.raises(InvalidSetting, match="offline_mode"):
        api.model_copy(update={"offline_mode": "banana"})
    with pytest.raises(InvalidSetting, match="offline_mode"):
        OfflineApi(cache_dir=tmp_path).model_copy(update={"offline_mode": False})
    moved = api.model_copy(update={"cache_dir": tmp_path / "other"})
    assert moved.layout.root == tmp_path / "other" and moved.backend is api.backend
