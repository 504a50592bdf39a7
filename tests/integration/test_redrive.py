"""Redrive end to end on the local stack (issue 19): a command the local event source mapping
gave up on is listed with its reason, shown, re-queued by `python -m tools.redrive` (what
`make redrive` runs) to payment_commands, and its order is answered once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import authorize_command, wait_for
from kafka import TopicPartition

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _redrive(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.redrive", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _give_up_on(local_settings: Any, source: str, dead_letters: str) -> tuple[Any, threading.Thread]:
    """A local mapping on ``source`` whose handler always fails (as during an outage that
    outlasts the retries): after one retry it dead-letters the record, as in the stack."""
    from local.stack.event_source_config import MappingConfig
    from local.stack.event_source_mapping import EventSourceMapping

    def failing(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("database unreachable (test)")

    config = MappingConfig(
        function="stand_in",
        topic=source,
        group_id=f"test-redrive-{uuid.uuid4().hex[:8]}",
        bootstrap_servers=local_settings.kafka_bootstrap,
        batch_window_ms=100,
        max_retries=1,
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.1,
        dead_letter_topic=dead_letters,
    )
    mapping = EventSourceMapping(config, handler=failing)
    runner = threading.Thread(target=mapping.run, daemon=True)
    runner.start()
    return mapping, runner


def test_a_dead_lettered_command_is_listed_shown_requeued_and_answered_once(
    local_env,
    local_settings,
    make_topic,
    make_producer,
    make_consumer,
    new_card,
    payment_row,
    published_events,
    intents_for_order,
):
    source, dlq = make_topic(1, prefix="redrive-source"), make_topic(1, prefix="payment_commands.dlq")
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    producer = make_producer()
    producer.send(source, key=order_id.encode(), value=json.dumps(cmd).encode()).get(timeout=10)

    # Both topics visible to a new client before anyone subscribes: a group that joins while the
    # broker does not list a topic yet is assigned nothing until its metadata is next refreshed.
    probe = make_consumer(consumer_timeout_ms=500)
    assert wait_for(
        lambda: probe.partitions_for_topic(source) and probe.partitions_for_topic(dlq), timeout=30
    )
    mapping, runner = _give_up_on(local_settings, source, dlq)
    try:
        lettered = make_consumer(consumer_timeout_ms=500)
        lettered.assign([TopicPartition(dlq, 0)])  # no group: read from the start, no rebalance
        assert wait_for(lambda: list(lettered), timeout=60), "the mapping dead-lettered the command"
    finally:
        mapping.stop()
        runner.join(timeout=15)
    assert payment_row(order_id) is None, "nothing was done for the order before the redrive"

    env = {"DEAD_LETTER_TOPIC": dlq}
    listed = _redrive(env)
    assert listed.returncode == 0, listed.stderr
    assert "1 dead letter(s):" in listed.stdout
    assert f"== 0:0  authorize_payment  order {order_id}  from {source}-0@0" in listed.stdout
    assert (
        "reason: handler failed 2 times (max retries 1): handler raised RuntimeError: database unreachable"
        in listed.stdout
    )
    assert f'"order_id": "{order_id}"' in listed.stdout, "the command shown as pretty JSON"
    for secret in (local_env["STRIPE_SECRET_KEY"], local_env["PGPASSWORD"]):
        assert secret not in listed.stdout + listed.stderr, "nothing from the environment is printed"

    requeued = _redrive(env, "0:0")
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"0:0  order {order_id}  re-queued"

    (answer,) = published_events(order_id, settle=3.0)  # the stack's mapping judged it afresh
    assert (answer["type"], answer["payload"]["status"]) == ("payment.authorized", "AUTHORIZED")
    assert payment_row(order_id)["status"] == "AUTHORIZED"

    commands = make_consumer("payment_commands", consumer_timeout_ms=1000)
    keys = [(m.key, dict(m.headers or [])) for m in commands if m.value == json.dumps(cmd).encode()]
    assert keys == [(order_id.encode(), {"redriven_from": b"0:0", "command_type": b"authorize_payment"})], (
        "one new record on payment_commands, keyed by the order"
    )

    # Redriven again (ALL=1): the order's idempotency answers it with the first answer's event_id
    # and places no second hold.
    again = _redrive(env, "--all")
    assert again.returncode == 0, again.stderr
    answers = published_events(order_id, at_least=2, timeout=30, settle=3.0)
    assert len(answers) == 2, "the second copy was judged and re-announced the stored outcome"
    assert {a["event_id"] for a in answers} == {answer["event_id"]}, answers
    assert len(intents_for_order(card, order_id)) == 1, "one hold for the order"


def test_bad_input_gets_one_line_naming_the_fix_and_a_nonzero_exit(local_env, make_topic):
    dlq = make_topic(1, prefix="payment_commands.dlq")
    unknown = _redrive({"DEAD_LETTER_TOPIC": dlq}, "7:7")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert (
        unknown.stderr
        == "redrive: error: unknown dead letter id(s) 7:7: run `make redrive` to list the ids\n"
    )

    empty = _redrive({"DEAD_LETTER_TOPIC": dlq}, "--all")
    assert empty.returncode == 2
    assert empty.stderr.splitlines() == [
        "redrive: error: no redrivable dead letters: nothing to re-queue (run `make redrive` to list them)"
    ]
    assert _redrive({"DEAD_LETTER_TOPIC": dlq}).stdout == "no dead letters\n"

    down = _redrive({"DEAD_LETTER_TOPIC": dlq, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert down.returncode == 2
    (line,) = down.stderr.splitlines()
    assert line.startswith("redrive: error: Kafka unreachable at 127.0.0.1:1")
    assert line.endswith("start the local stack (make local-up) or set KAFKA_BOOTSTRAP_SERVERS")
