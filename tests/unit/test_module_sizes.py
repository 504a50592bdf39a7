"""payments_core stays readable: no module over 300 lines, no class over 150 (issue 21). A module
that grows past them is split along its jobs, as docs/architecture.md describes."""

from __future__ import annotations

import ast
from pathlib import Path

PAYMENTS_CORE = Path(__file__).resolve().parents[2] / "layers" / "payments_core" / "python" / "payments_core"
MAX_MODULE_LINES = 300
MAX_CLASS_LINES = 150


def test_no_module_or_class_is_too_long() -> None:
    modules = sorted(PAYMENTS_CORE.rglob("*.py"))
    assert len(modules) > 50
    long_modules, long_classes = {}, {}
    for path in modules:
        source = path.read_text()
        name = str(path.relative_to(PAYMENTS_CORE))
        if (lines := len(source.splitlines())) > MAX_MODULE_LINES:
            long_modules[name] = lines
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.ClassDef)
                and (size := node.end_lineno - node.lineno + 1) > MAX_CLASS_LINES
            ):  # type: ignore[operator]
                long_classes[f"{name}:{node.name}"] = size
    assert long_modules == {} and long_classes == {}
