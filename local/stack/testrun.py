"""The test drivers behind ``make test`` and ``make test-one``.

    python -m local.stack.testrun [extra pytest arguments]     start the stack if needed, run every
                                                          test, stop only what this run started
    python -m local.stack.testrun --one NODE_ID [NODE_ID…]     start only the components the chosen
                                                          tests' ``needs`` markers name (the
                                                          whole stack for an integration test
                                                          without one, nothing for a unit test),
                                                          run them, leave the stack up for the next

Exits with pytest's code.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from typing import Any

from local.stack import control as stack
from local.stack.settings import REPO_ROOT, client_env

TEST_DIRS = ("tests/unit", "tests/integration", "tests/infra")
# The Lambda emulators run the functions, which use every server (secrets in moto, PostgreSQL,
# Kafka, Stripe, the user service and the issuer); PostgreSQL's schema step reads the
# application role's secret from moto.
SERVERS = ("kafka", "postgres", "moto", "localstripe", "stripe-mock", "issuer", "user-service")
EMULATORS = ("event-source", "api-gateway", "public-api", "scheduler")
IMPLIED = {"postgres": ("moto",)}


class _NeedsCollector:
    """A pytest plugin that records, without running anything, what the collected tests need."""

    def __init__(self) -> None:
        self.whole_stack = False
        self.names: set[str] = set()
        self.collected = 0

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        self.collected = len(items)
        for item in items:
            if item.get_closest_marker("integration") is None:
                continue
            marker = item.get_closest_marker("needs")
            if marker is None:
                self.whole_stack = True
            else:
                self.names.update(marker.args)


def components_for(node_ids: list[str]) -> tuple[list[str] | None, int]:
    """The components to start for ``node_ids`` (None: all of them) and how many tests matched."""
    import pytest

    collector = _NeedsCollector()
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):  # the listing is noise; its errors are not
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *node_ids], plugins=[collector])
    if code != 0 or collector.collected == 0:
        errors = [line for line in listing.getvalue().splitlines() if "ERROR" in line or "rror:" in line]
        why = f": {errors[0].strip()}" if errors else ""
        raise ValueError(f"no test collected from {' '.join(node_ids)} (pytest exit {int(code)}){why}")
    if collector.whole_stack:
        return None, collector.collected
    names = set(collector.names)
    unknown = names - set(SERVERS) - set(EMULATORS)
    if unknown:
        raise ValueError(f"needs marker names unknown components: {', '.join(sorted(unknown))}")
    if names & set(EMULATORS):
        names.update(SERVERS)
    for name in list(names):
        names.update(IMPLIED.get(name, ()))
    return [c for c in (*SERVERS, *EMULATORS) if c in names], collector.collected


def _pytest(args: list[str]) -> int:
    env = dict(os.environ)
    env.update(client_env())
    print(f"testrun: pytest {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=str(REPO_ROOT), env=env)


def run_one(node_ids: list[str]) -> int:
    if not node_ids:
        print(
            "usage: make test-one T=<pytest node id, e.g. tests/unit/test_domain.py::test_x>", file=sys.stderr
        )
        return 2
    try:
        names, count = components_for(node_ids)
    except ValueError as exc:
        print(f"test-one: {exc}; check the path and name (pytest --collect-only lists them)", file=sys.stderr)
        return 2
    if names != []:
        print(
            f"testrun: {count} test(s) need {'the whole stack' if names is None else ', '.join(names)}",
            flush=True,
        )
        try:
            stack.up(names)
        except stack.StackError as exc:
            print(exc.line(), file=sys.stderr, flush=True)
            return 1
    return _pytest(node_ids)


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    if extra[:1] == ["--one"]:
        return run_one(extra[1:])
    result = stack.UpResult()
    try:
        try:
            stack.up(result=result)
        except stack.StackError as exc:
            print(exc.line(), file=sys.stderr, flush=True)
            return 1
        dirs = [d for d in TEST_DIRS if (REPO_ROOT / d).is_dir()]
        return _pytest(dirs + extra)
    except KeyboardInterrupt:
        return 130
    finally:
        if result.started:
            print(f"testrun: stopping what this run started: {', '.join(result.started)}", flush=True)
            stack.down(result.started)
        elif result.reused:
            print("testrun: the stack was already running; leaving it up", flush=True)


if __name__ == "__main__":
    sys.exit(main())
