"""Benchmark of the payment service on this machine, against the local stack.

    python -m tools.bench [--only a b …] [counts…]     (make bench)

Runs the sections (a) to (j) (listed in tools/bench/__init__.py, one module each), prints one
table and writes the same figures to ``.local/bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.stack.processes import rel
from local.stack.settings import load as load_local_settings
from tools.bench.authorize_overhead import bench_authorize_double, bench_authorize_localstripe
from tools.bench.cold_start import bench_cold_imports, bench_layer
from tools.bench.dbcost import bench_db_cost
from tools.bench.end_to_end import bench_end_to_end
from tools.bench.harness import (
    apply_env,
    ensure_stack,
    service_logs_to,
)
from tools.bench.outbox_drain import bench_outbox_drain
from tools.bench.report import Report
from tools.bench.storage import bench_storage
from tools.bench.throughput import THROUGHPUT_SETUPS, bench_throughput
from tools.bench.webhooks import bench_webhooks


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500, help="authorize commands for (a) and (b)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument("--end-to-end", type=int, default=50, help="commands for (c)")
    parser.add_argument("--import-runs", type=int, default=5)
    parser.add_argument("--orders", type=int, default=270, help="distinct orders for (g)")
    parser.add_argument("--copies", type=int, default=30, help="copies of orders for (g)")
    parser.add_argument("--drain-rate", type=float, default=20, help="authorize commands/s for (h)")
    parser.add_argument("--drain-outage", type=float, default=60, help="seconds the broker is down in (h)")
    parser.add_argument("--dbcost-commands", type=int, default=1500, help="authorize commands per run of (i)")
    parser.add_argument(
        "--dbcost-partitions", type=int, nargs="*", default=[3, 12], help="(i): partition counts"
    )
    parser.add_argument("--storage-orders", type=int, default=2000, help="orders for (j)")
    parser.add_argument(
        "--memory-mb", type=int, default=512, help="the authorize function's memory, for cost"
    )
    parser.add_argument(
        "--only", nargs="*", choices=list("abcdefghij"), help="run only these sections (default: all)"
    )
    parser.add_argument(
        "--setups", nargs="*", choices=THROUGHPUT_SETUPS, help="(g): only these Stripe set-ups (default: all)"
    )
    args = parser.parse_args(argv)

    ensure_stack()
    apply_env()
    local = load_local_settings()
    out = local.state_dir / "bench"
    report = Report()
    from payments_core.config import get_settings

    sections: dict[str, Callable[[], None]] = {
        "a": lambda: bench_authorize_double(report, args.commands, args.batch_size),
        "b": lambda: bench_authorize_localstripe(report, args.commands, args.batch_size),
        "c": lambda: bench_end_to_end(report, args.end_to_end, timeout=30.0),
        "d": lambda: bench_webhooks(report, args.webhooks),
        "e": lambda: bench_cold_imports(report, args.import_runs),
        "f": lambda: bench_layer(report),
        "g": lambda: bench_throughput(
            report, args.orders, args.copies, args.memory_mb, get_settings().command_workers, args.setups
        ),
        "h": lambda: bench_outbox_drain(report, args.drain_rate, args.drain_outage),
        "i": lambda: bench_db_cost(
            report, args.dbcost_commands, get_settings().command_workers, tuple(args.dbcost_partitions)
        ),
        "j": lambda: bench_storage(report, args.storage_orders),
    }
    started = time.time()
    with service_logs_to(out / "service.log"):
        for name, step in sections.items():
            if not args.only or name in args.only:
                step()
    info = machine()
    print()
    print(f"make bench on {info['hostname']} ({info['cpu']}, {info['cpus']} CPUs, Python {info['python']})")
    print(report.table())
    results = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "machine": info,
        "parameters": vars(args),
        "results": {
            r.key: {
                "label": r.label,
                "value": r.value,
                "unit": r.unit,
                "target": r.target or None,
                "within_target": r.within,
                "note": r.note or None,
                **({"figures": r.figures} if r.figures else {}),
            }
            for r in report.rows
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {rel(out / 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
