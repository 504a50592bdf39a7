"""The interpreter `make venv` builds .venv from: the Lambda runtime's Python where it is installed.

    python3 -m tools.venv_python --venv .venv --record .venv/.base-python [--python PYTHON]

The Lambda runtime's version is read from ``infra.runtime.PYTHON_VERSION``, the constant the CDK
stack and the layer build use. The interpreter is, in this order: ``--python`` (``make venv
PYTHON=…``); ``python3.12`` on PATH; the newest ``$PYENV_ROOT/versions/3.12.*``; what ``uv python
find --system 3.12`` answers (uv on PATH, or the one in .venv). Each candidate is run once, so a
pyenv shim that does not resolve (``pyenv: python3.12: command not found``) is passed over.
Where none is found, .venv is built from the Python running this (``python3``), with one warning
line: the functions then run on another Python locally than in Lambda.

Run by make before every target that needs .venv; what it does, cheaply when nothing changes:

- .venv runs the runtime's version (or the ``--python`` one's): nothing.
- .venv runs another version and the right interpreter is found: .venv is removed, with one line
  saying why, and the record names the interpreter, so make builds .venv again from it.
- no .venv: the record names the interpreter make creates it with.

The record (a file inside .venv, a make prerequisite of the install stamp) is rewritten only when
.venv is to be (re)built, so its date tells make when to reinstall. Standard library only: it
runs on whatever ``python3`` is before .venv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.runtime import PYTHON_VERSION

# Prints where the interpreter really is (through a pyenv shim, or from inside a virtual
# environment, its base) and its major.minor.
_PROBE = "import sys; print(getattr(sys, '_base_executable', '') or sys.executable); print('%d.%d' % sys.version_info[:2])"


class VenvPythonError(Exception):
    """A one-line answer naming the fix."""


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str  # major.minor, "3.12"


@dataclass(frozen=True)
class Choice:
    interpreter: Interpreter
    warning: str | None = None  # set when the runtime's version was not found


def probe(command: str) -> Interpreter | None:
    """Run ``command`` as a Python; None when it does not answer as one."""
    try:
        out = subprocess.run(
            [command, "-c", _PROBE], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or not re.fullmatch(r"\d+\.\d+", lines[1]):
        return None
    return Interpreter(path=lines[0], version=lines[1])


def _on_path(name: str, path: str) -> Iterator[str]:
    """Every executable ``name`` on ``path``, in order (the first may be a shim that fails)."""
    for directory in path.split(os.pathsep):
        candidate = Path(directory or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            yield str(candidate)


def _pyenv_versions(version: str, pyenv_root: Path) -> Iterator[str]:
    """``pyenv_root/versions/<version>.N/bin/python<version>``, newest patch release first."""
    releases = []
    for entry in (pyenv_root / "versions").glob(f"{version}.*"):
        match = re.fullmatch(re.escape(version) + r"\.(\d+)", entry.name)
        executable = entry / "bin" / f"python{version}"
        if match and executable.is_file():
            releases.append((int(match.group(1)), str(executable)))
    yield from (path for _, path in sorted(releases, reverse=True))


def _uv_find(version: str, uv: str | None) -> Iterator[str]:
    if uv is None:
        return
    try:
        out = subprocess.run(
            [uv, "python", "find", "--system", "--no-python-downloads", version],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return
    if out.returncode == 0 and out.stdout.strip():
        yield out.stdout.strip().splitlines()[-1]


def candidates(version: str, environ: Mapping[str, str], uv: str | None) -> Iterator[str]:
    """Where the runtime's Python may be, in the order it is looked for."""
    yield from _on_path(f"python{version}", environ.get("PATH", ""))
    pyenv_root = environ.get("PYENV_ROOT") or str(Path(environ.get("HOME", "~")).expanduser() / ".pyenv")
    yield from _pyenv_versions(version, Path(pyenv_root))
    yield from _uv_find(version, uv)


def find_runtime_python(
    version: str, environ: Mapping[str, str], uv: str | None = None, exclude: Path | None = None
) -> Interpreter | None:
    """The first candidate that runs and is ``version``; never one inside ``exclude`` (.venv)."""
    for command in candidates(version, environ, uv):
        found = probe(command)
        if found is None or found.version != version:
            continue
        if exclude is not None and Path(found.path).resolve().is_relative_to(exclude.resolve()):
            continue
        return found
    return None


def fallback_warning(version: str, fallback: Interpreter) -> str:
    return (
        f"venv: warning: Python {version}, the Lambda runtime's (infra/runtime.py), is not installed: "
        f".venv uses Python {fallback.version} ({fallback.path}), so the functions run on {fallback.version} "
        f"locally and on {version} in Lambda; install it (`pyenv install {version}` or "
        f"`uv python install {version}`), then `make venv` builds .venv again with it"
    )


def choose(
    version: str,
    environ: Mapping[str, str],
    *,
    override: str | None = None,
    fallback: Interpreter,
    uv: str | None = None,
    exclude: Path | None = None,
) -> Choice:
    """The interpreter to build .venv from: ``override``, else the runtime's, else ``fallback``."""
    if override:
        found = probe(override)
        if found is None:
            raise VenvPythonError(f"PYTHON={override} does not run as a Python interpreter: give another one")
        return Choice(found)
    found = find_runtime_python(version, environ, uv, exclude)
    if found is not None:
        return Choice(found)
    return Choice(fallback, fallback_warning(version, fallback))


def venv_version(venv: Path) -> str | None:
    """major.minor of the Python ``venv`` runs (from its pyvenv.cfg); None when there is none."""
    cfg = venv / "pyvenv.cfg"
    if not (venv / "bin" / "python").exists() or not cfg.is_file():
        return None
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version_info", "version"):
            match = re.match(r"\s*(\d+\.\d+)", value)
            if match:
                return match.group(1)
    return None


def prepare(
    venv: Path,
    record: Path,
    environ: Mapping[str, str],
    *,
    override: str | None = None,
    fallback: Interpreter,
    version: str = PYTHON_VERSION,
    say: Callable[[str], object] = print,
) -> None:
    """Remove a .venv of the wrong version and record the interpreter to build it from."""
    current = venv_version(venv)
    uv = shutil.which("uv", path=environ.get("PATH", "")) or _existing(venv / "bin" / "uv")
    warning = None
    if override is None and current is not None:
        if current == version or (found := find_runtime_python(version, environ, uv, venv)) is None:
            # the runtime's version already (the common case: file reads only), or still not
            # installed: the fallback .venv stays (its warning given when it was built, or now
            # for a .venv older than the record)
            if not record.is_file():
                built_with = Interpreter(str(venv / "bin" / "python"), current)
                if current != version:
                    say(fallback_warning(version, built_with))
                _write(record, built_with)
            return
        wanted = found
    else:
        choice = choose(version, environ, override=override, fallback=fallback, uv=uv, exclude=venv)
        wanted, warning = choice.interpreter, choice.warning
        if current == wanted.version:  # an override naming the version .venv has
            if not record.is_file():
                _write(record, wanted)
            return
    if current is not None:
        reason = f"PYTHON={override} is {wanted.version}" if override else f"the Lambda runtime is {version}"
        say(
            f"venv: {venv} runs Python {current} and {reason}: removing it to build it again with {wanted.path}"
        )
        shutil.rmtree(venv)
    elif warning:
        say(warning)
    _write(record, wanted)


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _write(record: Path, interpreter: Interpreter) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(interpreter.path + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, default=Path(".venv"))
    parser.add_argument("--record", type=Path, required=True, help="the file naming the interpreter")
    parser.add_argument("--python", help="build .venv from this interpreter, whatever its version")
    args = parser.parse_args(argv)
    here = Interpreter(sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}")
    try:
        prepare(args.venv, args.record, os.environ, override=args.python, fallback=here)
    except VenvPythonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
