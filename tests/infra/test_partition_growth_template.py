"""The topics resource grows the commands topic only (issue 19): it names the topic and the
mapping's consumer group it checks, its function may alter that topic alone and read that group,
and the stack outputs what `make partitions STAGE=…` drives (the mapping's UUID, the function)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import resources

pytestmark = pytest.mark.infra


def _statements(raw: dict[str, Any], role: str) -> list[dict[str, Any]]:
    found = []
    for policy in resources(raw, "AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"].get("Roles", []):
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return found


def test_the_topics_resource_grows_the_commands_topic_checking_the_mappings_group(
    dev_raw: dict[str, Any],
) -> None:
    (topics,) = resources(dev_raw, "Custom::PaymentsKafkaTopics").values()
    (esm,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping").values()
    props = topics["Properties"]
    assert props["GrowTopic"] == esm["Properties"]["Topics"][0] == "payment_commands.dev"
    assert (
        props["ConsumerGroup"] == esm["Properties"]["AmazonManagedKafkaEventSourceConfig"]["ConsumerGroupId"]
    )


def test_only_the_commands_topic_may_be_altered_by_the_topics_function(dev_raw: dict[str, Any]) -> None:
    functions = resources(dev_raw, "AWS::Lambda::Function")
    (role,) = [
        f["Properties"]["Role"]["Fn::GetAtt"][0]
        for f in functions.values()
        if f["Properties"].get("Description") == "creates the service's Kafka topics"
    ]
    alter = [s for s in _statements(dev_raw, role) if "kafka-cluster:AlterTopic" in str(s["Action"])]
    assert len(alter) == 1 and alter[0]["Action"] == "kafka-cluster:AlterTopic"
    text = str(alter[0]["Resource"])
    assert "/payment_commands.dev" in text and "payment_events" not in text and ".dlq" not in text
    group = [s for s in _statements(dev_raw, role) if s["Action"] == "kafka-cluster:DescribeGroup"]
    assert len(group) == 1 and ":group/" in str(group[0]["Resource"])


def test_the_stack_outputs_what_make_partitions_drives(dev_raw: dict[str, Any]) -> None:
    outputs = dev_raw["Outputs"]
    (esm_id,) = resources(dev_raw, "AWS::Lambda::EventSourceMapping")
    assert outputs["CommandsMappingId"]["Value"] == {"Ref": esm_id}
    function = outputs["TopicsFunctionName"]["Value"]["Ref"]
    assert dev_raw["Resources"][function]["Properties"]["Description"] == "creates the service's Kafka topics"
