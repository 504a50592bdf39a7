"""The handlers in functions/ (each a top-level module named ``app``, which import-linter cannot
tell apart) reach payments_core only through its entry points, and no Lambda code imports the
local stack, the tools or the tests (import-linter's contracts cover the rest: `make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = sorted((ROOT / "functions").glob("*/app.py"))
PAYMENTS_CORE = ROOT / "layers" / "payments_core" / "python" / "payments_core"
ALLOWED = ("payments_core.entrypoints", "payments_core.observability")
NEVER = ("local", "tools", "tests", "conftest", "infra")


def imported(path: Path) -> list[str]:
    """Every module an import statement of ``path`` names (``from a import b`` gives ``a.b``
    when ``b`` is a module, ``a`` otherwise: both are checked against the allowed prefixes)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_function_has_a_handler() -> None:
    assert len(HANDLERS) >= 10, HANDLERS


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda p: p.parent.name)
def test_a_handler_imports_only_the_entry_points_of_payments_core(handler: Path) -> None:
    names = imported(handler)
    ours = [n for n in names if _under(n, ("payments_core",))]
    assert ours, f"{handler} calls nothing of payments_core"
    assert [n for n in ours if not _under(n, ALLOWED)] == []
    assert [n for n in names if _under(n, NEVER)] == []


def test_lambda_code_never_imports_the_local_stack_tools_or_tests() -> None:
    modules = sorted(PAYMENTS_CORE.rglob("*.py"))
    assert len(modules) > 40
    wrong = {str(m.relative_to(PAYMENTS_CORE)): n for m in modules for n in imported(m) if _under(n, NEVER)}
    assert wrong == {}
