"""What the service's PostgreSQL sessions do while Stripe answers, seen from outside.

A session tied up during a Stripe call (running a statement, inside a transaction, or holding a
lock: the per-order session advisory lock held across the call) is a database connection the
service cannot use for anything else for the call's whole latency. ``backends()`` reads every
service session's state and locks in one statement (``pg_stat_activity`` joined to one scan of
``pg_locks``); ``InFlightSampler`` takes such a snapshot every ~75 ms on its own connection
and relates it to the Stripe requests in flight at a latency double (``local.doubles.stripe_latency``).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.stack.settings import DB_NAME, DB_PASSWORD, DB_USER, HOST
from local.stack.settings import load as load_local_settings

SERVICE_APPLICATION_NAME = "payment-service"  # payments_core.adapters.postgres.db's application_name
SAMPLER_APPLICATION_NAME = "db-activity-sampler"

# pg_locks is a set-returning function behind a view: scanned once here, grouped by backend
# (a correlated subquery would scan the whole lock table once per session).
_BACKENDS_SQL = (
    "SELECT a.pid, a.state, a.xact_start IS NOT NULL AS in_transaction,"
    " COALESCE(l.advisory, false) AS advisory, COALESCE(l.other, false) AS other_locks"
    " FROM pg_stat_activity a"
    " LEFT JOIN (SELECT pid, bool_or(locktype = 'advisory') AS advisory,"
    "   bool_or(locktype NOT IN ('advisory', 'virtualxid')) AS other"
    "   FROM pg_locks WHERE granted GROUP BY pid) l ON l.pid = a.pid"
    " WHERE a.application_name = :app AND a.pid <> pg_backend_pid()"
)


@dataclass(frozen=True)
class Backend:
    pid: int
    state: str | None  # 'active', 'idle', 'idle in transaction', ...
    in_transaction: bool  # xact_start is set
    advisory: bool  # holds a granted advisory lock (session or transaction level)
    other_locks: bool  # holds a granted lock other than advisory ones and its own virtualxid

    @property
    def idle_in_transaction(self) -> bool:
        return (self.state or "").startswith("idle in transaction")

    @property
    def busy(self) -> bool:
        """Tied up: running a statement, inside a transaction, or holding a lock."""
        return (
            self.state == "active"
            or self.idle_in_transaction
            or self.in_transaction
            or self.advisory
            or self.other_locks
        )


def connect(application_name: str = SAMPLER_APPLICATION_NAME) -> Any:
    """A pg8000 connection to the local stack's database, as the service's user (who sees its
    own sessions' states), named so that it is never counted as a service session."""
    import pg8000.native

    return pg8000.native.Connection(
        user=DB_USER,
        password=DB_PASSWORD,
        host=HOST,
        port=load_local_settings().postgres_port,
        database=DB_NAME,
        application_name=application_name,
        timeout=10,
    )


def backends(conn: Any, application_name: str = SERVICE_APPLICATION_NAME) -> list[Backend]:
    """Every session with this application_name (but the caller's own), in one statement."""
    return [Backend(*row) for row in conn.run(_BACKENDS_SQL, app=application_name)]


@dataclass(frozen=True)
class Sample:
    in_flight: int  # Stripe requests in flight both before and after the snapshot (the fewer)
    busy: int
    advisory: int
    idle_in_transaction: int
    active: int


@dataclass
class InFlightSummary:
    samples: int  # snapshots taken
    during_calls: int  # ... of which with at least one Stripe request in flight
    busy_mean: float  # busy sessions per in-flight request, over the snapshots during calls
    busy_max: float
    advisory_mean: float  # sessions holding an advisory lock per in-flight request
    advisory_max: float
    nonzero_share: float  # share of snapshots during calls with any busy session
    in_flight_mean: float


@dataclass
class InFlightSampler:
    """Polls ``backends()`` every ``interval_s`` in a thread, reading the double's
    ``progress()`` (requests received, answered) before and after each snapshot. Use as a
    context manager around the measured run."""

    progress: Callable[[], tuple[int, int]]
    interval_s: float = 0.075
    application_name: str = SERVICE_APPLICATION_NAME
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _conn: Any = None

    def __enter__(self) -> InFlightSampler:
        self._conn = connect()
        self._thread = threading.Thread(target=self._run, name="db-activity-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._conn.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            received, answered = self.progress()
            seen = backends(self._conn, self.application_name)
            received_after, answered_after = self.progress()
            self.samples.append(
                Sample(
                    in_flight=max(0, min(received - answered, received_after - answered_after)),
                    busy=sum(b.busy for b in seen),
                    advisory=sum(b.advisory for b in seen),
                    idle_in_transaction=sum(b.idle_in_transaction for b in seen),
                    active=sum(b.state == "active" for b in seen),
                )
            )
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def summary(self) -> InFlightSummary:
        during = [s for s in self.samples if s.in_flight > 0]
        busy = [s.busy / s.in_flight for s in during] or [0.0]
        advisory = [s.advisory / s.in_flight for s in during] or [0.0]
        return InFlightSummary(
            samples=len(self.samples),
            during_calls=len(during),
            busy_mean=statistics.fmean(busy),
            busy_max=max(busy),
            advisory_mean=statistics.fmean(advisory),
            advisory_max=max(advisory),
            nonzero_share=sum(s.busy > 0 for s in during) / len(during) if during else 0.0,
            in_flight_mean=statistics.fmean([s.in_flight for s in during]) if during else 0.0,
        )
