"""Local EventBridge schedules: invoke the outbox relay and the reconciler on fixed intervals.

    python -m local.stack.scheduler            (started by `make local-up`)

Intervals: ``LOCAL_RELAY_INTERVAL_S`` (default 1) for ``functions/outbox_relay/app.py``,
``LOCAL_RECONCILE_INTERVAL_S`` (default 5) for ``functions/reconcile_payments/app.py`` and
``LOCAL_RETAIN_INTERVAL_S`` (default 86400, daily as in AWS, first run one interval after the
start so it never runs in the middle of a test session; tests invoke it themselves) for
``functions/retain_data/app.py``. All run in one thread, one invocation at a time, like two functions that never overlap
here (they share the process's database connection). A handler that does not exist yet is
logged and looked for again on its next tick.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from local.stack.lambda_runtime import (
    FakeLambdaContext,
    Handler,
    function_name_of,
    handler_path,
    load_handler,
)
from local.stack.settings import AWS_ACCOUNT_ID, AWS_REGION

log = logging.getLogger("local.stack.scheduler")


def scheduled_event(rule: str) -> dict[str, Any]:
    """The event EventBridge Scheduler/rules deliver to a scheduled Lambda."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": AWS_ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": AWS_REGION,
        "resources": [f"arn:aws:events:{AWS_REGION}:{AWS_ACCOUNT_ID}:rule/{rule}"],
        "detail": {},
    }


@dataclass
class Job:
    function: str
    interval_s: float
    start_delay_s: float = 0.0  # first run this long after the scheduler starts
    handler: Handler | None = None
    next_due: float = 0.0
    runs: int = 0
    failures: int = 0
    _missing_logged: float = field(default=0.0, repr=False)

    @property
    def rule(self) -> str:
        return f"campusg-local-{function_name_of(self.function).replace('_', '-')}"

    def _load(self) -> Handler | None:
        if self.handler is not None:
            return self.handler
        path = handler_path(self.function)
        if not path.is_file():
            if time.monotonic() - self._missing_logged > 60:
                log.warning("handler %s does not exist yet; will look again on each tick", path)
                self._missing_logged = time.monotonic()
            return None
        try:
            self.handler = load_handler(path)
        except Exception:
            log.error("importing %s failed; retrying on the next tick\n%s", path, traceback.format_exc())
            return None
        log.info("handler %s loaded (cold start), every %.1fs", path, self.interval_s)
        return self.handler

    def tick(self) -> None:
        handler = self._load()
        if handler is None:
            return
        context = FakeLambdaContext(
            function_name_of(self.function), timeout_seconds=min(max(self.interval_s * 10, 30), 900)
        )
        started = time.monotonic()
        try:
            result = handler(scheduled_event(self.rule), context)
        except Exception:
            self.failures += 1
            log.error("%s raised\n%s", self.rule, traceback.format_exc())
            return
        self.runs += 1
        log.debug("%s returned %r in %.0f ms", self.rule, result, (time.monotonic() - started) * 1000)


@dataclass
class Scheduler:
    jobs: list[Job]
    stop_event: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        now = time.monotonic()
        for job in self.jobs:
            job.next_due = now + job.start_delay_s
        while not self.stop_event.is_set():
            job = min(self.jobs, key=lambda j: j.next_due)
            wait = job.next_due - time.monotonic()
            if wait > 0 and self.stop_event.wait(wait):
                break
            job.tick()
            # fixed rate, but never a burst of catch-up runs after a slow invocation
            job.next_due = max(job.next_due + job.interval_s, time.monotonic())

    def stop(self) -> None:
        self.stop_event.set()


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s scheduler %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    jobs = [
        Job("outbox_relay", float(os.environ.get("LOCAL_RELAY_INTERVAL_S") or 1)),
        Job("reconcile_payments", float(os.environ.get("LOCAL_RECONCILE_INTERVAL_S") or 5)),
    ]
    retain_interval = float(os.environ.get("LOCAL_RETAIN_INTERVAL_S") or 86400)
    jobs.append(Job("retain_data", retain_interval, start_delay_s=retain_interval))
    scheduler = Scheduler(jobs)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    signal.signal(signal.SIGINT, lambda *_: scheduler.stop())
    log.info("READY: %s", ", ".join(f"{j.rule} every {j.interval_s:g}s" for j in jobs))
    scheduler.run()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
