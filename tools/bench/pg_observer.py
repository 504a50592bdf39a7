"""PostgreSQL watched from outside for section (i): server CPU, counters, service sessions.

PostgreSQL watched from outside for the database-cost section (i): CPU of the server's
processes from /proc, its statistics counters, and the service's sessions sampled against the
Stripe requests in flight."""

from __future__ import annotations

import os
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.stack.settings import DB_NAME
from local.stack.settings import load as load_local_settings

SAMPLE_EVERY_S = 0.5
# Sessions kept free on the local server for the stack itself, the tests' scratch work and psql.
CONNECTION_HEADROOM = 12
SERVICE_APPLICATION_NAME = "payment-service"  # payments_core.adapters.postgres.db's application_name


# ---- CPU from /proc -----------------------------------------------------------------------------


def _procs() -> dict[int, tuple[int, float, float]]:
    """pid -> (parent, own CPU seconds, reaped children's CPU seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        found[int(entry)] = (int(fields[1]), (utime + stime) / tick, (cutime + cstime) / tick)
    return found


def tree_cpu_seconds(root: int, *, own: bool = True) -> float:
    """CPU seconds of ``root``'s process tree, exited members included (reaped children's time);
    ``own=False`` leaves out the root's own time (the mapping's poll loop)."""
    procs = _procs()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid not in procs:
            continue
        _, mine, reaped = procs[pid]
        total += reaped + (mine if own or pid != root else 0.0)
        stack.extend(children.get(pid, []))
    return total


def pg_cpu_by_kind(postmaster: int) -> dict[str, float]:
    """CPU seconds of the postmaster's processes by kind (their title: ``payments payments``
    for the service's sessions, ``checkpointer``, ``autovacuum launcher``, ...); what exited
    is under ``exited``."""
    kinds: dict[str, float] = {}
    for pid, (parent, mine, reaped) in _procs().items():
        if pid == postmaster:
            kinds["postmaster"] = kinds.get("postmaster", 0.0) + mine
            kinds["exited"] = kinds.get("exited", 0.0) + reaped
        elif parent == postmaster:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            words = title.removeprefix("postgres: ").split()
            kind = " ".join(words[:2])
            kinds[kind] = kinds.get(kind, 0.0) + mine + reaped
    return kinds


def process_cpu_seconds(pid: int) -> float:
    return _procs().get(pid, (0, 0.0, 0.0))[1]


def postmaster_pid() -> int:
    pid_file = load_local_settings().state_dir / "postgres" / "data" / "postmaster.pid"
    return int(pid_file.read_text().split()[0])


# ---- PostgreSQL counters --------------------------------------------------------------------------


@dataclass
class Counters:
    cpu_s: float
    transactions: int
    tuples_read: int
    statements: int | None  # None: pg_stat_statements is not loaded
    by_statement: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # query -> calls, rows, ms
    by_kind: dict[str, float] = field(default_factory=dict)  # CPU seconds by process kind


class Observer:
    """A superuser session on the ``postgres`` database (so its own work is not counted in the
    service's database): counters, and the service's sessions."""

    def __init__(self) -> None:
        from local.stack.postgres_server import Postgres

        pg = Postgres("postgres", load_local_settings(), [])
        self.conn = pg.superuser_connection()
        self.pid = int(self.conn.run("SELECT pg_backend_pid()")[0][0])
        self.postmaster = postmaster_pid()
        loaded = str(self.conn.run("SHOW shared_preload_libraries")[0][0])
        self.statements = "pg_stat_statements" in loaded
        if self.statements:
            self.conn.run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()

    def counters(self) -> Counters:
        with self.lock:
            self.conn.run("SELECT pg_stat_clear_snapshot()")
            xacts, tuples = self.conn.run(
                "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database"
                " WHERE datname = :d",
                d=DB_NAME,
            )[0]
            by: dict[str, tuple[int, int, float]] = {}
            if self.statements:
                for query, calls, rows, ms in self.conn.run(
                    "SELECT s.query, sum(s.calls)::bigint, sum(s.rows)::bigint, sum(s.total_exec_time)"
                    " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                    " WHERE d.datname = :d GROUP BY s.query",
                    d=DB_NAME,
                ):
                    by[str(query)] = (int(calls), int(rows), float(ms))
            cpu = tree_cpu_seconds(self.postmaster) - process_cpu_seconds(self.pid)
            kinds = pg_cpu_by_kind(self.postmaster)
        return Counters(
            cpu_s=cpu,
            transactions=int(xacts),
            tuples_read=int(tuples),
            statements=sum(c for c, _, _ in by.values()) if self.statements else None,
            by_statement=by,
            by_kind=kinds,
        )

    def service_sessions(self) -> tuple[int, int]:
        """The service's sessions: open, and busy (running a statement or inside a transaction)."""
        with self.lock:
            opened, busy = self.conn.run(
                "SELECT count(*), count(*) FILTER (WHERE state <> 'idle' OR xact_start IS NOT NULL)"
                " FROM pg_stat_activity WHERE application_name = :app",
                app=SERVICE_APPLICATION_NAME,
            )[0]
        return int(opened), int(busy)

    def connection_budget(self) -> int:
        """Sessions the bench's containers may open: max_connections less the reserved ones, the
        sessions already open, and headroom."""
        with self.lock:
            most, reserved, open_now = self.conn.run(
                "SELECT current_setting('max_connections')::int,"
                " current_setting('superuser_reserved_connections')::int"
                " + current_setting('reserved_connections')::int,"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
            )[0]
        return int(most) - int(reserved) - int(open_now) - CONNECTION_HEADROOM


@dataclass
class SessionSampler:
    """The service's sessions and the Stripe requests in flight, every SAMPLE_EVERY_S."""

    observer: Observer
    progress: Any  # the double's progress(): (received, answered)
    baseline_open: int
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # in flight, open, busy
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SessionSampler:
        self._thread = threading.Thread(target=self._run, name="dbcost-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            received, answered = self.progress()
            opened, busy = self.observer.service_sessions()
            self.samples.append((received - answered, opened - self.baseline_open, busy))

    def per_in_flight(self) -> tuple[float, float, float]:
        """(open, busy) sessions per in-flight order, and the mean in flight, over the samples
        with requests in flight."""
        during = [s for s in self.samples if s[0] > 0]
        if not during:
            return 0.0, 0.0, 0.0
        in_flight = statistics.fmean(s[0] for s in during)
        return (
            statistics.fmean(s[1] for s in during) / in_flight,
            statistics.fmean(s[2] for s in during) / in_flight,
            in_flight,
        )
