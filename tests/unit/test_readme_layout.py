"""The README's code-layout table matches the tree: every top-level folder and every layer
subpackage of payments_core has a row, and every path a row names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYER = "layers/payments_core/python/payments_core"


def layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("Code layout:") :]
    table = table[: table.index("\n## ")]
    paths = []
    for row in table.splitlines():
        cell = row.split("|")[1] if row.startswith("|") else ""
        for name in re.findall(r"`([^`]+)`", cell):
            name = name.replace("…/", LAYER + "/").replace("<name>", "authorize_payment")
            if ("*" not in name and not name.endswith(".py")) or "/" in name:
                paths.append(name)
    return paths


def test_every_path_in_the_layout_table_exists() -> None:
    paths = layout_paths()
    assert len(paths) > 15, paths
    missing = [p for p in paths if not (ROOT / p.split("*")[0]).exists() and not (ROOT / LAYER / p).exists()]
    assert missing == []


def test_every_folder_and_layer_has_a_row() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in tracked.splitlines() if "/" in line}
    named = {p.rstrip("/").split("/")[0] for p in layout_paths()}
    assert folders - named == set()
    layers = {d.name for d in (ROOT / LAYER).iterdir() if (d / "__init__.py").is_file()}
    named_layers = {p[len(LAYER) + 1 :].split("/")[0] for p in layout_paths() if p.startswith(LAYER + "/")}
    assert layers - named_layers == set() and {"entrypoints", "usecases", "adapters", "domain"} <= layers
