"""The Lambda runtime reproduced for local runs: context, handler import, warm containers.

What the Lambda runtime gives a handler, reproduced for local runs: a context object, a
module imported once from ``functions/<name>/app.py``, and a warm container (a child process
that imported it once and serves one invocation at a time)."""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from local.stack.settings import AWS_ACCOUNT_ID, AWS_REGION, REPO_ROOT

Handler = Callable[[Any, Any], Any]
log = logging.getLogger("local.stack.lambda_runtime")


@dataclass
class FakeLambdaContext:
    """The attributes of ``awslambdaric``'s LambdaContext that Powertools and handlers read."""

    function_name: str
    timeout_seconds: float = 30.0
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{AWS_REGION}:{AWS_ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return time.strftime("%Y/%m/%d/[$LATEST]") + self.aws_request_id.replace("-", "")

    @property
    def identity(self) -> None:
        return None

    @property
    def client_context(self) -> None:
        return None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def handler_path(function: str) -> Path:
    """``authorize_payment`` -> ``<repo>/functions/authorize_payment/app.py``; a path is kept."""
    candidate = Path(function)
    if candidate.suffix == ".py":
        return candidate.resolve()
    return REPO_ROOT / "functions" / function / "app.py"


def load_module(path: Path, module_name: str | None = None) -> ModuleType:
    """Import a handler file by path under a unique module name (no sys.path changes)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"handler file {path} does not exist")
    name = module_name or f"lambda_fn_{path.parent.name}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_handler(function: str | Path, attribute: str = "lambda_handler") -> Handler:
    path = handler_path(str(function))
    module = load_module(path)
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise AttributeError(f"{path} has no callable {attribute}(event, context)")
    return handler


def function_name_of(function: str | Path) -> str:
    return handler_path(str(function)).parent.name


class ContainerStartError(RuntimeError):
    """The handler could not be imported: nothing was invoked."""


class Container:
    """A warm Lambda execution environment: a child process that imports the handler once and
    then runs one invocation at a time, like a container of the deployed function (its own
    module state, database connections and worker pool). Replaced when it dies or times out."""

    def __init__(
        self,
        path: Path,
        function_name: str,
        start_timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.function_name = function_name
        self.env = dict(env or {})  # the function's own environment, as its deployment sets it
        self.start_timeout_s = start_timeout_s
        self._process: Any = None
        self._conn: Any = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process with Kafka threads
        parent, child = spawn.Pipe()
        self._process = spawn.Process(
            target=_container_main,
            args=(child, str(self.path), self.function_name, self.env),
            name=f"lambda-{self.function_name}",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._conn = parent
        try:
            if not parent.poll(self.start_timeout_s):
                raise ContainerStartError(f"handler not imported within {self.start_timeout_s:.0f} s")
            kind, detail = parent.recv()
        except (EOFError, OSError) as exc:
            self.stop()
            raise ContainerStartError(f"container exited while importing the handler: {exc!r}") from exc
        except ContainerStartError:
            self.stop()
            raise
        if kind != "ready":
            self.stop()
            raise ContainerStartError(f"importing {self.path} failed:\n{detail}")

    def invoke(self, event: dict[str, Any], timeout_s: float) -> Any:
        """The handler's response. Raises RuntimeError when the handler raised, ran out of time
        (the container is then stopped, as Lambda does) or the container died."""
        if self._process is None or not self._process.is_alive():
            self.stop()
            self._start()
        try:
            self._conn.send((event, timeout_s))
            if not self._conn.poll(timeout_s + 1):
                self.stop()
                raise RuntimeError(f"Task timed out after {timeout_s:.0f} seconds (container stopped)")
            kind, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode if self._process is not None else None
            self.stop()
            raise RuntimeError(f"container died during the invocation (exit code {code}): {exc!r}") from exc
        if kind == "error":
            raise RuntimeError(value)
        return value

    def stop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                log.debug("closing a container's pipe failed", exc_info=True)
            self._conn = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
            self._process = None


def _container_main(conn: Any, path: str, function_name: str, env: dict[str, str]) -> None:
    """The child process of a ``Container``: import once, then serve invocations."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the mapping decides when containers stop
    os.environ.update(env)
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {function_name}[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        handler = load_handler(Path(path))
    except Exception:
        conn.send(("import-failed", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the mapping went away
        if message is None:
            return
        event, timeout_s = message
        context = FakeLambdaContext(function_name=function_name, timeout_seconds=timeout_s)
        try:
            response = handler(event, context)
        except Exception as exc:
            conn.send(("error", f"handler raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            continue
        conn.send(("ok", response))
