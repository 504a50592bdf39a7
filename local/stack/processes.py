"""Processes of the local stack: ports, pids, logs and the Component base class.

A Component starts, waits for and stops one background server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from local.stack import settings as cfg
from local.stack.settings import HOST, LocalSettings, client_env


class StackError(Exception):
    """A failure worth one line: component, problem, fix, log."""

    def __init__(self, component: str, problem: str, fix: str, log: Path | None = None) -> None:
        self.component = component
        self.problem = problem
        self.fix = fix
        self.log = log
        super().__init__(self.line())

    def line(self) -> str:
        text = f"local-up: {self.component}: {self.problem}; fix: {self.fix}"
        if self.log is not None:
            text += f" (log: {rel(self.log)})"
        return text


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# process and port helpers


# A first-run download or build says it is still at work this often, so a quiet minute of Maven
# or Go is not mistaken for a hang.
PROGRESS_EVERY_S = 20.0


def run_with_progress(
    component: str,
    what: str,
    cmd: Sequence[str],
    log: Path,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
) -> int:
    """Run a one-time set-up step (``what``: "fetching Kafka 4.1.1 jars from Maven Central"),
    its output in ``log``; say when it starts, every PROGRESS_EVERY_S while it runs (elapsed,
    bytes logged so far), and when it ends. Returns the exit code (-1 after ``timeout``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{component:<14}{what} (once; log: {rel(log)})...")
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                code = proc.wait(timeout=PROGRESS_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    code = -1
                    break
                say(
                    f"{component:<14}... still {what.split(' ', 1)[0]} ({elapsed:.0f} s, {log.stat().st_size // 1024} KiB of output)"
                )
    verdict = "done" if code == 0 else f"failed (exit {code})"
    say(f"{component:<14}{what.split(' ', 1)[0]} {verdict} in {time.monotonic() - start:.0f} s")
    return code


def port_free(port: int) -> bool:
    """True when nothing is bound to 127.0.0.1:port (or to the wildcard address on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listener_description(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} {proc.name()}"
    except (psutil.Error, OSError):
        pass
    return "another process"


def _alive(pid: int, marker: str) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own dead child
            return False
        return marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _stop_pid(pid: int, sig: int, timeout: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # the group we created with start_new_session
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(5)
    except psutil.Error:
        pass


def _tail_hint(log: Path, since: int, needles: Sequence[str]) -> str | None:
    """First line in the log (written after ``since``) containing one of ``needles``."""
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            for raw in fh.read().decode(errors="replace").splitlines():
                if any(n in raw for n in needles):
                    return raw.strip()[:200]
    except OSError:
        pass
    return None


def log_contains(log: Path, since: int, needle: str) -> bool:
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            return needle.encode() in fh.read()
    except OSError:
        return False


def process_env(s: LocalSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(client_env(s))
    return env


# ---------------------------------------------------------------------------------------------
# components


@dataclass
class Component:
    """A background process owned by this checkout, tracked through ``.local/run/<name>.json``."""

    name: str
    settings: LocalSettings
    ports: list[tuple[int, str]]  # (port, env var that overrides it)
    timeout: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 20.0
    emulator: bool = False  # a Lambda emulator, started after provisioning
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    # -- to be provided by each component
    def command(self) -> list[str]:
        raise NotImplementedError

    def marker(self) -> str:
        """A string in the command line that identifies our process (guards against pid reuse)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Fetch artifacts, initialise data directories (idempotent)."""

    def ready(self) -> bool:
        return all(port_open(p) for p, _ in self.ports)

    def launch_kwargs(self) -> dict[str, Any]:
        return {}

    # -- shared machinery
    @property
    def log(self) -> Path:
        return self.settings.log_path(self.name)

    @property
    def pid_file(self) -> Path:
        return self.settings.run_dir / f"{self.name}.json"

    @property
    def port_numbers(self) -> list[int]:
        return [p for p, _ in self.ports]

    def describe_address(self) -> str:
        return ", ".join(f"{HOST}:{p}" for p in self.port_numbers) or "-"

    def recorded(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.pid_file.read_text())
            return data
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """Pid of our process if it is alive (on whatever ports it was started with)."""
        rec = self.recorded()
        if rec and _alive(int(rec["pid"]), rec.get("marker", self.marker())):
            return int(rec["pid"])
        return None

    def running_here(self) -> bool:
        rec = self.recorded()
        return self.running_pid() is not None and rec is not None and rec.get("ports") == self.port_numbers

    def check_ports(self) -> None:
        rec = self.recorded()
        pid = self.running_pid()
        if pid is not None and rec is not None and rec.get("ports") != self.port_numbers:
            raise StackError(
                self.name,
                f"already running from this checkout on port(s) {rec.get('ports')} (pid {pid}), "
                f"not on {self.port_numbers} as now configured",
                "run `make local-down` first, then `make local-up` with the new ports",
            )
        if pid is not None:
            return
        for port, env_name in self.ports:
            if not port_free(port):
                raise StackError(
                    self.name,
                    f"port {port} on {HOST} is already in use by {_listener_description(port)}, "
                    "not by this stack",
                    f"stop that process or pick another port with {env_name}=<port>",
                )

    def launch(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            out.flush()
            self._log_offset = out.tell()
            kwargs: dict[str, Any] = {
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "start_new_session": True,  # survives `make`; own process group for clean stops
                "cwd": str(cfg.REPO_ROOT),
                "env": process_env(self.settings),
            }
            kwargs.update(self.launch_kwargs())
            try:
                self._popen = subprocess.Popen(self.command(), **kwargs)
            except OSError as exc:
                raise StackError(self.name, f"cannot start: {exc}", "see the log", self.log) from exc
        self.pid_file.write_text(
            json.dumps({"pid": self._popen.pid, "ports": self.port_numbers, "marker": self.marker()})
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                hint = _tail_hint(self.log, self._log_offset, ("ERROR", "FATAL", "Error", "error"))
                raise StackError(
                    self.name,
                    f"exited during start-up with code {self._popen.returncode}"
                    + (f" ({hint})" if hint else ""),
                    "read the log, fix the cause, then run `make local-up` again",
                    self.log,
                )
            if self.ready():
                return
            time.sleep(0.2)
        raise StackError(
            self.name,
            f"not ready within {self.timeout:.0f}s",
            "read the log; `make local-down && make local-up` restarts it",
            self.log,
        )

    def stop(self) -> bool:
        pid = self.running_pid()
        if pid is not None:
            _stop_pid(pid, self.stop_signal, self.stop_timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None
