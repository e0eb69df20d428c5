"""Layering: the protocol core is sans-I/O; emulator never imports fieldsync.

import-linter enforces the same in `make test`; this test walks the source so
the rule also holds for anyone who runs pytest alone.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import fieldsync

ROOT = Path(__file__).parent.parent
CORE_FORBIDDEN = {"trio", "socket", "ssl", "sqlite3", "sqlite_utils", "serial", "time", "asyncio", "selectors"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(path.relative_to(ROOT).with_suffix("").parts[: -node.level])
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return found


def _core_files() -> list[Path]:
    return [f for f in (ROOT / "protocol").glob("*.py")]


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_protocol_core_is_sans_io(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in CORE_FORBIDDEN, f"{path.name} imports {name}"
        assert not name.startswith("protocol.streams"), f"{path.name} imports the I/O edge"


def _package_imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        found |= _imports(path)
    return found


def test_lower_layers_never_import_upper_ones() -> None:
    order = ["protocol", "storage", "emulator", "fieldsync"]
    for i, package in enumerate(order):
        for name in _package_imports(package):
            top = name.split(".")[0]
            assert top not in order[i + 1 :], f"{package}/ imports {name}"


PACKAGES = [
    "protocol",
    "protocol.streams",
    "storage",
    "storage.postgres",
    "emulator",
    "fieldsync.engine",
    "fieldsync.site",
    "fieldsync.lab",
    "fieldsync.harness",
    "fieldsync.demo",
    "fieldsync.console",
    "fieldsync.bench",
    "fieldsync.cli",
    "fieldsync.testing",
    "fieldsync.conformance",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_public_api_is_explicit(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, f"{name} exports nothing"
    assert sorted(exported) == sorted(set(exported)), "duplicates in __all__"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names missing {item}"
        assert not item.startswith("_")
    public = {n for n in vars(module) if not n.startswith("_")}
    submodules = {n for n in public if type(getattr(module, n)).__name__ == "module"}
    assert public - submodules == set(exported) - submodules, "public names and __all__ differ"


def test_fieldsync_is_exactly_the_subpackages_of_the_map() -> None:
    on_disk = {p.parent.name for p in (ROOT / "fieldsync").glob("*/__init__.py")}
    assert on_disk == {n.split(".")[1] for n in PACKAGES if n.startswith("fieldsync.")}
    assert [p.name for p in (ROOT / "fieldsync").glob("*.py")] == ["__init__.py"], "a module outside the map"
    for package in on_disk:
        assert f"`fieldsync.{package}`" in fieldsync.__doc__, f"fieldsync.{package} is not in the package map"


def test_the_ci_hypothesis_profile_draws_new_examples_and_says_how_to_replay_them() -> None:
    from hypothesis import settings

    ci = settings.get_profile("ci")
    assert ci.derandomize is False and ci.print_blob is True
    assert ci.max_examples >= 500  # new ones every run: they add up over runs
