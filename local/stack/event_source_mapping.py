"""The local Amazon MSK event source mapping: Kafka records in, a Lambda handler invoked.

Offsets are committed only after the handler succeeded.

What it reproduces of the AWS mapping:
- a consumer group on the topic, batches of up to ``batch_size`` records of one partition
  gathered for at most ``batch_window_ms``, delivered as one MSK-shaped event keyed by
  ``"<topic>-<partition>"`` (base64 key and value, headers as lists of byte values);
- at most one invocation in flight per partition, partitions invoked in parallel (each
  strictly in order), each invocation in its own "container": a child process that imported
  the handler once and is kept warm (replaced when it dies or outlives its timeout);
- offsets are committed only after the invocation returns; a handler exception, a timeout,
  a dead container or an unreadable response fails the whole batch;
- with ``batchItemFailures`` the mapping commits up to the lowest failed offset of each
  partition and re-delivers that record and everything after it in that partition, after a
  backoff, while other partitions go on;
- after ``max_retries`` re-deliveries the record is sent to the dead-letter topic with the
  reason in its headers (the on-failure destination of the AWS mapping) and the partition
  moves on;
- disabled and enabled again (``--no-enabled`` / ``--enabled``) by a pause file: while it exists
  the mapping lets its invocations end, commits them and leaves the consumer group, as the AWS
  mapping's pollers stop (``python -m tools.partitions pause|resume``).

A handler given as a callable (tests) runs in-process, on the partition's thread: with several
partitions it must be safe to call from several threads at once (the service's own handler
is not: its module state is one container's; give its file instead). A handler
file that does not exist yet is logged and retried, so the stack can start before the
function is written.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.stack.event_source_config import MappingConfig
from local.stack.lambda_runtime import (
    Container,
    ContainerStartError,
    FakeLambdaContext,
    Handler,
    function_name_of,
    handler_path,
)
from local.stack.msk_events import build_event, failed_offsets, partition_key

log = logging.getLogger("local.stack.event_source")


METADATA_MAX_AGE_MS = 3000
# kafka-python can leave a member that joined while its metadata did not list the topic yet with
# no partition for good, later metadata notwithstanding (about 1 mapping in 25 started on a topic
# just created; a record never delivered in CI). Unassigned this long while the topic has
# partitions, a mapping starts a fresh consumer, which joins again. Locally a mapping's group
# never has more members than its topic has partitions, so such a member is never idle by right.
LEFT_OUT_REJOIN_S = 10.0


@dataclass
class _Retry:
    offset: int
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""


@dataclass
class _Result:
    """What one partition's invocation came back with (handed from its thread to the
    consumer's thread, which alone commits and seeks)."""

    tp: Any
    generation: int  # the consumer it was dispatched by
    records: list[Any]
    response: Any = None
    error: str = ""  # empty when the handler returned
    not_invoked: bool = False  # the container could not start (the handler does not import)


@dataclass
class EventSourceMapping:
    config: MappingConfig
    handler: Handler | None = None  # given directly (tests: runs in-process) or a file in containers
    stop_event: threading.Event = field(default_factory=threading.Event)
    polling_since: float | None = None  # when the current Kafka poll began (see the watchdog)
    invocations: int = 0
    paused: bool = False
    _consumer: Any = None
    _producer: Any = None
    _retries: dict[Any, _Retry] = field(default_factory=dict)
    _last_missing_log: float = 0.0
    _generation: int = 0  # moves on when the consumer is replaced
    _busy: dict[Any, threading.Thread] = field(default_factory=dict)  # partition -> its invocation
    _results: queue.SimpleQueue[_Result] = field(default_factory=queue.SimpleQueue)
    _lane_done: threading.Event = field(default_factory=threading.Event)
    _containers: dict[Any, Container] = field(default_factory=dict)
    _unassigned_since: float | None = None  # see LEFT_OUT_REJOIN_S

    # -- lifecycle
    def stop(self) -> None:
        self.stop_event.set()

    def _ready(self) -> bool:
        """A handler to invoke: the given callable, or an existing handler file."""
        if self.handler is not None:
            return True
        path = handler_path(self.config.function)
        if path.is_file():
            return True
        now = time.monotonic()
        if now - self._last_missing_log > 60:
            log.warning(
                "handler %s does not exist yet; retrying every %.0fs",
                path,
                self.config.handler_missing_retry_s,
            )
            self._last_missing_log = now
        return False

    def container_pids(self) -> list[int]:
        """The live containers' process ids (fault drills kill them)."""
        return [pid for c in list(self._containers.values()) if (pid := c.pid) is not None]

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

        self._unassigned_since = None  # a new member: its join is timed afresh
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            client_id=f"local-esm-{function_name_of(self.config.function)}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.config.batch_size,
            max_poll_interval_ms=max(300_000, int(self.config.handler_timeout_s * 1000) * 2),
            # A member that joined before its metadata listed the topic is assigned nothing, and
            # partitions added by a grow go unread, until the metadata is refreshed (kafka-python's
            # default: every 5 minutes); refreshed every few seconds, either ends in a rejoin at once.
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
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
                if not self._ready():
                    self.stop_event.wait(self.config.handler_missing_retry_s)
                    continue
                if self._pause_requested():
                    self.stop_event.wait(0.2)
                    continue
                try:
                    if self._consumer is None:
                        self._connect()
                    self.run_once()
                    self._rejoin_if_left_out()
                except Exception:
                    # The broker went away mid-commit, a rebalance failed, ...: like the AWS
                    # poller, start a fresh consumer from the committed offsets (records whose
                    # commit was lost are delivered again; the handler is idempotent).
                    log.exception("consumer failed; reconnecting in %.1fs", self.config.retry_backoff_max_s)
                    self._close_quietly()
                    self.stop_event.wait(self.config.retry_backoff_max_s)
        finally:
            for thread in list(self._busy.values()):
                thread.join(timeout=5)
            self.close()
            for container in list(self._containers.values()):
                container.stop()

    def _pause_requested(self) -> bool:
        """Disabled: let the invocations in flight end and commit, then leave the group (no
        member left: nothing fetched, what is not committed stays in Kafka for the resume)."""
        if not (self.config.pause_file and os.path.exists(self.config.pause_file)):
            if self.paused:
                log.info("RESUMED: %s", self.config.topic)
                self.paused = False
            return False
        if not self.paused:
            for thread in list(self._busy.values()):
                thread.join(timeout=self.config.handler_timeout_s + 5)
            if self._consumer is not None:
                self._settle_finished()
            self._close_quietly()
            self.paused = True
            log.info("PAUSED: %s (group %s left)", self.config.topic, self.config.group_id)
        return True

    def _rejoin_if_left_out(self) -> None:
        """A fresh consumer for a member left with no partition (see LEFT_OUT_REJOIN_S)."""
        if self._consumer is None or self._consumer.assignment():
            self._unassigned_since = None
            return
        now = time.monotonic()
        if self._unassigned_since is None:
            self._unassigned_since = now
        if now - self._unassigned_since < LEFT_OUT_REJOIN_S:
            return
        self._unassigned_since = now  # looked: the next look (or rejoin) is a period away
        if not self._consumer.partitions_for_topic(self.config.topic):
            return  # nothing to be assigned yet: the topic is still being created
        log.warning(
            "no partition of %s assigned for %.0fs while it has some: joining again with a fresh consumer",
            self.config.topic,
            LEFT_OUT_REJOIN_S,
        )
        self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # a broken client may fail to close; it is dropped either way
            log.debug("close failed", exc_info=True)
        self._consumer = None
        self._producer = None
        self._retries.clear()
        # invocations still running belong to the old consumer: their results are dropped (the
        # new consumer reads from the committed offsets), but their partitions stay busy until
        # they end, so a partition never has two invocations at once
        self._generation += 1

    # -- batches
    def _gather(self) -> dict[Any, list[Any]]:
        self.polling_since = time.monotonic()
        try:
            return self._gather_records()
        finally:
            self.polling_since = None

    def _gather_records(self) -> dict[Any, list[Any]]:
        """Up to ``batch_size`` records per partition that is neither in flight nor backing off,
        gathered for at most ``batch_window_ms`` (less when a partition's batch is full)."""
        batch: dict[Any, list[Any]] = defaultdict(list)
        deadline = time.monotonic() + self.config.batch_window_ms / 1000
        size = self.config.batch_size
        while not self.stop_event.is_set():
            self._settle_finished()
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            polled = self._consumer.poll(timeout_ms=remaining_ms, max_records=size)
            now = time.monotonic()
            held_back = taken = False
            for tp, records in polled.items():
                retry = self._retries.get(tp)
                if tp in self._busy or (retry is not None and retry.not_before > now):
                    # In flight or backing off: hold the partition where it is by seeking back.
                    # (Seeking rather than pause()/resume(): with kafka-python 3.0.12 a resumed
                    # partition was seen never to be fetched again.)
                    self._consumer.seek(tp, records[0].offset)
                    held_back = True
                    continue
                room = size - len(batch[tp])
                batch[tp].extend(records[:room])
                taken = taken or room > 0
                if len(records) > room:
                    self._consumer.seek(tp, records[room].offset)
            if any(len(records) >= size for records in batch.values()):
                break
            if held_back and not taken:
                # only held-back partitions had data: wait for an invocation to end rather than
                # fetch the same records again at once
                self._lane_done.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                self._lane_done.clear()
        return {tp: records for tp, records in batch.items() if records}

    def run_once(self) -> None:
        """Settle the invocations that ended, then gather and start one per ready partition."""
        self._settle_finished()
        for tp, records in self._gather().items():
            self._dispatch(tp, records)

    def _dispatch(self, tp: Any, records: list[Any]) -> None:
        event = build_event({tp: records}, self.config.bootstrap_servers, self.config.cluster_arn)
        self.invocations += 1
        thread = threading.Thread(
            target=self._invoke,
            args=(tp, records, event, self._generation),
            name=f"invoke-{partition_key(tp.topic, tp.partition)}",
            daemon=True,
        )
        self._busy[tp] = thread
        thread.start()

    def _invoke(self, tp: Any, records: list[Any], event: dict[str, Any], generation: int) -> None:
        """On the partition's thread: one invocation, its result handed to the consumer's thread."""
        result = _Result(tp, generation, records)
        started = time.monotonic()
        try:
            if self.handler is not None:
                context = FakeLambdaContext(
                    function_name=function_name_of(self.config.function),
                    timeout_seconds=self.config.handler_timeout_s,
                )
                result.response = self.handler(event, context)
            else:
                container = self._containers.get(tp)
                if container is None:
                    container = self._containers[tp] = Container(
                        handler_path(self.config.function),
                        function_name_of(self.config.function),
                        env=self.config.function_env,
                    )
                result.response = container.invoke(event, self.config.handler_timeout_s)
        except ContainerStartError as exc:
            result.not_invoked, result.error = True, str(exc)
        except Exception as exc:
            result.error = f"handler raised {type(exc).__name__}: {exc}"
            log.error("invocation failed; the whole batch will be retried\n%s", traceback.format_exc())
        # like Lambda's REPORT line: what the invocation took (tools/bench reads it for cost)
        log.info(
            "REPORT %s records=%d duration_ms=%.1f",
            partition_key(tp.topic, tp.partition),
            len(records),
            (time.monotonic() - started) * 1000,
        )
        self._results.put(result)
        self._lane_done.set()

    def _settle_finished(self) -> None:
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return
            tp = result.tp
            self._busy.pop(tp, None)
            if result.generation != self._generation or self._consumer is None:
                continue  # dispatched by a replaced consumer: its records come again from the commit
            key = partition_key(tp.topic, tp.partition)
            if result.not_invoked:
                log.error("%s; retrying in %.0fs", result.error, self.config.handler_missing_retry_s)
                retry = self._retries.setdefault(tp, _Retry(offset=result.records[0].offset))
                retry.not_before = time.monotonic() + self.config.handler_missing_retry_s
                self._consumer.seek(tp, result.records[0].offset)
                continue
            error = result.error
            failures = None if error else failed_offsets(result.response, {key})
            if failures is None and not error:
                error = f"unreadable partial batch response: {str(result.response)[:300]}"
            if failures is None:  # the whole batch failed
                failures = {key: result.records[0].offset}
            self._settle({tp: result.records}, {key: tp}, failures, error or "reported in batchItemFailures")

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
