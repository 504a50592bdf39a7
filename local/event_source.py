"""A local Amazon MSK event source mapping: Kafka records in, Lambda handler invoked, offsets
committed only after the handler succeeded.

    python -m local.event_source            (started by `make local-up`)

What it reproduces of the AWS mapping:
- a consumer group on the topic, batches of up to ``batch_size`` records gathered for at most
  ``batch_window_ms``, delivered as one MSK-shaped event keyed by ``"<topic>-<partition>"``
  (base64 key and value, headers as lists of byte values);
- offsets are committed only after the invocation returns; a handler exception or an
  unreadable response fails the whole batch;
- with ``batchItemFailures`` the mapping commits up to the lowest failed offset of each
  partition and re-delivers that record and everything after it in that partition, after a
  backoff, while other partitions go on;
- after ``max_retries`` re-deliveries the record is sent to the dead-letter topic with the
  reason in its headers (the on-failure destination of the AWS mapping) and the partition
  moves on.

The handler module is imported once, like a warm container. A handler file that does not exist
yet is logged and retried, so the stack can start before the function is written.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.lambda_runtime import FakeLambdaContext, Handler, function_name_of, handler_path, load_handler
from local.settings import AWS_ACCOUNT_ID, AWS_REGION, DEAD_LETTER_TOPIC, PAYMENT_COMMANDS_TOPIC, client_env

log = logging.getLogger("local.event_source")

TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
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
    cluster_arn: str = f"arn:aws:kafka:{AWS_REGION}:{AWS_ACCOUNT_ID}:cluster/campusg-local/00000000-0000-0000-0000-000000000000-1"

    @classmethod
    def from_env(cls) -> MappingConfig:
        env = client_env()
        return cls(
            function=os.environ.get("LOCAL_ESM_FUNCTION") or "authorize_payment",
            topic=os.environ.get("LOCAL_ESM_TOPIC") or PAYMENT_COMMANDS_TOPIC,
            group_id=os.environ.get("LOCAL_ESM_GROUP_ID") or "local-esm-authorize_payment",
            bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or env["KAFKA_BOOTSTRAP_SERVERS"],
            batch_size=_env_int("LOCAL_ESM_BATCH_SIZE", 100),
            batch_window_ms=_env_int("LOCAL_ESM_BATCH_WINDOW_MS", 500),
            max_retries=_env_int("LOCAL_ESM_MAX_RETRIES", 20),
            retry_backoff_s=_env_float("LOCAL_ESM_RETRY_BACKOFF_S", 0.5),
            retry_backoff_max_s=_env_float("LOCAL_ESM_RETRY_BACKOFF_MAX_S", 10.0),
            dead_letter_topic=os.environ.get("DEAD_LETTER_TOPIC") or DEAD_LETTER_TOPIC,
            handler_timeout_s=_env_float("LOCAL_ESM_HANDLER_TIMEOUT_S", 60.0),
        )


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def record_to_msk(record: Any) -> dict[str, Any]:
    """One kafka-python ConsumerRecord in the shape the MSK event source delivers it."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES.get(record.timestamp_type, "CREATE_TIME"),
        "key": base64.b64encode(record.key).decode() if record.key is not None else None,
        "value": base64.b64encode(record.value or b"").decode(),
        "headers": [{name: list(value or b"")} for name, value in (record.headers or [])],
    }


def build_event(batch: dict[Any, list[Any]], bootstrap_servers: str, cluster_arn: str) -> dict[str, Any]:
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": cluster_arn,
        "bootstrapServers": bootstrap_servers,
        "records": {
            partition_key(tp.topic, tp.partition): [record_to_msk(r) for r in records]
            for tp, records in batch.items()
        },
    }


def failed_offsets(response: Any, keys: set[str]) -> dict[str, int] | None:
    """Lowest failed offset per partition key from a partial batch response.

    ``{}`` means full success; ``None`` means the response is unreadable, which AWS treats as
    a failure of the whole batch.
    """
    if response is None or not isinstance(response, dict) or "batchItemFailures" not in response:
        return {}
    items = response.get("batchItemFailures")
    if items is None:
        return {}
    if not isinstance(items, list):
        return None
    lowest: dict[str, int] = {}
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, dict):
            return None
        key, offset = ident.get("partition"), ident.get("offset")
        try:
            offset = int(offset)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if key not in keys:
            return None
        lowest[key] = min(offset, lowest.get(str(key), offset))
    return lowest


@dataclass
class _Retry:
    offset: int
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""


@dataclass
class EventSourceMapping:
    config: MappingConfig
    handler: Handler | None = None  # given directly (tests) or loaded from config.function
    stop_event: threading.Event = field(default_factory=threading.Event)
    polling_since: float | None = None  # when the current Kafka poll began (see the watchdog)
    invocations: int = 0
    _consumer: Any = None
    _producer: Any = None
    _retries: dict[Any, _Retry] = field(default_factory=dict)
    _last_missing_log: float = 0.0

    # -- lifecycle
    def stop(self) -> None:
        self.stop_event.set()

    def _load(self) -> Handler | None:
        if self.handler is not None:
            return self.handler
        path = handler_path(self.config.function)
        if not path.is_file():
            now = time.monotonic()
            if now - self._last_missing_log > 60:
                log.warning(
                    "handler %s does not exist yet; retrying every %.0fs",
                    path,
                    self.config.handler_missing_retry_s,
                )
                self._last_missing_log = now
            return None
        try:
            self.handler = load_handler(path)
        except Exception:
            log.error(
                "importing %s failed; retrying in %.0fs\n%s",
                path,
                self.config.handler_missing_retry_s,
                traceback.format_exc(),
            )
            return None
        log.info("handler %s loaded (cold start)", path)
        return self.handler

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        mapping = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                for tp in revoked:
                    mapping._retries.pop(tp, None)

            def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))

        self._consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            client_id=f"local-esm-{function_name_of(self.config.function)}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.config.batch_size,
            max_poll_interval_ms=max(300_000, int(self.config.handler_timeout_s * 1000) * 2),
        )
        self._consumer.subscribe([self.config.topic], listener=Listener())
        self._producer = KafkaProducer(bootstrap_servers=self.config.bootstrap_servers, acks="all")

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        if on_ready is not None:
            on_ready()
        try:
            while not self.stop_event.is_set():
                handler = self._load()
                if handler is None:
                    self.stop_event.wait(self.config.handler_missing_retry_s)
                    continue
                try:
                    if self._consumer is None:
                        self._connect()
                    self.run_once(handler)
                except Exception:
                    # The broker went away mid-commit, a rebalance failed, ...: like the AWS
                    # poller, start a fresh consumer from the committed offsets (records whose
                    # commit was lost are delivered again; the handler is idempotent).
                    log.exception("consumer failed; reconnecting in %.1fs", self.config.retry_backoff_max_s)
                    self._close_quietly()
                    self.stop_event.wait(self.config.retry_backoff_max_s)
        finally:
            self.close()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # a broken client may fail to close; it is dropped either way
            log.debug("close failed", exc_info=True)
        self._consumer = None
        self._producer = None
        self._retries.clear()

    # -- one batch
    def _gather(self) -> dict[Any, list[Any]]:
        self.polling_since = time.monotonic()
        try:
            return self._gather_records()
        finally:
            self.polling_since = None

    def _gather_records(self) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = defaultdict(list)
        count = 0
        deadline = time.monotonic() + self.config.batch_window_ms / 1000
        while count < self.config.batch_size and not self.stop_event.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            polled = self._consumer.poll(timeout_ms=remaining_ms, max_records=self.config.batch_size - count)
            now = time.monotonic()
            for tp, records in polled.items():
                retry = self._retries.get(tp)
                if retry is not None and retry.not_before > now:
                    # Backing off: hold the partition at its failed record. (Seeking back rather
                    # than pause()/resume(): with kafka-python 3.0.12 a resumed partition was
                    # seen never to be fetched again.)
                    self._consumer.seek(tp, retry.offset)
                    continue
                batch[tp].extend(records)
                count += len(records)
        return dict(batch)

    def run_once(self, handler: Handler) -> None:
        batch = self._gather()
        if not batch:
            return
        event = build_event(batch, self.config.bootstrap_servers, self.config.cluster_arn)
        keys = {partition_key(tp.topic, tp.partition): tp for tp in batch}
        context = FakeLambdaContext(
            function_name=function_name_of(self.config.function),
            timeout_seconds=self.config.handler_timeout_s,
        )
        self.invocations += 1
        error = ""
        try:
            response = handler(event, context)
            failures = failed_offsets(response, set(keys))
            if failures is None:
                error = f"unreadable partial batch response: {str(response)[:300]}"
        except Exception as exc:
            failures = None
            error = f"handler raised {type(exc).__name__}: {exc}"
            log.error("invocation failed; the whole batch will be retried\n%s", traceback.format_exc())
        if failures is None:  # the whole batch failed
            failures = {key: batch[tp][0].offset for key, tp in keys.items()}
        self._settle(batch, keys, failures, error or "reported in batchItemFailures")

    def _settle(
        self, batch: dict[Any, list[Any]], keys: dict[str, Any], failures: dict[str, int], error: str
    ) -> None:
        from kafka.structs import OffsetAndMetadata

        commits: dict[Any, Any] = {}
        for key, tp in keys.items():
            records = batch[tp]
            if key not in failures:
                commits[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                self._retries.pop(tp, None)
                continue
            first_failed = max(failures[key], records[0].offset)
            retry = self._retries.get(tp)
            if retry is None or retry.offset != first_failed:
                retry = _Retry(offset=first_failed)
                self._retries[tp] = retry
            retry.attempts += 1
            retry.last_error = error
            failed_record = next((r for r in records if r.offset >= first_failed), None)
            if failed_record is not None and retry.attempts > self.config.max_retries:
                self._dead_letter(failed_record, retry)
                commits[tp] = OffsetAndMetadata(failed_record.offset + 1, "", -1)
                self._consumer.seek(tp, failed_record.offset + 1)
                self._retries.pop(tp, None)
                continue
            # checkpoint before the failure and replay from it, as the AWS mapping does
            commits[tp] = OffsetAndMetadata(first_failed, "", -1)
            self._consumer.seek(tp, first_failed)
            delay = min(
                self.config.retry_backoff_s * 2 ** (retry.attempts - 1), self.config.retry_backoff_max_s
            )
            retry.not_before = time.monotonic() + delay
            log.warning(
                "%s offset %d failed (attempt %d of %d); retrying in %.1fs: %s",
                key,
                first_failed,
                retry.attempts,
                self.config.max_retries + 1,
                delay,
                error,
            )
        if commits:
            self._consumer.commit(offsets=commits)

    def _dead_letter(self, record: Any, retry: _Retry) -> None:
        reason = (
            f"handler failed {retry.attempts} times "
            f"(max retries {self.config.max_retries}): {retry.last_error}"
        )
        headers = [
            *(record.headers or []),
            ("x-dead-letter-reason", reason.encode()[:1000]),
            ("x-original-topic", record.topic.encode()),
            ("x-original-partition", str(record.partition).encode()),
            ("x-original-offset", str(record.offset).encode()),
            ("x-attempts", str(retry.attempts).encode()),
            ("x-function", function_name_of(self.config.function).encode()),
        ]
        self._producer.send(
            self.config.dead_letter_topic, key=record.key, value=record.value, headers=headers
        ).get(timeout=10)
        log.error(
            "%s offset %d sent to %s: %s",
            partition_key(record.topic, record.partition),
            record.offset,
            self.config.dead_letter_topic,
            reason,
        )


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s event-source %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = MappingConfig.from_env()
    mapping = EventSourceMapping(config)
    signal.signal(signal.SIGTERM, lambda *_: mapping.stop())
    signal.signal(signal.SIGINT, lambda *_: mapping.stop())

    def ready() -> None:
        log.info(
            "READY: %s -> %s (group %s, batch %d / %d ms, max retries %d, dead letters to %s)",
            config.topic,
            handler_path(config.function),
            config.group_id,
            config.batch_size,
            config.batch_window_ms,
            config.max_retries,
            config.dead_letter_topic,
        )

    _watch_for_hung_polls(mapping, _env_float("LOCAL_ESM_POLL_HANG_S", 60.0))
    mapping.run(on_ready=ready)
    log.info("stopped")
    return 0


def _watch_for_hung_polls(mapping: EventSourceMapping, limit_s: float) -> None:
    """kafka-python 3.0 has been seen to block forever inside KafkaConsumer.poll (in its fetcher,
    after pausing and resuming partitions around a broker restart). Offsets are committed only
    after the handler succeeds, so starting afresh loses nothing: re-execute this process (same
    pid, so the stack still knows it) when a poll outlives ``limit_s``."""

    def watch() -> None:
        while not mapping.stop_event.wait(5):
            since = mapping.polling_since
            if since is not None and time.monotonic() - since > limit_s:
                log.error("a Kafka poll has been blocked for %.0f s: restarting the mapping", limit_s)
                logging.shutdown()
                os.execv(sys.executable, [sys.executable, "-u", "-m", "local.event_source", *sys.argv[1:]])  # noqa: S606 - re-executes itself

    threading.Thread(target=watch, name="poll-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
