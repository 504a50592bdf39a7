"""The crash runner's child: a function's handler run with crash points around its gateways.

The crash runner's child process: runs one function's handler with the service's gateways
wrapped, so each crash point of the plan it is handed can SIGKILL it there.

    python -m local.doubles.crash_child      (started by ``local.doubles.crash_runner.CrashRunner``)

It reads one invocation a line on stdin (the kind of function, the event, the kill plan, the
orders to interrupt in flight) and answers one line on its stdout; what the function logs goes
to stderr. The crash points are named in ``local.doubles.crash_runner``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from local.doubles.crash_runner import (
    AFTER_STRIPE,
    BEFORE_COMMIT,
    BEFORE_PUBLISH,
    BEFORE_STRIPE,
    CAPTURE_TO_TRANSFER,
    FUNCTIONS,
    IN_FLIGHT_AFTER_S,
    MONEY_MOVING,
    TIMER,
    TRANSFER_IN_FLIGHT,
)
from local.stack.lambda_runtime import FakeLambdaContext


class _KillSwitch:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.plan: dict[str, Any] | None = None
        self.crossings: Counter[str] = Counter()
        self.in_flight: dict[str, str] = {}
        self.dropped: list[str] = []
        self._lock = threading.Lock()

    def arm(self, plan: dict[str, Any] | None, in_flight: dict[str, str] | None = None) -> None:
        self.plan = plan if plan and plan.get("phase") != TIMER else None
        self.crossings = Counter()
        self.in_flight = dict(in_flight or {})
        self.dropped = []

    def transfer_sent(self, order_id: str) -> None:
        """The order's transfer is about to go: interrupt it in flight if the parent asked."""
        action = self.in_flight.pop(order_id, None)
        if action is not None:
            threading.Timer(IN_FLIGHT_AFTER_S, self._interrupt, args=(action, order_id)).start()

    def _interrupt(self, action: str, order_id: str) -> None:
        if action == "kill":
            with self._lock:
                self.out.write(
                    json.dumps({"killed": TRANSFER_IN_FLIGHT, "detail": f"transfer {order_id}"}) + "\n"
                )
                self.out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        _drop_own_sessions()
        self.dropped.append(order_id)

    def cross(self, phase: str, detail: str, method: str = "") -> None:
        self.crossings[phase] += 1
        if method:
            self.crossings[f"{phase}:{method}"] += 1
        plan = self.plan
        key = f"{phase}:{plan['method']}" if plan is not None and plan.get("method") else phase
        if plan is not None and plan["phase"] == phase and self.crossings[key] == plan["at"]:
            self.out.write(json.dumps({"killed": phase, "detail": detail}) + "\n")
            self.out.flush()
            os.kill(os.getpid(), signal.SIGKILL)


APPLICATION_NAME = f"crash-runner-{os.getpid()}"  # this child's sessions, to drop them


def _name_sessions() -> None:
    """Every database session of this child carries its application_name (pg8000's default
    keyword), so ``_drop_own_sessions`` finds them all, the worker threads' included."""
    import pg8000.native

    original = pg8000.native.Connection.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["application_name"] = APPLICATION_NAME
        original(self, *args, **kwargs)

    pg8000.native.Connection.__init__ = __init__  # type: ignore[method-assign]


def _drop_own_sessions() -> None:
    """The server ends every session of this child (what a network blip or a proxy failover
    does); the process goes on and reconnects when it next needs the database."""
    from payments_core.adapters.postgres.db import Database

    db = Database()
    try:
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = :n AND pid <> pg_backend_pid()",
            n=APPLICATION_NAME,
        )
    finally:
        db.close()


def _wrap_services(switch: _KillSwitch) -> Any:
    from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
    from payments_core.adapters.postgres.db import Database
    from payments_core.adapters.services import Services, set_services
    from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
    from payments_core.config import get_settings

    class Connection:
        """A pg8000 connection whose COMMIT is a crash point."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def run(self, sql: str, **params: Any) -> Any:
            if sql.strip().upper() == "COMMIT":
                switch.cross(BEFORE_COMMIT, "COMMIT")
            return self._inner.run(sql, **params)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    class CrashingDatabase(Database):
        _wrapped: tuple[Any, Connection] | None = None

        def connection(self) -> Any:
            inner = super().connection()
            if self._wrapped is None or self._wrapped[0] is not inner:
                self._wrapped = (inner, Connection(inner))
            return self._wrapped[1]

    class CrashingStripe:
        def __init__(self, inner: StripeApiGateway) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            method = getattr(self._inner, name)
            if not callable(method):
                return method

            def call(*args: Any, **kwargs: Any) -> Any:
                order = getattr(args[0], "order_id", "") if args else ""
                switch.cross(BEFORE_STRIPE, f"{name} {order}")
                if name == "transfer":
                    switch.transfer_sent(order)
                after = CAPTURE_TO_TRANSFER if name == "capture" else AFTER_STRIPE
                try:
                    result = method(*args, **kwargs)
                except Exception:
                    if name in MONEY_MOVING:
                        switch.cross(after, f"{name} {order} (refused)", name)
                    raise
                if name in MONEY_MOVING:
                    switch.cross(after, f"{name} {order}", name)
                return result

            return call

    class CrashingPublisher:
        def __init__(self, inner: KafkaEventPublisher) -> None:
            self._inner = inner

        def publish(self, messages: list[Any]) -> list[Exception | None]:
            switch.cross(BEFORE_PUBLISH, f"{len(messages)} events")
            return self._inner.publish(messages)

    settings = get_settings()
    services = Services(
        db=CrashingDatabase(settings),
        stripe=CrashingStripe(StripeApiGateway(settings)),  # type: ignore[arg-type]
        publisher=CrashingPublisher(KafkaEventPublisher(settings)),
        settings=settings,
    )
    set_services(services)
    return services


def main() -> int:
    # Keep the pipe to the parent for replies only: whatever the function logs goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    switch = _KillSwitch(out)
    _name_sessions()
    _wrap_services(switch)
    from local.stack.lambda_runtime import load_handler

    handlers: dict[str, Callable[[Any, Any], Any]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        kind = request["kind"]
        if kind not in handlers:
            handlers[kind] = load_handler(FUNCTIONS[kind])
        switch.arm(request.get("kill"), request.get("in_flight"))
        context = FakeLambdaContext(function_name=FUNCTIONS[kind], timeout_seconds=60)
        try:
            scheduled = kind in ("reconcile", "relay")
            event = {"source": "aws.events", "time": time.time()} if scheduled else request["event"]
            response = handlers[kind](event, context)
            reply = {"ok": True, "response": response, "crossings": switch.crossings}
        except Exception as exc:  # reported to the parent like a failed invocation
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "crossings": switch.crossings}
        reply["dropped"] = switch.dropped
        with switch._lock:
            out.write(json.dumps(reply, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
