"""The layout's rules, read from the source: who may import what, and where status codes live."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import entitlements
import ledger
from entitlements.errors import DomainError
from entitlements.http.problems import STATUS_BY_CODE

ROOT = Path(__file__).resolve().parents[3]
OURS = ("pricing", "ledger", "entitlements", "generation_client", "migrations")
# The composition root and the command line put the domains together, so they may reach inside them.
ASSEMBLERS = {"entitlements/app.py", "entitlements/cli.py"}


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("package", ["pricing", "ledger", "generation_client"])
def test_the_core_packages_import_nothing_of_ours(package: str) -> None:
    offenders = [
        f"{relative(path)} imports {name}"
        for path in python_files(package)
        for name in imported_modules(path)
        if name.split(".")[0] in OURS and name.split(".")[0] != package
    ]
    assert not offenders


# Decisions with no I/O that import nothing but the standard library (and their own package's vocabulary).
PURE_MODULES = ["entitlements/prompts/advice.py"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_rules_import_only_the_standard_library(module: str) -> None:
    offenders = [name for name in imported_modules(ROOT / module) if name.split(".")[0] not in sys.stdlib_module_names]
    assert not offenders


def _domain(path: Path) -> str | None:
    parts = path.relative_to(ROOT / "entitlements").parts
    return parts[0] if len(parts) > 1 else None


def test_domains_use_each_other_only_through_their_init() -> None:
    offenders = []
    for path in python_files("entitlements"):
        if relative(path) in ASSEMBLERS:
            continue
        own = _domain(path)
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == "entitlements" and len(parts) > 2 and parts[1] != own:
                offenders.append(f"{relative(path)} imports {name}")
    assert not offenders


def test_outside_the_http_layer_nothing_imports_litestar() -> None:
    """The HTTP layer is `http/`, each domain's `controllers.py`, and the composition root."""
    offenders = [
        f"{relative(path)} imports {name}"
        for path in python_files("entitlements")
        if not (_domain(path) == "http" or path.name == "controllers.py" or relative(path) in ASSEMBLERS)
        for name in imported_modules(path)
        if name.split(".")[0] == "litestar"
    ]
    assert not offenders


def test_no_module_outside_the_http_layer_names_a_status() -> None:
    offenders = []
    for path in python_files("entitlements"):
        if _domain(path) == "http" or path.name == "controllers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name | ast.arg | ast.keyword | ast.Attribute):
                name = getattr(node, "id", None) or getattr(node, "arg", None) or getattr(node, "attr", None)
                if name in {"status_code", "http_status"}:
                    offenders.append(f"{relative(path)}:{node.lineno} {name}")
    assert not offenders


def _every_subclass(base: type) -> set[type]:
    found = set()
    for subclass in base.__subclasses__():
        found |= {subclass, *_every_subclass(subclass)}
    return found


def test_every_error_code_has_its_status_in_the_one_table() -> None:
    for module in pkgutil.walk_packages(entitlements.__path__, "entitlements."):
        importlib.import_module(module.name)
    domain_codes = {error.code for error in _every_subclass(DomainError)}
    ledger_codes = {
        getattr(error, "code", None) for error in _every_subclass(ledger.LedgerRuleError) if hasattr(error, "code")
    }
    missing = sorted(code for code in domain_codes | ledger_codes if code is not None and code not in STATUS_BY_CODE)
    assert not missing
    assert len(domain_codes) >= 15
