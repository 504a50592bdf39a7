"""Growing the commands topic on the local stack (issue 19): the procedure of tools/partitions.py
(drain, pause the mapping, grow, resume) against the real broker and the local event source
mapping, while commands flow; and the refusals (a grow with lag, with the mapping running, a
shrink) of payments_core.adapters.kafka.partitions and of `make partitions`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from payments_core.adapters.kafka.partitions import (
    MappingNotPaused,
    NotDrained,
    ShrinkRefused,
    grow_partitions,
)

from local.stack.event_source_config import MappingConfig
from local.stack.event_source_mapping import EventSourceMapping

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tools/ is local tooling, not an installed package
    sys.path.insert(0, str(ROOT))

from tools.partitions import LocalTarget, grow_procedure  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.needs("kafka")]


class Recorder:
    """The mapping's handler: notes each command (order, seq, partition) in the order handled."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        import base64

        for records in event["records"].values():
            for record in records:
                command = json.loads(base64.b64decode(record["value"]))
                time.sleep(0.002)  # a little work, so batches overlap the pause
                with self.lock:
                    self.handled.append((command["order"], command["seq"], record["partition"]))
        return {"batchItemFailures": []}


@pytest.fixture
def commands_topic(make_topic, make_consumer) -> str:
    topic = make_topic(3, prefix="payment_commands")
    probe = make_consumer(consumer_timeout_ms=500)
    assert wait_for(lambda: probe.partitions_for_topic(topic), timeout=30)
    return topic


@pytest.fixture
def mapping(local_settings, commands_topic, tmp_path) -> Any:
    recorder = Recorder()
    config = MappingConfig(
        function="stand_in",
        topic=commands_topic,
        group_id=f"test-grow-{uuid.uuid4().hex[:8]}",
        bootstrap_servers=local_settings.kafka_bootstrap,
        batch_window_ms=100,
        pause_file=str(tmp_path / "event-source.paused"),
    )
    esm = EventSourceMapping(config, handler=recorder)
    runner = threading.Thread(target=esm.run, daemon=True)
    runner.start()
    target = LocalTarget(commands_topic, config.group_id, Path(config.pause_file))
    assert wait_for(lambda: _assigned(target.group) == 3, timeout=30), (
        "the mapping was assigned the 3 partitions"
    )
    yield esm, recorder, target
    esm.stop()
    runner.join(timeout=15)


def _assigned(group: str) -> int:
    """Partitions assigned to the group's members (a member that joined before the broker listed
    the topic is assigned none until its metadata is refreshed)."""
    from payments_core.adapters.kafka.partitions import admin_client

    admin = admin_client(client_id="tests")
    try:
        members = admin.describe_groups([group])[group]["members"]
    finally:
        admin.close()
    return sum(
        len(topic["partitions"])
        for member in members
        for topic in (member.get("member_assignment") or {}).get("assigned_partitions", [])
    )


def _burst(bootstrap: str, topic: str, commands: list[dict[str, Any]]) -> list[int]:
    """Send commands keyed by order from a new producer (as a new saga container would: it
    reads the partition count when it starts); return each one's partition."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [
            producer.send(topic, key=c["order"].encode(), value=json.dumps(c).encode()) for c in commands
        ]
        return [f.get(timeout=10).partition for f in futures]
    finally:
        producer.close(timeout=5)


def test_grow_while_commands_flow_keeps_each_order_in_order_and_answered_once(
    local_settings, commands_topic, mapping
) -> None:
    _esm, recorder, target = mapping
    sent: dict[tuple[str, int], int] = {}  # (order, seq) -> partition
    stop = threading.Event()
    waiting_last: list[str] = []

    intake = threading.Lock()  # held by a burst in flight, and by the pause

    class HeldIntake(LocalTarget):
        """The intake held for the window: the pause waits for a burst in flight to be sent.
        Without it a burst whose producer read 3 partitions before the grow and sent after it
        put an order's first commands on the old partition and its last on the new one, both
        waiting at the resume (seen once: an order handled 0, 2, 1) - the stale-producer window
        of docs/operations-partitions.md, which the drain cannot close."""

        def pause(self) -> None:
            with intake:
                super().pause()

    held = HeldIntake(target.topic, target.group, target.pause_file)

    def saga() -> None:
        # Each order sends seq 0 and 1 at once and seq 2 in the next burst, without waiting for
        # answers: an order straddling the grow has commands on both sides of it. Nothing is sent
        # while the mapping is paused (the intake held, docs/operations-partitions.md).
        while not stop.is_set() or waiting_last:
            with intake:
                if target.pause_file.exists() and not stop.is_set():
                    sent_now = None
                else:
                    fresh = [] if stop.is_set() else [str(uuid.uuid4()) for _ in range(12)]
                    commands = [{"order": o, "seq": s} for o in fresh for s in (0, 1)]
                    commands += [{"order": o, "seq": 2} for o in waiting_last]
                    sent_now = _burst(local_settings.kafka_bootstrap, commands_topic, commands)
            if sent_now is None:
                time.sleep(0.02)
                continue
            for command, partition in zip(commands, sent_now, strict=True):
                sent[(command["order"], command["seq"])] = partition
            waiting_last[:] = fresh
            time.sleep(0.3)

    producer = threading.Thread(target=saga, daemon=True)
    producer.start()
    time.sleep(2)
    said: list[str] = []
    result = grow_procedure(held, 6, timeout_s=90, poll_s=0.05, say=said.append)
    time.sleep(3)
    stop.set()
    producer.join(timeout=30)
    assert not producer.is_alive()

    assert result["grown"] and (result["from"], result["partitions"]) == (3, 6), result
    assert "mapping resumed" in said and not target.pause_file.exists(), said
    assert wait_for(lambda: len(recorder.handled) >= len(sent), timeout=60), (
        len(recorder.handled),
        len(sent),
    )
    time.sleep(1)  # a duplicate would arrive now

    handled = list(recorder.handled)
    counts = Counter((order, seq) for order, seq, _ in handled)
    assert set(counts) == set(sent) and set(counts.values()) == {1}, "every command handled exactly once"
    by_order: dict[str, list[int]] = defaultdict(list)
    for order, seq, _ in handled:
        by_order[order].append(seq)
    assert all(seqs == [0, 1, 2] for seqs in by_order.values()), {
        o: [(seq, sent[(o, seq)]) for seq in seqs] for o, seqs in by_order.items() if seqs != [0, 1, 2]
    }
    # 12 orders straddle the grow, each moving with probability 1/2 (murmur2 % 6 is % 3 or % 3 + 3)
    moved = [o for o in by_order if sent[(o, 0)] != sent[(o, 2)]]
    assert moved, "some orders had their last command on a new partition (the case the drain protects)"
    assert {p for p in sent.values()} > {0, 1, 2}, "commands went to the new partitions after the grow"
    final = target.describe()
    assert (final["partitions"], final["lag"], final["members"]) == (6, 0, 1), final


def test_a_grow_is_refused_while_the_mapping_runs_with_lag_and_to_fewer_partitions(
    local_settings, local_env, commands_topic, mapping
) -> None:
    _esm, recorder, target = mapping
    group = target.group

    with pytest.raises(MappingNotPaused, match=r"has 1 member\(s\).*pause it first"):
        grow_partitions(commands_topic, 6, group)

    target.pause()
    assert wait_for(lambda: target.describe()["members"] == 0, timeout=30), "the mapping left its group"
    _burst(local_settings.kafka_bootstrap, commands_topic, [{"order": f"o{i}", "seq": 0} for i in range(5)])
    state = target.describe()
    assert state["lag"] == 5, state
    with pytest.raises(NotDrained) as refused:
        grow_partitions(commands_topic, 6, group)
    figures = " ".join(f"{p}:{n}" for p, n in sorted(state["lag_by_partition"].items()))
    assert f"has 5 record(s) waiting (partition:lag {figures})" in str(refused.value)
    assert target.describe()["partitions"] == 3, "nothing grown"

    with pytest.raises(ShrinkRefused, match="Kafka cannot remove partitions"):
        grow_partitions(commands_topic, 2, group)

    env = {**os.environ, "LOCAL_ESM_TOPIC": commands_topic, "LOCAL_ESM_GROUP_ID": group}
    shrink = subprocess.run(
        [sys.executable, "-m", "tools.partitions", "grow", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (shrink.returncode, shrink.stdout) == (2, "")
    assert shrink.stderr == (
        f"partitions: error: {commands_topic} has 3 partitions; Kafka cannot remove partitions: ask for 3 or more\n"
    )

    # The procedure itself resumes the mapping, which drains the 5, then grows.
    said: list[str] = []
    result = grow_procedure(target, 4, timeout_s=60, poll_s=0.05, say=said.append)
    assert result["grown"] and result["partitions"] == 4
    assert sorted(order for order, _, _ in recorder.handled) == [f"o{i}" for i in range(5)]
    assert not target.pause_file.exists()
