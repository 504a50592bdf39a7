"""The database behind a rate: the cheapest class that holds every function's sessions and
PostgreSQL's CPU, its max_connections, and the RDS Proxy's share of them (sizing.py uses it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.capacity import published as pub
from infra.capacity.published import Item
from infra.config import StageConfig

PG_CPU_S_PER_COMMAND = 3.5 / 1000
PG_CPU_TARGET = 0.6
WEBHOOK_SECONDS = 0.05  # one webhook's database session (p99 11 ms in process; proxy round trips)
RELAY_SESSIONS = 2  # one scheduled invocation a minute; two overlap at most
# The reconciler holds its own connection and one per worker (RECONCILE_WORKERS: the stack
# leaves it at payments_core.config's default, 4); the retention job holds one.
RECONCILE_WORKERS = 4
AUDIT_SESSIONS = 1 + RECONCILE_WORKERS + 1
DIRECT_SESSIONS = 3  # outside the proxy: the migration and the two secret rotations
OPERATOR_SESSIONS = 5  # psql, monitoring


@dataclass(frozen=True)
class Sessions:
    authorize: int
    api: int
    webhook: int
    relay: int
    audit: int
    history: int

    @property
    def through_proxy(self) -> int:
        return self.authorize + self.api + self.webhook + self.relay + self.audit + self.history


def size_database(
    config: StageConfig, sessions: Sessions, commands: float
) -> tuple[Item[pub.InstanceClass], Item[int], Item[int]]:
    """The cheapest class whose proxy share of max_connections holds every session (sized as if
    each pinned a backend: the proxy multiplexes unpinned ones, so this is a ceiling) and whose
    vCPUs carry PostgreSQL's CPU at the rate, or the set class, checked."""
    db, name, r = config.database, config.name, config.capacity.orders_per_second
    need = sessions.through_proxy
    cpu = commands * PG_CPU_S_PER_COMMAND / PG_CPU_TARGET

    headroom = DIRECT_SESSIONS + OPERATOR_SESSIONS + pub.PG_SUPERUSER_RESERVED

    def share(cls: pub.InstanceClass) -> int:
        if db.proxy_max_connections_percent is not None:
            return db.proxy_max_connections_percent
        return min(100, math.floor(100 * (cls.max_connections - headroom) / cls.max_connections))

    def carries(cls: pub.InstanceClass) -> bool:
        return cls.max_connections * share(cls) // 100 >= need and cls.vcpus >= cpu

    why = f"{need} sessions through the proxy and {cpu:.2f} vCPU of PostgreSQL"
    if db.instance_type is not None:
        chosen = pub.instance_class(db.instance_type)
        if not carries(chosen):
            derived = next((c.name for c in pub.INSTANCE_CLASSES if carries(c)), "none of the known classes")
            raise ValueError(
                f"{name}: database.instance_type={chosen.name} cannot carry capacity.orders_per_second={r} "
                f"(needs {why}; it has {chosen.max_connections * share(chosen) // 100} and {chosen.vcpus}); "
                f"raise it, or remove it to derive {derived}"
            )
    else:
        found = [c for c in pub.INSTANCE_CLASSES if carries(c)]
        if not found:
            raise ValueError(f"{name}: no database class in infra/capacity/published.py carries {why}")
        chosen = found[0]
    pct = share(chosen)
    if not pub.PROXY_MAX_CONNECTIONS_PERCENT_RANGE[0] <= pct <= pub.PROXY_MAX_CONNECTIONS_PERCENT_RANGE[1]:
        raise ValueError(f"{name}: database.proxy_max_connections_percent={pct} must be 1 to 100")
    s = sessions
    cls_item = Item(
        chosen,
        f"cheapest class with {why} (CPU: {commands:g} commands/s x {PG_CPU_S_PER_COMMAND * 1000:g} "
        f"CPU-s per 1,000 / {PG_CPU_TARGET:g}); sessions: authorize {s.authorize} + API {s.api} + "
        f"webhook {s.webhook} + relay {s.relay} + audit {s.audit} + history {s.history}",
        f"{chosen.vcpus} vCPU, {chosen.memory_gib:g} GiB" + (", burstable" if chosen.burstable else ""),
    )
    max_conn = Item(
        chosen.max_connections,
        f"LEAST(DBInstanceClassMemory / {pub.PG_BYTES_PER_CONNECTION}, {pub.PG_MAX_CONNECTIONS_CAP}); "
        f"proxy {chosen.max_connections * pct // 100}, direct {DIRECT_SESSIONS} (migration, rotations), "
        f"headroom {chosen.max_connections - chosen.max_connections * pct // 100 - DIRECT_SESSIONS}",
        "RDS for PostgreSQL's default max_connections",
    )
    percent = Item(
        pct,
        f"(max_connections {chosen.max_connections} - {headroom} direct, operators, superuser) "
        f"/ {chosen.max_connections}",
        "RDS Proxy: MaxConnectionsPercent 1-100",
    )
    return cls_item, max_conn, percent
