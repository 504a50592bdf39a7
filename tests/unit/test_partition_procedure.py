"""The partition-growth rules (payments_core.adapters.kafka.partitions) and the operator's procedure
(tools/partitions.py) with a stand-in target; the real broker and mapping are in
tests/integration/test_partition_growth.py."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from payments_core.adapters.kafka.partitions import (
    MappingNotPaused,
    NotDrained,
    PartitionLag,
    ShrinkRefused,
    TopicState,
    check_growable,
)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tools/ is local tooling, not an installed package
    sys.path.insert(0, str(ROOT))

from tools.partitions import AwsTarget, ProcedureError, grow_procedure, imported_cluster_commands  # noqa: E402


def _state(members: int = 0, lags: tuple[int, ...] = (0, 0, 0)) -> TopicState:
    return TopicState(
        "payment_commands",
        "grp",
        "Empty" if not members else "Stable",
        members,
        [PartitionLag(i, 10, 10 + lag, 0) for i, lag in enumerate(lags)],
    )


def test_growth_is_refused_when_it_shrinks_while_the_mapping_runs_or_with_lag() -> None:
    with pytest.raises(
        ShrinkRefused, match="has 3 partitions; Kafka cannot remove partitions and 2 would be fewer"
    ):
        check_growable(_state(), 2)
    assert check_growable(_state(), 3) is False, "the same count: nothing to do"
    with pytest.raises(MappingNotPaused, match=r"consumer group grp has 2 member\(s\) \(Stable\)"):
        check_growable(_state(members=2), 6)
    with pytest.raises(NotDrained, match=r"has 7 record\(s\) waiting \(partition:lag 0:0 1:7 2:0\)"):
        check_growable(_state(lags=(0, 7, 0)), 6)
    assert check_growable(_state(), 6) is True


def test_a_partition_never_committed_counts_everything_retained_as_lag() -> None:
    assert PartitionLag(0, None, 12, 4).lag == 8
    assert PartitionLag(0, None, 0, 0).lag == 0
    assert PartitionLag(0, 12, 12, 4).lag == 0


class FakeTarget:
    """Answers describe with a scripted lag and grow with scripted results; records the calls."""

    def __init__(self, lags: list[int], grows: list[dict[str, Any]], partitions: int = 3) -> None:
        self.lags, self.grows, self.partitions = lags, grows, partitions
        self.calls: list[str] = []
        self.paused = False

    def describe(self) -> dict[str, Any]:
        lag = self.lags.pop(0) if len(self.lags) > 1 else self.lags[0]
        return {
            "topic": "payment_commands",
            "group": "grp",
            "partitions": self.partitions,
            "lag": lag,
            "members": 0 if self.paused else 1,
            "lag_by_partition": {"0": lag, "1": 0, "2": 0},
        }

    def grow(self, target: int) -> dict[str, Any]:
        self.calls.append(f"grow {target}")
        return self.grows.pop(0)

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def disabled(self) -> bool:
        return self.paused


def test_the_procedure_drains_pauses_grows_and_resumes_retrying_when_commands_arrive() -> None:
    target = FakeTarget(
        lags=[0, 4, 0],
        grows=[
            {"refused": "NotDrained", "error": "…", "lag_by_partition": {"0": 1, "1": 0, "2": 0}},
            {"grown": True, "topic": "payment_commands", "from": 3, "partitions": 6},
        ],
    )
    said: list[str] = []
    result = grow_procedure(target, 6, timeout_s=5, poll_s=0, say=said.append)
    assert result["grown"]
    assert target.calls == ["resume", "pause", "grow 6", "resume", "pause", "grow 6", "resume"]
    assert "commands arrived while pausing (partition:lag 0:1 1:0 2:0): resuming and trying again" in said
    assert said[-1] == "mapping resumed" and not target.paused


def test_the_procedure_refuses_a_shrink_before_touching_the_mapping_and_times_out_resumed() -> None:
    target = FakeTarget(lags=[0], grows=[])
    with pytest.raises(
        ProcedureError, match="has 3 partitions; Kafka cannot remove partitions: ask for 3 or more"
    ):
        grow_procedure(target, 2, say=lambda _: None)
    assert grow_procedure(target, 3, say=lambda _: None)["grown"] is False
    assert target.calls == []

    busy = FakeTarget(lags=[9], grows=[])
    with pytest.raises(ProcedureError) as timed_out:
        grow_procedure(busy, 6, timeout_s=0.05, poll_s=0.01, say=lambda _: None)
    assert str(timed_out.value) == (
        "timed out waiting for lag 0 (lag 9, partition:lag 0:9 1:0 2:0); payment_commands left at 3 partitions"
    )
    assert busy.calls[-1] == "resume" and "grow 6" not in busy.calls


def test_an_imported_cluster_gets_the_commands_printed() -> None:
    kafka = SimpleNamespace(
        cluster_arn="arn:aws:kafka:ap-southeast-1:1:cluster/campusg/abc",
        bootstrap_servers="b-1.campusg:9098",
        commands_topic="payment_commands",
        consumer_group_id="payment-service-authorize",
    )
    text = imported_cluster_commands("prod", kafka, 6)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "UUID=$(aws cloudformation describe-stacks --stack-name payment-service-prod --query "
        "\"Stacks[0].Outputs[?OutputKey=='CommandsMappingId'].OutputValue\" --output text)",
        "kafka-consumer-groups.sh --bootstrap-server b-1.campusg:9098 --command-config client.properties "
        "--describe --group payment-service-authorize",
        'aws lambda update-event-source-mapping --uuid "$UUID" --no-enabled',
        'aws lambda get-event-source-mapping --uuid "$UUID" --query State --output text',
        "kafka-consumer-groups.sh --bootstrap-server b-1.campusg:9098 --command-config client.properties "
        "--describe --group payment-service-authorize",
        "kafka-topics.sh --bootstrap-server b-1.campusg:9098 --command-config client.properties "
        "--alter --topic payment_commands --partitions 6",
        'aws lambda update-event-source-mapping --uuid "$UUID" --enabled',
    ]


class FakeLambda:
    def __init__(self, answer: dict[str, Any], function_error: bool = False) -> None:
        self.answer, self.function_error = answer, function_error
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.states = ["Enabled"]  # what get_event_source_mapping answers next (the last repeats)

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("invoke", {**kwargs, "Payload": json.loads(kwargs["Payload"])}))
        answer = {"Payload": io.BytesIO(json.dumps(self.answer).encode())}
        return {**answer, "FunctionError": "Unhandled"} if self.function_error else answer

    def update_event_source_mapping(self, **kwargs: Any) -> None:
        self.calls.append(("update", kwargs))
        self.states = ["Enabled" if kwargs["Enabled"] else "Disabled"]

    def get_event_source_mapping(self, **kwargs: Any) -> dict[str, Any]:
        return {"State": self.states.pop(0) if len(self.states) > 1 else self.states[0]}


def test_in_aws_the_mapping_is_toggled_by_uuid_and_kafka_reached_through_the_topics_function() -> None:
    client = FakeLambda({"partitions": 3, "lag": 0})
    client.states = ["Enabling", "Enabled"]  # an update while Enabling is refused: wait it out
    target = AwsTarget("payment_commands", "grp", "uuid-1", "topics-fn", client)
    target._switch(False, settle_s=0)
    assert target.disabled()
    target.pause()  # already disabled: no second update
    target.resume()
    target.resume()
    assert target.grow(6) == {"partitions": 3, "lag": 0}
    assert client.calls == [
        ("update", {"UUID": "uuid-1", "Enabled": False}),
        ("update", {"UUID": "uuid-1", "Enabled": True}),
        (
            "invoke",
            {
                "FunctionName": "topics-fn",
                "Payload": {
                    "Operation": "grow",
                    "Topic": "payment_commands",
                    "Group": "grp",
                    "Partitions": 6,
                },
            },
        ),
    ]
    failing = AwsTarget(
        "payment_commands", "grp", "u", "topics-fn", FakeLambda({"errorMessage": "boom"}, True)
    )
    with pytest.raises(ProcedureError, match="topics-fn failed: boom"):
        failing.describe()
