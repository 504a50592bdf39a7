"""Which Python `make venv` builds .venv from (tools.venv_python): the Lambda runtime's version,
read from infra/runtime.py, where it is installed; else python3's, with one warning line. The
selection runs here against fake interpreters (shell scripts answering the probe) on a fake PATH
and a fake pyenv root, so every branch runs whatever this machine has installed."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tools/ is local tooling, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from infra.runtime import PYTHON_VERSION  # noqa: E402
from tools import venv_python  # noqa: E402
from tools.venv_python import Interpreter  # noqa: E402

FALLBACK = Interpreter("/usr/bin/python3", "3.11")
OTHER = "3.11" if PYTHON_VERSION != "3.11" else "3.13"  # a version that is not the runtime's


def _fake_python(path: Path, version: str, *, answers: bool = True) -> Path:
    """An executable answering tools.venv_python's probe as a Python ``version`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if answers:
        path.write_text(f'#!/bin/sh\necho "{path}"\necho "{version}"\n')
    else:  # what a pyenv shim does when no selected version provides the command
        path.write_text(f'#!/bin/sh\necho "pyenv: {path.name}: command not found" >&2\nexit 127\n')
    path.chmod(0o755)
    return path


def _fake_venv(venv: Path, version: str) -> Path:
    _fake_python(venv / "bin" / "python", version)
    (venv / "pyvenv.cfg").write_text(f"home = /somewhere/bin\nversion = {version}.4\n")
    return venv


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A machine with nothing installed: an empty PATH directory, an empty pyenv root, no uv."""
    (tmp_path / "bin").mkdir()
    return {"PATH": str(tmp_path / "bin"), "PYENV_ROOT": str(tmp_path / "pyenv"), "HOME": str(tmp_path)}


# --- this machine's .venv ---------------------------------------------------------------------


def test_venv_runs_the_lambda_runtimes_python_where_this_machine_has_it() -> None:
    venv = REPO_ROOT / ".venv"
    built_with = venv_python.venv_version(venv)
    assert built_with is not None, ".venv is missing: run `make venv`"
    # the tests (and so the Lambda emulators they start, with sys.executable) run on .venv
    assert Path(sys.prefix).resolve() == venv.resolve()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == built_with
    installed = venv_python.find_runtime_python(PYTHON_VERSION, os.environ, exclude=venv)
    if installed is not None:
        assert built_with == PYTHON_VERSION, f"Python {PYTHON_VERSION} is at {installed.path}"
    else:
        # the fallback: had .venv the runtime's version, its base interpreter would have been found
        assert built_with != PYTHON_VERSION


def test_mypy_checks_the_code_for_the_lambda_runtimes_python() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert config["tool"]["mypy"]["python_version"] == PYTHON_VERSION
    # ruff's target is the oldest Python .venv may fall back to, which requires-python admits
    floor = config["project"]["requires-python"].removeprefix(">=")
    assert config["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")


# --- the selection ------------------------------------------------------------------------------


def test_the_runtimes_python_on_path_comes_before_pyenv(tmp_path: Path, env: dict[str, str]) -> None:
    on_path = _fake_python(tmp_path / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION)
    _fake_python(
        tmp_path / "pyenv" / "versions" / f"{PYTHON_VERSION}.9" / "bin" / f"python{PYTHON_VERSION}",
        PYTHON_VERSION,
    )
    choice = venv_python.choose(PYTHON_VERSION, env, fallback=FALLBACK)
    assert choice == venv_python.Choice(Interpreter(str(on_path), PYTHON_VERSION))


def test_a_pyenv_shim_that_does_not_resolve_is_passed_over_for_the_newest_pyenv_release(
    tmp_path: Path, env: dict[str, str]
) -> None:
    _fake_python(tmp_path / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION, answers=False)
    versions = tmp_path / "pyenv" / "versions"
    for release in ("3", "10", "9"):  # 10 is the newest: compared as numbers, not as text
        _fake_python(
            versions / f"{PYTHON_VERSION}.{release}" / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION
        )
    _fake_python(versions / f"{PYTHON_VERSION}-dev" / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION)
    found = venv_python.find_runtime_python(PYTHON_VERSION, env)
    assert found == Interpreter(
        str(versions / f"{PYTHON_VERSION}.10" / "bin" / f"python{PYTHON_VERSION}"), PYTHON_VERSION
    )


def test_a_candidate_answering_another_version_is_passed_over(tmp_path: Path, env: dict[str, str]) -> None:
    _fake_python(tmp_path / "bin" / f"python{PYTHON_VERSION}", OTHER)
    assert venv_python.find_runtime_python(PYTHON_VERSION, env) is None


def test_uv_is_asked_when_path_and_pyenv_have_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    managed = _fake_python(tmp_path / "uv-python" / f"python{PYTHON_VERSION}", PYTHON_VERSION)
    uv = tmp_path / "uv"
    uv.write_text(f'#!/bin/sh\n[ "$1 $2 $3" = "python find --system" ] && echo "{managed}"\n')
    uv.chmod(0o755)
    assert venv_python.find_runtime_python(PYTHON_VERSION, env, str(uv)) == Interpreter(
        str(managed), PYTHON_VERSION
    )


def test_without_the_runtimes_python_python3_is_used_with_one_warning_line(env: dict[str, str]) -> None:
    choice = venv_python.choose(PYTHON_VERSION, env, fallback=FALLBACK)
    assert choice.interpreter == FALLBACK
    assert choice.warning is not None and "\n" not in choice.warning
    for words in (
        f"Python {PYTHON_VERSION}, the Lambda runtime's",
        "not installed",
        f"run on {FALLBACK.version} locally and on {PYTHON_VERSION} in Lambda",
        f"`pyenv install {PYTHON_VERSION}`",
        f"`uv python install {PYTHON_VERSION}`",
    ):
        assert words in choice.warning


def test_an_explicit_python_wins_over_the_runtimes(tmp_path: Path, env: dict[str, str]) -> None:
    _fake_python(tmp_path / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION)
    chosen = _fake_python(tmp_path / "elsewhere" / "python", OTHER)
    choice = venv_python.choose(PYTHON_VERSION, env, override=str(chosen), fallback=FALLBACK)
    assert choice == venv_python.Choice(Interpreter(str(chosen), OTHER))


def test_an_explicit_python_that_does_not_run_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(
        venv_python.VenvPythonError, match=r"^PYTHON=.*/nope does not run as a Python interpreter"
    ):
        venv_python.choose(PYTHON_VERSION, env, override=str(tmp_path / "nope"), fallback=FALLBACK)


# --- what make venv does with an existing .venv ----------------------------------------------------


def test_a_fresh_build_without_the_runtimes_python_warns_once_and_records_python3(
    tmp_path: Path, env: dict[str, str]
) -> None:
    said: list[str] = []
    record = tmp_path / ".venv" / ".base-python"
    venv_python.prepare(tmp_path / ".venv", record, env, fallback=FALLBACK, say=said.append)
    assert said == [venv_python.fallback_warning(PYTHON_VERSION, FALLBACK)]
    assert record.read_text() == f"{FALLBACK.path}\n"


def test_a_venv_of_another_version_is_removed_once_the_runtimes_python_is_found(
    tmp_path: Path, env: dict[str, str]
) -> None:
    venv = _fake_venv(tmp_path / ".venv", OTHER)
    record = venv / ".base-python"
    record.write_text(f"{FALLBACK.path}\n")
    runtime = _fake_python(tmp_path / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION)
    said: list[str] = []
    venv_python.prepare(venv, record, env, fallback=FALLBACK, say=said.append)
    assert said == [
        f"venv: {venv} runs Python {OTHER} and the Lambda runtime is {PYTHON_VERSION}: "
        f"removing it to build it again with {runtime}"
    ]
    assert not (venv / "bin").exists()  # make then creates it from the record
    assert record.read_text() == f"{runtime}\n"


def test_a_fallback_venv_stays_while_the_runtimes_python_is_missing(
    tmp_path: Path, env: dict[str, str]
) -> None:
    venv = _fake_venv(tmp_path / ".venv", OTHER)
    record = venv / ".base-python"
    record.write_text(f"{FALLBACK.path}\n")
    os.utime(record, (1_000_000, 1_000_000))
    said: list[str] = []
    venv_python.prepare(venv, record, env, fallback=FALLBACK, say=said.append)
    assert said == []
    assert (venv / "bin" / "python").exists()
    assert record.stat().st_mtime == 1_000_000  # untouched: make does not reinstall


def test_a_fallback_venv_older_than_the_record_is_kept_with_the_warning(
    tmp_path: Path, env: dict[str, str]
) -> None:
    venv = _fake_venv(tmp_path / ".venv", OTHER)  # built before make venv wrote a record
    said: list[str] = []
    venv_python.prepare(venv, venv / ".base-python", env, fallback=FALLBACK, say=said.append)
    assert said == [
        venv_python.fallback_warning(PYTHON_VERSION, Interpreter(str(venv / "bin" / "python"), OTHER))
    ]
    assert (venv / "bin" / "python").exists()
    assert (venv / ".base-python").read_text() == f"{venv / 'bin' / 'python'}\n"


def test_a_venv_of_the_runtimes_version_is_left_alone(tmp_path: Path, env: dict[str, str]) -> None:
    venv = _fake_venv(tmp_path / ".venv", PYTHON_VERSION)
    record = venv / ".base-python"
    record.write_text("/old/python\n")
    os.utime(record, (1_000_000, 1_000_000))
    # another interpreter of the runtime's version on PATH changes nothing
    _fake_python(tmp_path / "bin" / f"python{PYTHON_VERSION}", PYTHON_VERSION)
    venv_python.prepare(venv, record, env, fallback=FALLBACK, say=pytest.fail)
    assert (venv / "bin" / "python").exists()
    assert record.stat().st_mtime == 1_000_000


def test_an_explicit_python_of_another_version_rebuilds_the_venv(tmp_path: Path, env: dict[str, str]) -> None:
    venv = _fake_venv(tmp_path / ".venv", PYTHON_VERSION)
    record = venv / ".base-python"
    record.write_text("/old/python\n")
    chosen = _fake_python(tmp_path / "elsewhere" / "python", OTHER)
    said: list[str] = []
    venv_python.prepare(venv, record, env, override=str(chosen), fallback=FALLBACK, say=said.append)
    assert said == [
        f"venv: {venv} runs Python {PYTHON_VERSION} and PYTHON={chosen} is {OTHER}: "
        f"removing it to build it again with {chosen}"
    ]
    assert record.read_text() == f"{chosen}\n"
