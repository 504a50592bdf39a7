"""The published limits the capacity model respects, each with where it is published, and the
database instance classes it chooses from. Numbers only: the formulas are in sizing.py.

Looked up on 2026-12-03 in the stored copies of AWS's and Stripe's documentation this project
can reach (it cannot read the live pages): re-check a figure before relying on it at its edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# --- Lambda ------------------------------------------------------------------------------------
# "Lambda quotas": 1,000 concurrent executions per account and region by default (adjustable;
# some new accounts start far lower). "Configuring reserved concurrency": you can reserve up to
# the unreserved account concurrency minus 100, kept for functions without a reservation.
LAMBDA_CONCURRENCY_DEFAULT = 1_000
LAMBDA_UNRESERVED_MINIMUM = 100
# MSK event source mapping ("Configuring Amazon MSK event sources for Lambda"): Lambda reads each
# partition sequentially, so at most one invocation per partition is in flight at a time.
INVOCATIONS_PER_PARTITION = 1
# Provisioned mode ("Apache Kafka event poller scaling modes"): each event poller handles up to
# 5 MB/s or up to 5 concurrent invocations. ProvisionedPollerConfig: MinimumPollers 1 to 200,
# MaximumPollers 1 to 2,000.
INVOCATIONS_PER_POLLER = 5
POLLER_MB_PER_S = 5.0
MIN_POLLERS_RANGE = (1, 200)
MAX_POLLERS_RANGE = (1, 2_000)
# "All Amazon MSK event source configuration parameters": BatchSize at most 10,000;
# MaximumBatchingWindowInSeconds at most 300.
ESM_MAX_BATCH_SIZE = 10_000
ESM_MAX_BATCHING_WINDOW_S = 300

# --- MSK Serverless ("Amazon MSK quota", MSK Serverless) ---------------------------------------
# 5 MB/s ingress and 10 MB/s egress per partition; 200 MB/s ingress per cluster. Partitions per
# cluster: 2,400 on the current quota page; the archived page (awsdocs/amazon-msk-developer-guide,
# limits.md) says 120, with at most 120 partition creations or deletions per 5 minutes. The
# account's actual figure is on the pre-deploy checklist.
MSK_PARTITION_INGRESS_MB_S = 5.0
MSK_CLUSTER_INGRESS_MB_S = 200.0
MSK_SERVERLESS_PARTITIONS = 2_400
MSK_SERVERLESS_PARTITIONS_ARCHIVED = 120

# --- API Gateway and WAF -----------------------------------------------------------------------
# "Amazon API Gateway quotas": 10,000 requests/s per account and region (burst 5,000), shared by
# every API in the account and region; stage and method throttles cannot exceed it.
APIGW_ACCOUNT_RPS = 10_000
APIGW_ACCOUNT_BURST = 5_000
# WAF rate-based rule limit: api_limits.WAF_MIN_LIMIT to WAF_MAX_LIMIT per 5-minute window.

# --- RDS for PostgreSQL ------------------------------------------------------------------------
# "Quotas and constraints for Amazon RDS", maximum number of database connections, PostgreSQL:
# the default max_connections is LEAST({DBInstanceClassMemory/9531392}, 5000).
PG_BYTES_PER_CONNECTION = 9_531_392
PG_MAX_CONNECTIONS_CAP = 5_000
# DBInstanceClassMemory is the class's memory less what RDS keeps for itself, which AWS does not
# publish per class: estimated as 0.979 x memory - 205 MiB, fitted to the max_connections RDS
# reports on db.t2.small (198), db.t2.medium (413), db.m4.large (856) and db.r4.large (1,660).
CLASS_MEMORY_SHARE = 0.979
CLASS_MEMORY_RESERVED_MIB = 205
# PostgreSQL keeps superuser_reserved_connections (3) and RDS rds.rds_superuser_reserved_connections
# (2) of max_connections for administrators.
PG_SUPERUSER_RESERVED = 5
# RDS Proxy ("RDS Proxy connection considerations"): MaxConnectionsPercent 1 to 100 (default
# 100) of max_connections; ConnectionBorrowTimeout 0 to 3,600 s (default 120 s).
PROXY_MAX_CONNECTIONS_PERCENT_RANGE = (1, 100)
PROXY_BORROW_TIMEOUT_RANGE = (0, 3_600)

# --- Stripe ("Rate limits", docs.stripe.com/rate-limits) ---------------------------------------
# Live mode: 100 read and 100 write operations per second per account; sandbox 25 and 25. Each
# API endpoint (e.g. POST /v1/payment_intents) has a default limit of 25 requests per second on
# top, and counts against the global limit. Increases are asked of Stripe Support, at least six
# weeks ahead for a large one.
STRIPE_LIVE_READS_PER_S = 100
STRIPE_LIVE_WRITES_PER_S = 100
STRIPE_ENDPOINT_PER_S = 25
STRIPE_INCREASE_LEAD_WEEKS = 6


@dataclass(frozen=True)
class InstanceClass:
    name: str  # as cdk.json's database.instance_type spells it (without "db.")
    vcpus: int
    memory_gib: float
    usd_per_hour: float  # single-AZ, PostgreSQL, on demand, ap-southeast-1 (cost.py: prices)
    burstable: bool = False

    @property
    def max_connections(self) -> int:
        """RDS's default max_connections for PostgreSQL on this class (formula above)."""
        mib = self.memory_gib * 1024 * CLASS_MEMORY_SHARE - CLASS_MEMORY_RESERVED_MIB
        return min(int(mib * 1024 * 1024 // PG_BYTES_PER_CONNECTION), PG_MAX_CONNECTIONS_CAP)


# Graviton classes, cheapest first: the model picks the first that carries the rate. Prices:
# see cost.py (where they come from and how sure they are).
INSTANCE_CLASSES = (
    InstanceClass("t4g.micro", 2, 1, 0.024, burstable=True),
    InstanceClass("t4g.small", 2, 2, 0.048, burstable=True),
    InstanceClass("t4g.medium", 2, 4, 0.096, burstable=True),
    InstanceClass("m7g.large", 2, 8, 0.209),
    InstanceClass("m7g.xlarge", 4, 16, 0.418),
    InstanceClass("m7g.2xlarge", 8, 32, 0.836),
    InstanceClass("m7g.4xlarge", 16, 64, 1.672),
    InstanceClass("m7g.8xlarge", 32, 128, 3.344),
)


def instance_class(name: str) -> InstanceClass:
    for cls in INSTANCE_CLASSES:
        if cls.name == name:
            return cls
    known = ", ".join(c.name for c in INSTANCE_CLASSES)
    raise ValueError(
        f"database.instance_type {name!r} is not in the capacity model's classes ({known}): "
        "add it to infra/capacity/published.py with its vCPUs, memory and price"
    )


@dataclass(frozen=True)
class Item(Generic[T]):
    """A figure, how it was reached (with the numbers) and the published limit it respects."""

    value: T
    formula: str
    limit: str = ""
