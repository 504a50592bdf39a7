"""An estimate of a stage's monthly bill at its target rate, item by item, with the prices used.

Prices: on-demand list prices for ap-southeast-1 (Singapore), USD, as known on 2026-12-03. This
repository cannot read AWS's price pages; the figures are those behind the idle-cost
table of docs/sizing-and-costs.md (MSK Serverless, NAT, RDS, RDS Proxy, WAF) and AWS's published rates (Lambda arm64, API
Gateway REST's first tier). Check them in the AWS Pricing Calculator before quoting a budget.

Traffic: the target rate is a peak. The month's orders are the rate x ``ORDERS_PER_MONTH_PER_RATE``,
issue 19's own ratio: 1,000 campuses make 50 million payments a year with a 500 orders/s peak,
50e6 / 12 / 500 = 8,333 orders a month per order/s of peak. Not included: the provisioned event
pollers (Lambda's event poller units, priced per hour: kafka.min_pollers run always), interface
endpoints, secrets, CloudWatch, data transfer out of AWS, and backups beyond the free share.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.capacity.api_limits import SAGA_CALLS_PER_ORDER, WEBHOOKS_PER_ORDER
from infra.capacity.sizing import COMMANDS_PER_ORDER, TOPICS, Sizing
from infra.config import StageConfig

REGION = "ap-southeast-1"
HOURS_PER_MONTH = 730
ORDERS_PER_MONTH_PER_RATE = 50_000_000 / 12 / 500

LAMBDA_GB_S_USD = 0.0000133334  # arm64
LAMBDA_REQUEST_USD = 0.20 / 1e6
# Measured: docs/benchmarks.md "Throughput", Lambda $ per 1,000 authorize commands at 512 MB, pool of 16
# ($0.00030), doubled for the deployed 1,024 MB.
LAMBDA_USD_PER_COMMAND = 0.00060 / 1000
WEBHOOK_GB_S = 0.5 * 0.05  # 512 MB x ~50 ms
API_GB_S = 0.5 * 0.1  # 512 MB x ~100 ms (api_limits.API_SECONDS_PER_REQUEST)

MSK_CLUSTER_HOUR_USD = 0.75
MSK_PARTITION_HOUR_USD = 0.0015
MSK_GB_IN_USD = 0.10
MSK_GB_OUT_USD = 0.05
MSK_GB_MONTH_USD = 0.10
KB_PER_ORDER_IN = 6.0  # 2 commands + ~4 events, ~1 KB each
KB_PER_ORDER_OUT = 12.0  # read by this service and by the saga

RDS_GB_MONTH_USD = 0.138  # gp2/gp3 storage, per AZ copy
PROXY_VCPU_HOUR_USD = 0.018
PROXY_MIN_VCPUS = 2

APIGW_REST_PER_MILLION_USD = 3.50  # first 333 million a month
WAF_ACL_MONTH_USD = 5.0
WAF_RULE_MONTH_USD = 1.0
WAF_RULES = 4
WAF_PER_MILLION_USD = 0.60

NAT_HOUR_USD = 0.059
NAT_GB_USD = 0.059
KB_PER_ORDER_NAT = 3 * 5.0  # three Stripe calls of ~5 KB (create, capture, transfer), through the NAT gateway


@dataclass(frozen=True)
class CostLine:
    item: str
    usd: float
    formula: str


def monthly_cost(config: StageConfig, plan: Sizing) -> list[CostLine]:
    orders = plan.rate * ORDERS_PER_MONTH_PER_RATE
    p, db = plan.partitions.value, plan.database.value
    azs = 2 if config.database.multi_az else 1
    webhooks, saga = WEBHOOKS_PER_ORDER * orders, SAGA_CALLS_PER_ORDER * orders
    gb_in, gb_out = orders * KB_PER_ORDER_IN / 1e6, orders * KB_PER_ORDER_OUT / 1e6
    lines = [
        CostLine(
            "Lambda",
            orders * COMMANDS_PER_ORDER * LAMBDA_USD_PER_COMMAND
            + (webhooks * WEBHOOK_GB_S + saga * API_GB_S) * LAMBDA_GB_S_USD
            + (webhooks + saga) * LAMBDA_REQUEST_USD,
            f"{orders:,.0f} orders: {COMMANDS_PER_ORDER} commands x ${LAMBDA_USD_PER_COMMAND * 1000:g}/1,000 "
            f"(measured) + webhooks and API calls x GB-s x ${LAMBDA_GB_S_USD} + ${LAMBDA_REQUEST_USD * 1e6:.2f}/M",
        ),
        CostLine(
            "MSK Serverless" if not config.kafka.cluster_arn else "MSK (imported: partitions only)",
            (0 if config.kafka.cluster_arn else HOURS_PER_MONTH * MSK_CLUSTER_HOUR_USD)
            + TOPICS * p * HOURS_PER_MONTH * MSK_PARTITION_HOUR_USD
            + gb_in * MSK_GB_IN_USD
            + gb_out * MSK_GB_OUT_USD
            + gb_in * MSK_GB_MONTH_USD,
            f"{HOURS_PER_MONTH} h x ${MSK_CLUSTER_HOUR_USD} + {TOPICS * p} partitions x ${MSK_PARTITION_HOUR_USD}/h "
            f"+ {gb_in:.1f} GB in x ${MSK_GB_IN_USD} + {gb_out:.1f} GB out x ${MSK_GB_OUT_USD} + storage",
        ),
        CostLine(
            f"RDS db.{db.name}" + (" Multi-AZ" if azs == 2 else ""),
            azs
            * (db.usd_per_hour * HOURS_PER_MONTH + config.database.allocated_storage_gb * RDS_GB_MONTH_USD),
            f"{azs} x ({HOURS_PER_MONTH} h x ${db.usd_per_hour} + {config.database.allocated_storage_gb} GB "
            f"x ${RDS_GB_MONTH_USD})",
        ),
        CostLine(
            "RDS Proxy",
            max(PROXY_MIN_VCPUS, db.vcpus) * HOURS_PER_MONTH * PROXY_VCPU_HOUR_USD,
            f"max({PROXY_MIN_VCPUS}, {db.vcpus} vCPU of the instance) x {HOURS_PER_MONTH} h x ${PROXY_VCPU_HOUR_USD}",
        ),
        CostLine(
            "API Gateway (REST)",
            (webhooks + saga) / 1e6 * APIGW_REST_PER_MILLION_USD,
            f"({WEBHOOKS_PER_ORDER} webhooks + {SAGA_CALLS_PER_ORDER} saga calls) x {orders:,.0f} "
            f"x ${APIGW_REST_PER_MILLION_USD}/M (first tier)",
        ),
        CostLine(
            "WAF",
            WAF_ACL_MONTH_USD + WAF_RULES * WAF_RULE_MONTH_USD + webhooks / 1e6 * WAF_PER_MILLION_USD,
            f"${WAF_ACL_MONTH_USD:g} + {WAF_RULES} rules x ${WAF_RULE_MONTH_USD:g} + {webhooks / 1e6:.1f} M "
            f"requests x ${WAF_PER_MILLION_USD}",
        ),
        CostLine(
            "NAT gateways",
            0
            if config.network.imported
            else config.network.nat_gateways * HOURS_PER_MONTH * NAT_HOUR_USD
            + orders * KB_PER_ORDER_NAT / 1e6 * NAT_GB_USD,
            f"{config.network.nat_gateways} x {HOURS_PER_MONTH} h x ${NAT_HOUR_USD} + "
            f"{orders * KB_PER_ORDER_NAT / 1e6:.0f} GB (Stripe) x ${NAT_GB_USD}",
        ),
    ]
    return lines
