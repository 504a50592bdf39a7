"""Fault drills (issue 7): a stream of authorize_payment commands in flight through the local
MSK event-source mapping while a part of the stack fails, then counts.

Each drill produces its own commands (distinct orders, plus a few exact duplicates) to
payment_commands with no key, as the saga does, breaks one component mid-stream, restores it,
waits (bounded) until every order is settled, and asserts:

- every order has exactly one payment row and at most one PaymentIntent in localstripe;
- every payment's final status was announced at least once on payment_events;
- no event announces a state the payment never had (nor another payment of the order);
- nothing for those orders waits in the outbox without a recorded last_error, and no
  dead-letter message for them lacks a reason header.

Every component a drill stops is restarted in a ``finally`` (and checked by a fixture), so the
shared stack is left as found.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import CARD_DECLINED_ON_CHARGE, CARD_OK, Card, authorize_command

from local.doubles.strict_stripe import StrictStripe
from local.stack import control as stack
from local.stack.settings import DEAD_LETTER_TOPIC, PAYMENT_COMMANDS_TOPIC, PAYMENT_EVENTS_TOPIC, client_env

pytestmark = pytest.mark.integration

COMMANDS_PER_DRILL = int(os.environ.get("FAULT_DRILL_COMMANDS", "200"))
DUPLICATES_PER_DRILL = 10  # of COMMANDS_PER_DRILL, exact byte copies of earlier commands
SETTLE_TIMEOUT_S = float(os.environ.get("FAULT_DRILL_SETTLE_TIMEOUT_S", "240"))
PRODUCE_TIMEOUT_S = 180.0
KAFKA_OUTAGE_S = float(os.environ.get("FAULT_DRILL_KAFKA_OUTAGE_S", "3"))  # down, beyond stop and start
DB_OUTAGE_S = float(os.environ.get("FAULT_DRILL_DB_OUTAGE_S", "0"))
STRIPE_500_S = float(os.environ.get("FAULT_DRILL_STRIPE_500_S", "8"))
EVENT_TYPE_OF_STATUS = {
    "AUTHORIZED": "payment.authorized",
    "FAILED": "payment.failed",
    "REQUIRES_ACTION": "payment.requires_action",
}
# Events each final status may have been preceded by, with these cards (no 3-D Secure card).
ALLOWED_EVENT_TYPES = {
    "AUTHORIZED": {"payment.authorized"},
    "FAILED": {"payment.failed"},
    "REQUIRES_ACTION": {"payment.requires_action"},
}
ESM_RETRY = re.compile(rb"offset \d+ failed \(attempt")
ESM_DEAD_LETTER = re.compile(rb"offset \d+ sent to ")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def stack_restored() -> Iterator[None]:
    """Every component running before the drill is running after it, whatever happened."""
    before = {c.name for c in stack.components() if c.running_pid() is not None}
    yield
    missing = sorted(name for name in before if not stack.is_running(name))
    if missing:
        stack.up(missing)
    still = [name for name in before if not stack.is_running(name)]
    assert not still, f"could not restore {still} after the drill: run `make local-up`"


@pytest.fixture
def drill(
    new_card: Callable[[str], Card],
    make_pg_connection: Callable[..., Any],
    localstripe_client: Any,
    stack_restored: None,
    local_stack: Any,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[[str], Drill]]:
    made: list[Drill] = []

    def say(text: str) -> None:  # shown in the run log even when pytest captures output
        with capsys.disabled():
            print(text, flush=True)

    def factory(name: str) -> Drill:
        cards = [new_card(CARD_OK) for _ in range(3)] + [new_card(CARD_DECLINED_ON_CHARGE)]
        d = Drill(name, cards, make_pg_connection(), localstripe_client, say)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close()


# --- the drill harness ------------------------------------------------------------------------


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    unsettled: list[str] = field(default_factory=list)
    lost_without_row: list[str] = field(default_factory=list)


class Drill:
    """One drill's commands, its stream into Kafka and the checks on what came out."""

    def __init__(
        self, name: str, cards: list[Card], pg: Any, stripe: Any, say: Callable[[str], None] = print
    ) -> None:
        self.name = name
        self.say = say
        self.cards = cards
        self.pg = pg
        self.stripe = stripe
        self.card_of: dict[str, Card] = {}
        self.commands: list[bytes] = []
        distinct = COMMANDS_PER_DRILL - DUPLICATES_PER_DRILL
        originals: list[bytes] = []
        for i in range(distinct):
            card = cards[i % len(cards)]
            cmd = authorize_command(card, amount=1000 + i)
            self.card_of[cmd["payload"]["order_id"]] = card
            originals.append(json.dumps(cmd).encode())
        # exact duplicates, each sent some way after its original
        step = max(1, distinct // DUPLICATES_PER_DRILL)
        dup_of = {i * step + step // 2: originals[i * step] for i in range(DUPLICATES_PER_DRILL)}
        for i, raw in enumerate(originals):
            self.commands.append(raw)
            if i in dup_of:
                self.commands.append(dup_of[i])
        self.commands.extend(dup_of[i] for i in sorted(dup_of) if i >= len(originals))
        self.orders = list(self.card_of)
        self.produced = 0
        self.produce_errors = 0
        self.halfway = threading.Event()
        self.done_producing = threading.Event()
        self._producer_thread: threading.Thread | None = None
        self._producer_failure: BaseException | None = None
        self.start_offsets: dict[str, dict[int, int]] = {}
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._event_consumer: Any = None
        self.started = time.monotonic()

    # -- Kafka helpers
    @staticmethod
    def _consumer() -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            bootstrap_servers=client_env()["KAFKA_BOOTSTRAP_SERVERS"],
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
        )

    def mark_offsets(self) -> None:
        """Where payment_events and the dead-letter topic end before the drill: only what comes
        after is read."""
        from kafka import TopicPartition

        consumer = self._consumer()
        try:
            for topic in (PAYMENT_EVENTS_TOPIC, DEAD_LETTER_TOPIC):
                parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
                ends = consumer.end_offsets(parts)
                self.start_offsets[topic] = {tp.partition: ends[tp] for tp in parts}
        finally:
            consumer.close()

    def start_stream(self, per_second: float = 25.0) -> None:
        """Produce every command in a background thread at about ``per_second``, retrying each
        one until the broker takes it (a copy the broker took before a timeout is just one
        more at-least-once delivery)."""
        self.mark_offsets()

        def run() -> None:
            from kafka import KafkaProducer

            producer: Any = None
            try:
                deadline = time.monotonic() + PRODUCE_TIMEOUT_S
                for raw in self.commands:
                    while True:
                        try:
                            if producer is None:
                                producer = KafkaProducer(
                                    bootstrap_servers=client_env()["KAFKA_BOOTSTRAP_SERVERS"],
                                    acks="all",
                                    max_block_ms=3000,
                                    request_timeout_ms=5000,
                                )
                            producer.send(PAYMENT_COMMANDS_TOPIC, value=raw).get(timeout=10)
                            break
                        except Exception:
                            self.produce_errors += 1
                            if time.monotonic() > deadline:
                                raise
                            if producer is not None:
                                with contextlib.suppress(Exception):  # a broken producer: start afresh
                                    producer.close(timeout=1)
                                producer = None
                            time.sleep(0.5)
                    self.produced += 1
                    if self.produced == len(self.commands) // 2:
                        self.halfway.set()
                    time.sleep(1.0 / per_second)
            except BaseException as exc:  # reported by wait_produced
                self._producer_failure = exc
            finally:
                self.halfway.set()
                self.done_producing.set()
                if producer is not None:
                    producer.close(timeout=5)

        self.started = time.monotonic()
        self._producer_thread = threading.Thread(target=run, name=f"drill-{self.name}-producer", daemon=True)
        self._producer_thread.start()

    def wait_halfway(self) -> None:
        assert self.halfway.wait(120), f"{self.name}: the stream did not reach halfway within 120s"

    def wait_produced(self) -> None:
        finished = self.done_producing.wait(PRODUCE_TIMEOUT_S + 30)
        assert finished, (
            f"{self.name}: producing the commands did not finish within {PRODUCE_TIMEOUT_S + 30:.0f}s"
        )
        assert self._producer_failure is None, (
            f"{self.name}: could only produce {self.produced} of {len(self.commands)} commands: "
            f"{self._producer_failure!r}"
        )

    def _read_events(self) -> None:
        from kafka import TopicPartition

        if self._event_consumer is None:
            consumer = self._consumer()
            parts = [
                TopicPartition(PAYMENT_EVENTS_TOPIC, p) for p in self.start_offsets[PAYMENT_EVENTS_TOPIC]
            ]
            consumer.assign(parts)
            for tp in parts:
                consumer.seek(tp, self.start_offsets[PAYMENT_EVENTS_TOPIC][tp.partition])
            self._event_consumer = consumer
        mine = set(self.orders)
        while True:
            polled = self._event_consumer.poll(timeout_ms=500, max_records=2000)
            if not polled:
                return
            for records in polled.values():
                for message in records:
                    key = message.key.decode() if message.key is not None else None
                    if key in mine:
                        self.events[key].append(json.loads(message.value))

    def dead_letters(self) -> list[tuple[str, dict[str, bytes]]]:
        """(order_id, headers) of every dead-letter message written since the drill began for
        one of its orders."""
        from kafka import TopicPartition

        consumer = self._consumer()
        found: list[tuple[str, dict[str, bytes]]] = []
        try:
            parts = [TopicPartition(DEAD_LETTER_TOPIC, p) for p in self.start_offsets[DEAD_LETTER_TOPIC]]
            consumer.assign(parts)
            ends = consumer.end_offsets(parts)
            for tp in parts:
                consumer.seek(tp, self.start_offsets[DEAD_LETTER_TOPIC][tp.partition])
            mine = set(self.orders)
            while any(consumer.position(tp) < ends[tp] for tp in parts):
                polled = consumer.poll(timeout_ms=1000)
                if not polled:
                    continue
                for records in polled.values():
                    for message in records:
                        try:
                            order_id = json.loads(message.value)["payload"]["order_id"]
                        except (ValueError, KeyError, TypeError):
                            order_id = None
                        if order_id in mine:
                            found.append((order_id, {k: v for k, v in (message.headers or [])}))
        finally:
            consumer.close()
        return found

    # -- database and Stripe
    def _rows(self) -> dict[str, list[dict[str, Any]]]:
        rows = self.pg.run(
            "SELECT order_id, payment_id::text AS payment_id, status, payment_intent_id,"
            " stripe_create_attempts FROM payments WHERE order_id = ANY(CAST(:o AS text[]))",
            o=self.orders,
        )
        names = [c["name"] for c in self.pg.columns]
        by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            record = dict(zip(names, row, strict=True))
            by_order[record["order_id"]].append(record)
        return by_order

    def _outbox(self) -> list[dict[str, Any]]:
        rows = self.pg.run(
            "SELECT order_id, event_type, published_at, attempts, last_error FROM outbox"
            " WHERE order_id = ANY(CAST(:o AS text[]))",
            o=self.orders,
        )
        names = [c["name"] for c in self.pg.columns]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _intents(self) -> dict[str, list[dict[str, Any]]]:
        by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
        mine = set(self.orders)
        for card in self.cards:
            starting_after: str | None = None
            while True:
                params: dict[str, Any] = {"customer": card.customer_id, "limit": 100}
                if starting_after:
                    params["starting_after"] = starting_after
                page = self.stripe.v1.payment_intents.list(params=params)
                for pi in page.data:
                    data = pi.to_dict()
                    order_id = (data.get("metadata") or {}).get("order_id")
                    if order_id in mine:
                        by_order[order_id].append(data)
                if not page.has_more or not page.data:
                    break
                starting_after = page.data[-1].id
        return by_order

    # -- the verdict
    def check(self, *, final: bool) -> Verdict:
        """Every assertion of the drill, as a list of problems (empty: all hold)."""
        self._read_events()
        rows = self._rows()
        outbox = self._outbox()
        v = Verdict()
        statuses: Counter[str] = Counter()
        for order_id in self.orders:
            found = rows.get(order_id, [])
            if len(found) != 1:
                v.problems.append(f"order {order_id}: {len(found)} payment rows, expected exactly 1")
                v.unsettled.append(order_id)
                continue
            row = found[0]
            statuses[row["status"]] += 1
            if row["status"] == "PENDING":
                v.problems.append(f"order {order_id}: still PENDING")
                v.unsettled.append(order_id)
                continue
            events = self.events.get(order_id, [])
            wanted = EVENT_TYPE_OF_STATUS.get(row["status"])
            announced = [
                e
                for e in events
                if e.get("type") == wanted
                and e["payload"].get("payment_id") == row["payment_id"]
                and e["payload"].get("status", row["status"]) == row["status"]
            ]
            if not announced:
                v.problems.append(
                    f"order {order_id}: final status {row['status']} never announced "
                    f"(events seen: {[e.get('type') for e in events]})"
                )
                v.unsettled.append(order_id)
            for e in events:
                if e.get("type") not in ALLOWED_EVENT_TYPES.get(row["status"], set()):
                    v.problems.append(
                        f"order {order_id}: {e.get('type')} announced, but the payment is "
                        f"{row['status']} and never had that state"
                    )
                if e["payload"].get("payment_id") != row["payment_id"]:
                    v.problems.append(
                        f"order {order_id}: event for payment {e['payload'].get('payment_id')}, "
                        f"but the order's payment is {row['payment_id']}"
                    )
            ids_by_type: dict[str, set[str]] = defaultdict(set)
            for e in events:
                ids_by_type[e.get("type")].add(e.get("event_id"))
            for event_type, ids in ids_by_type.items():
                if len(ids) > 1:
                    v.problems.append(
                        f"order {order_id}: {event_type} announced with {len(ids)} different event_ids"
                    )
        waiting = [r for r in outbox if r["published_at"] is None]
        waiting_without_reason = [r for r in waiting if not r["last_error"]]
        for r in waiting_without_reason:
            v.problems.append(
                f"order {r['order_id']}: {r['event_type']} waits in the outbox with no last_error"
            )
            if r["order_id"] not in v.unsettled:
                v.unsettled.append(r["order_id"])
        if waiting and not final:  # settled means sent, even when the reason is recorded
            v.unsettled.extend(r["order_id"] for r in waiting if r["order_id"] not in v.unsettled)
        intents: dict[str, list[dict[str, Any]]] = {}
        letters: list[tuple[str, dict[str, bytes]]] = []
        if final or not v.unsettled:
            intents = self._intents()
            for order_id, found_intents in intents.items():
                if len(found_intents) > 1:
                    v.problems.append(
                        f"order {order_id}: {len(found_intents)} PaymentIntents "
                        f"({[i['id'] for i in found_intents]}), expected at most 1"
                    )
                row_list = rows.get(order_id) or [{}]
                if (
                    row_list[0].get("payment_intent_id")
                    and found_intents
                    and row_list[0]["payment_intent_id"] not in {i["id"] for i in found_intents}
                ):
                    v.problems.append(f"order {order_id}: the row's PaymentIntent is not the one in Stripe")
        if final or v.unsettled:
            letters = self.dead_letters()
            for order_id, headers in letters:
                if not (headers.get("x-dead-letter-reason") or headers.get("dead_letter_reason")):
                    v.problems.append(f"order {order_id}: dead-letter message without a reason header")
            lettered = {order_id for order_id, _ in letters}
            v.lost_without_row = sorted(o for o in lettered if not rows.get(o))
        v.counts = {
            "commands": len(self.commands),
            "orders": len(self.orders),
            "produced": self.produced,
            "produce_retries": self.produce_errors,
            "rows": sum(len(r) for r in rows.values()),
            "statuses": dict(statuses),
            "intents": sum(len(i) for i in intents.values()) if intents else "-",
            "events": sum(len(e) for e in self.events.values()),
            "event_types": dict(Counter(e.get("type") for es in self.events.values() for e in es)),
            "outbox_rows": len(outbox),
            "outbox_publish_retries": sum(max(0, int(r["attempts"])) for r in outbox),
            "outbox_waiting": len(waiting),
            "stripe_create_attempts_over_1": sum(
                1 for rs in rows.values() for r in rs if int(r["stripe_create_attempts"]) > 1
            ),
            "dead_letters": len(letters),
        }
        return v

    def settle_and_assert(self, *, extra_counts: Callable[[], dict[str, Any]] | None = None) -> None:
        """Wait (bounded) until every order is settled, then assert everything with counts."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        verdict = self.check(final=False)
        last_print = 0.0
        while verdict.unsettled and time.monotonic() < deadline:
            # an order whose command went to the dead-letter topic before any row was written can
            # never settle: stop waiting once that is all that is left
            if verdict.lost_without_row and set(verdict.unsettled) <= set(verdict.lost_without_row):
                break
            if time.monotonic() - last_print > 15:
                self.say(
                    f"[{self.name}] waiting: {len(verdict.unsettled)} of {len(self.orders)} orders not settled "
                    f"after {time.monotonic() - self.started:.0f}s"
                )
                last_print = time.monotonic()
            time.sleep(1.0)
            verdict = self.check(final=False)
        settled_after = time.monotonic() - self.started
        timed_out = bool(verdict.unsettled)
        time.sleep(2.0)  # late duplicates of an event would arrive now
        verdict = self.check(final=True)
        counts = dict(verdict.counts, settled_after_s=round(settled_after, 1))
        if extra_counts is not None:
            counts.update(extra_counts())
        self.say(f"\n[{self.name}] " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        message = [f"{self.name}: {len(verdict.problems)} problem(s); counts: {counts}"]
        if timed_out:
            message.insert(
                0,
                f"{self.name}: {len(verdict.unsettled)} order(s) not settled within {SETTLE_TIMEOUT_S:.0f}s",
            )
        if verdict.lost_without_row:
            message.append(
                f"{len(verdict.lost_without_row)} command(s) were dead-lettered and have no payment "
                f"row (the saga is never answered): {verdict.lost_without_row[:5]}"
            )
        message.extend(verdict.problems[:25])
        assert not verdict.problems, "\n".join(message)
        assert counts["produced"] == len(self.commands)

    def close(self) -> None:
        if self._event_consumer is not None:
            self._event_consumer.close()
            self._event_consumer = None


def _log_counter(path: Path) -> Callable[[], dict[str, int]]:
    """Retries and dead letters the event-source mapping logged since now."""
    start = path.stat().st_size if path.exists() else 0

    def read() -> dict[str, int]:
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                text = fh.read()
            idle = round(time.time() - path.stat().st_mtime, 1)
        except OSError:
            return {"esm_retries": -1, "esm_dead_letters": -1}
        # a mapping that stopped logging while orders are unsettled is stuck, not slow
        return {
            "esm_retries": len(ESM_RETRY.findall(text)),
            "esm_dead_letters": len(ESM_DEAD_LETTER.findall(text)),
            "esm_log_idle_s": idle,
        }

    return read


def _esm_log() -> Path:
    from local.stack.settings import load

    return load().log_path("event-source")


def _require_event_source() -> None:
    if not stack.is_running("event-source"):
        pytest.fail("the local event-source mapping is not running: run `make local-up`", pytrace=False)


# --- the drills -------------------------------------------------------------------------------


def test_kafka_broker_restart_mid_stream(drill: Callable[[str], Drill]) -> None:
    """200 commands (190 orders + 10 exact duplicates); the broker is stopped halfway through
    the stream and started again; the stack's own event-source mapping must carry on."""
    _require_event_source()
    d = drill("kafka-restart")
    esm_pid = next(c for c in stack.components() if c.name == "event-source").running_pid()
    counter = _log_counter(_esm_log())
    d.start_stream()
    d.wait_halfway()
    try:
        stack.down(["kafka"])
        time.sleep(KAFKA_OUTAGE_S)
    finally:
        stack.up(["kafka"])
    d.wait_produced()
    survived = stack.is_running("event-source") and (
        next(c for c in stack.components() if c.name == "event-source").running_pid() == esm_pid
    )
    d.settle_and_assert(extra_counts=lambda: {**counter(), "esm_survived_restart": survived})
    assert survived, "the event-source mapping process did not survive the broker restart"


def test_postgres_restart_mid_stream(drill: Callable[[str], Drill]) -> None:
    """200 commands (190 orders + 10 exact duplicates); PostgreSQL is stopped halfway through
    the stream and started again at once."""
    _require_event_source()
    d = drill("postgres-restart")
    counter = _log_counter(_esm_log())
    d.start_stream()
    d.wait_halfway()
    outage = time.monotonic()
    try:
        stack.down(["postgres"])
        time.sleep(DB_OUTAGE_S)
    finally:
        stack.up(["postgres"])
    outage_s = round(time.monotonic() - outage, 1)
    d.wait_produced()
    d.pg = _reconnect(d)
    d.settle_and_assert(extra_counts=lambda: {**counter(), "db_outage_s": outage_s})


def _reconnect(d: Drill) -> Any:
    import pg8000.native

    from local.stack.settings import DB_NAME, DB_PASSWORD, DB_USER, HOST, load

    with contextlib.suppress(Exception):  # the connection did not survive the restart
        d.pg.run("SELECT 1")
        return d.pg
    return pg8000.native.Connection(
        user=DB_USER, password=DB_PASSWORD, host=HOST, port=load().postgres_port, database=DB_NAME, timeout=10
    )


@pytest.fixture
def own_event_source(tmp_path: Path) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], Path]]]:
    """Replace the stack's event-source mapping by one of ours (other env) for one test; the
    stack's is restarted afterwards."""
    was_running = stack.is_running("event-source")
    started: list[subprocess.Popen[bytes]] = []

    def start(stripe_api_base: str) -> tuple[subprocess.Popen[bytes], Path]:
        if stack.is_running("event-source"):
            stack.down(["event-source"])
        log = tmp_path / "event-source.log"
        env = dict(os.environ)
        env.update(client_env())
        env["STRIPE_API_BASE"] = stripe_api_base
        out = log.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "local.stack.event_source"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(Path(stack.__file__).resolve().parents[2]),
            env=env,
            start_new_session=True,
        )
        started.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_bytes()
            if b"READY" in text and b"assigned [" in text:
                break
            assert proc.poll() is None, f"our event-source exited with {proc.returncode}: {text[-2000:]!r}"
            time.sleep(0.2)
        else:
            raise AssertionError(f"our event-source was not READY and assigned within 60s (log {log})")
        return proc, log

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if was_running and not stack.is_running("event-source"):
            stack.up(["event-source"])


def test_stripe_answers_500_for_a_while(
    drill: Callable[[str], Drill], own_event_source: Any, local_env: dict[str, str]
) -> None:
    """200 commands (190 orders + 10 exact duplicates) through our own event-source mapping
    whose Stripe is the strict double in front of localstripe (local/doubles/strict_stripe.py: Stripe's
    idempotency, 500s included): halfway through the stream, every Stripe request is answered
    500 for 8 seconds, in turn without reaching localstripe, after localstripe acted with its
    answer lost (a retry with the key gets the true answer), and after localstripe acted with
    the 500 saved under the key (a retry with the key gets the 500 again). Commands the mapping
    gives up on (dead-lettered with a reason) leave a PENDING payment that the scheduler's
    reconciler completes."""
    d = drill("stripe-500")
    proxy = StrictStripe(local_env["STRIPE_API_BASE"], validator=local_env["STRIPE_MOCK_API_BASE"]).start()
    try:
        _, log = own_event_source(proxy.url)
        counter = _log_counter(log)
        d.start_stream()
        d.wait_halfway()
        proxy.fail_for(STRIPE_500_S)
        d.wait_produced()
        d.settle_and_assert(
            extra_counts=lambda: {
                **counter(),
                "stripe_forwarded": proxy.stats.forwarded,
                "stripe_500_refused": proxy.stats.refused,
                "stripe_500_after_acting": proxy.stats.lost,
                "stripe_idempotent_replays": proxy.stats.replayed,
                "stripe_500_saved": proxy.strict.saved_500,
                "stripe_saved_500_replayed": proxy.strict.replayed_500,
                "stripe_idempotency_errors": proxy.strict.idempotency_errors,
            }
        )
        assert proxy.stats.failed > 0, "the fault window saw no Stripe request: the drill drilled nothing"
    finally:
        proxy.stop()
