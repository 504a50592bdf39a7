"""What the Lambda runtime gives a handler, reproduced for local runs: a context object and a
module imported once from ``functions/<name>/app.py`` (like a warm container)."""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from local.settings import AWS_ACCOUNT_ID, AWS_REGION, REPO_ROOT

Handler = Callable[[Any, Any], Any]


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
