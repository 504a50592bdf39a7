"""The local MSK event source mapping's settings and its pause file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from local.stack.settings import (
    AWS_ACCOUNT_ID,
    AWS_REGION,
    DEAD_LETTER_TOPIC,
    PAYMENT_COMMANDS_TOPIC,
    client_env,
)
from local.stack.settings import load as load_settings


def pause_file_path() -> Path:
    """The stack's mapping is disabled while this file exists (tools/partitions.py writes it)."""
    return Path(os.environ.get("LOCAL_ESM_PAUSE_FILE") or load_settings().state_dir / "event-source.paused")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


@dataclass
class MappingConfig:
    function: str = "authorize_payment"  # name under functions/ or a path to an app.py
    topic: str = PAYMENT_COMMANDS_TOPIC
    group_id: str = "local-esm-authorize_payment"
    bootstrap_servers: str = "127.0.0.1:9092"
    batch_size: int = 100
    batch_window_ms: int = 500
    # re-deliveries of a failing record before it is dead-lettered: with the backoff below,
    # about three minutes, so a database or broker restart is ridden out, not dead-lettered
    max_retries: int = 20
    retry_backoff_s: float = 0.5  # doubled on each retry of the same record
    retry_backoff_max_s: float = 10.0
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    handler_timeout_s: float = 60.0
    handler_missing_retry_s: float = 5.0
    # the function's own environment in its containers, as the deployment would set it: locally
    # Stripe is localstripe (one core, about 15 requests/s) in test mode (25/s), so few Stripe
    # requests in flight per container (STRIPE_MAX_IN_FLIGHT; the service's default is 16)
    function_env: dict[str, str] = field(default_factory=lambda: {"STRIPE_MAX_IN_FLIGHT": "3"})
    cluster_arn: str = f"arn:aws:kafka:{AWS_REGION}:{AWS_ACCOUNT_ID}:cluster/campusg-local/00000000-0000-0000-0000-000000000000-1"
    pause_file: str = ""  # while this file exists the mapping is disabled (empty: never)

    @classmethod
    def from_env(cls) -> MappingConfig:
        env = client_env()
        return cls(
            function=os.environ.get("LOCAL_ESM_FUNCTION") or "authorize_payment",
            topic=os.environ.get("LOCAL_ESM_TOPIC") or PAYMENT_COMMANDS_TOPIC,
            group_id=os.environ.get("LOCAL_ESM_GROUP_ID") or "local-esm-authorize_payment",
            bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or env["KAFKA_BOOTSTRAP_SERVERS"],
            batch_size=env_int("LOCAL_ESM_BATCH_SIZE", 100),
            batch_window_ms=env_int("LOCAL_ESM_BATCH_WINDOW_MS", 500),
            max_retries=env_int("LOCAL_ESM_MAX_RETRIES", 20),
            retry_backoff_s=env_float("LOCAL_ESM_RETRY_BACKOFF_S", 0.5),
            retry_backoff_max_s=env_float("LOCAL_ESM_RETRY_BACKOFF_MAX_S", 10.0),
            dead_letter_topic=os.environ.get("DEAD_LETTER_TOPIC") or DEAD_LETTER_TOPIC,
            handler_timeout_s=env_float("LOCAL_ESM_HANDLER_TIMEOUT_S", 60.0),
            function_env={"STRIPE_MAX_IN_FLIGHT": os.environ.get("STRIPE_MAX_IN_FLIGHT") or "3"},
            pause_file=str(pause_file_path()),
        )
