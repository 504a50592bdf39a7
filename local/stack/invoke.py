"""Invoke one function with an event file against the local stack, like ``sam local invoke``.

    python -m local.stack.invoke authorize_payment events/authorize_valid.json
    make invoke FN=authorize_payment EVENT=events/authorize_valid.json

The handler's own output (Powertools logs, metrics) goes to stderr so stdout carries only the
JSON response and can be piped (``| jq``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from local.stack.lambda_runtime import FakeLambdaContext, function_name_of, handler_path, load_handler
from local.stack.settings import client_env


def apply_local_env() -> None:
    """Local stack values for whatever the caller has not set explicitly."""
    for key, value in client_env().items():
        os.environ.setdefault(key, value)


def invoke(function: str, event: Any, timeout_seconds: float = 30.0) -> Any:
    apply_local_env()
    with contextlib.redirect_stdout(sys.stderr):
        handler = load_handler(function)
        context = FakeLambdaContext(function_name=function_name_of(function), timeout_seconds=timeout_seconds)
        return handler(event, context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.stack.invoke", description=__doc__.splitlines()[0])
    parser.add_argument(
        "function", help="a name under functions/ (e.g. authorize_payment) or a path to app.py"
    )
    parser.add_argument("event", help="path to the event JSON file, or - for stdin")
    parser.add_argument("--timeout", type=float, default=30.0, help="context deadline in seconds")
    args = parser.parse_args(argv)

    path = handler_path(args.function)
    if not path.is_file():
        print(f"invoke: {path} does not exist (FN must name a folder under functions/)", file=sys.stderr)
        return 2
    try:
        raw = sys.stdin.read() if args.event == "-" else Path(args.event).read_text()
        event = json.loads(raw)
    except (OSError, ValueError) as exc:
        print(f"invoke: cannot read the event {args.event}: {exc}", file=sys.stderr)
        return 2

    started = time.monotonic()
    try:
        response = invoke(args.function, event, args.timeout)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}, indent=2))
        return 1
    elapsed_ms = (time.monotonic() - started) * 1000
    print(json.dumps(response, indent=2, default=str))
    print(f"invoke: {path.parent.name} returned in {elapsed_ms:.0f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
