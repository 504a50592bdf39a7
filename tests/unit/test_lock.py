"""The lock check in `make lint` (tools.lock): it fails, offline, when pyproject.toml changed
without `make lock` or an export no longer matches uv.lock, and the exports hold what .venv and
the layer need. Runs the pinned uv on copies of the committed files."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tools/ is local tooling, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from infra.runtime import PROVIDED_BY_RUNTIME  # noqa: E402
from tools import lock  # noqa: E402


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", text, re.M))


def test_committed_lock_passes(project: Path) -> None:
    lock.check(project)


def test_a_changed_range_fails_although_the_locked_version_satisfies_it(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert '"pydantic>=2.7,<3"' in text
    pyproject.write_text(text.replace('"pydantic>=2.7,<3"', '"pydantic>=2.8,<3"'))
    with pytest.raises(lock.LockError, match=r"uv.lock does not match pyproject.toml .*run `make lock`"):
        lock.check(project)


def test_a_hand_edited_export_fails(project: Path) -> None:
    layer = project / lock.LAYER_REQUIREMENTS
    text = layer.read_text()
    version = _pins(text)["pg8000"]
    layer.write_text(text.replace(f"pg8000=={version}", "pg8000==1.31.5"))
    with pytest.raises(lock.LockError, match=r"requirements/layer.txt does not match uv.lock"):
        lock.check(project)


def test_layer_export_is_the_runtime_closure_at_the_dev_versions() -> None:
    layer = _pins((REPO_ROOT / lock.LAYER_REQUIREMENTS).read_text())
    dev = _pins((REPO_ROOT / lock.DEV_REQUIREMENTS).read_text())
    assert not set(layer) & set(PROVIDED_BY_RUNTIME)  # the Lambda runtime ships them
    assert {"pg8000", "pydantic-core", "stripe", "aws-lambda-powertools"} <= set(layer)
    # what ships is what .venv (and so every test) runs
    assert {name: dev[name] for name in layer} == layer
    # installed with hashes required: every requirement carries at least one
    for export in (lock.LAYER_REQUIREMENTS, lock.DEV_REQUIREMENTS):
        blocks = re.split(r"\n(?=[a-z0-9])", (REPO_ROOT / export).read_text())
        assert all("--hash=sha256:" in block for block in blocks if "==" in block)
