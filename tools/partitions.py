"""Grow payment_commands' partitions safely: drain, pause the mapping, grow, resume (``make partitions``).

    python -m tools.partitions                    # status: partitions, consumer group, lag
    python -m tools.partitions grow 6             # the procedure (below)
    python -m tools.partitions pause | resume     # the mapping alone
    python -m tools.partitions --stage prod grow 6

The procedure: (1) with the mapping running, wait until its consumer group's lag is 0 (a paused
mapping does not drain); (2) pause it and wait until the group has no member; (3) grow, which
re-checks both and refuses otherwise; (4) resume. A command that arrives between (1) and (3)
makes (3) refuse: the mapping is resumed and the procedure starts again at (1), until
``--timeout``. The mapping is always left enabled. docs/operations-partitions.md explains why.

Locally: the local stack's mapping (its pause file) and broker. With ``--stage``: the stage's
mapping through the Lambda API (the AWS CLI's credentials) and, since MSK is reachable only
from the VPC, the stage's topics function for the Kafka side; for an imported cluster
(``kafka.cluster_arn`` set, the stack creates no topics) the commands to run are printed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class ProcedureError(Exception):
    pass


class LocalTarget:
    """The local stack: the mapping's pause file, the broker through the admin client."""

    def __init__(self, topic: str, group: str, pause_file: Path) -> None:
        self.topic, self.group, self.pause_file = topic, group, pause_file

    def describe(self) -> dict[str, Any]:
        from payments_core.adapters.kafka.partitions import admin_client, topic_state

        admin = admin_client(client_id="tools-partitions")
        try:
            return topic_state(admin, self.topic, self.group).as_dict()
        finally:
            admin.close()

    def grow(self, target: int) -> dict[str, Any]:
        from payments_core.adapters.kafka.partitions import PartitionGrowthRefused, grow_partitions

        try:
            return grow_partitions(self.topic, target, self.group)
        except PartitionGrowthRefused as exc:
            return {**self.describe(), "error": str(exc), "refused": type(exc).__name__}

    def pause(self) -> None:
        self.pause_file.parent.mkdir(parents=True, exist_ok=True)
        self.pause_file.touch()

    def resume(self) -> None:
        self.pause_file.unlink(missing_ok=True)

    def disabled(self) -> bool:
        return True  # the group's membership (describe) is what shows the local mapping stopped


class AwsTarget:
    """A deployed stage: the event source mapping by its UUID, the topics function in the VPC."""

    def __init__(self, topic: str, group: str, mapping_uuid: str, function: str, lambda_client: Any) -> None:
        self.topic, self.group, self.uuid, self.function = topic, group, mapping_uuid, function
        self.client = lambda_client

    def _invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.invoke(FunctionName=self.function, Payload=json.dumps(payload).encode())
        body = json.loads(answer["Payload"].read() or b"{}")
        if answer.get("FunctionError"):
            raise ProcedureError(f"{self.function} failed: {body.get('errorMessage', body)}")
        return dict(body)

    def describe(self) -> dict[str, Any]:
        return self._invoke({"Operation": "describe", "Topic": self.topic, "Group": self.group})

    def grow(self, target: int) -> dict[str, Any]:
        return self._invoke(
            {"Operation": "grow", "Topic": self.topic, "Group": self.group, "Partitions": target}
        )

    def _state(self) -> str:
        return str(self.client.get_event_source_mapping(UUID=self.uuid)["State"])

    def _switch(self, enabled: bool, settle_s: float = 2.0, limit_s: float = 300.0) -> None:
        """Enable or disable, once the mapping is in a settled state (Lambda refuses an update
        while it is Enabling, Disabling or Updating: ResourceInUseException)."""
        wanted = ("Enabled", "Enabling") if enabled else ("Disabled", "Disabling")
        deadline = time.monotonic() + limit_s
        while (state := self._state()) not in wanted:
            if not state.endswith("ing"):
                self.client.update_event_source_mapping(UUID=self.uuid, Enabled=enabled)
                return
            if time.monotonic() > deadline:
                raise ProcedureError(f"event source mapping {self.uuid} stayed {state} for {limit_s:.0f} s")
            time.sleep(settle_s)

    def pause(self) -> None:
        self._switch(False)

    def resume(self) -> None:
        self._switch(True)

    def disabled(self) -> bool:
        return self._state() == "Disabled"


def wait_until(
    what: str,
    check: Callable[[], dict[str, Any] | None],
    deadline: float,
    poll_s: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Poll ``check`` until it returns a state (not None) or the deadline passes."""
    last_said = 0.0
    while True:
        state = check()
        if state is not None:
            return state
        if time.monotonic() >= deadline:
            raise ProcedureError(f"timed out waiting for {what}")
        if time.monotonic() - last_said > 5:
            say(f"waiting for {what}")
            last_said = time.monotonic()
        time.sleep(poll_s)


def grow_procedure(
    target: Any,
    partitions: int,
    timeout_s: float = 600,
    poll_s: float = 0.5,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Drain, pause, grow, resume (see the module's docstring); raises ProcedureError when it
    cannot, with the mapping enabled again."""
    start = target.describe()
    if "error" in start:
        raise ProcedureError(start["error"])
    if partitions < start["partitions"]:
        raise ProcedureError(
            f"{start['topic']} has {start['partitions']} partitions; Kafka cannot remove partitions: "
            f"ask for {start['partitions']} or more"
        )
    if partitions == start["partitions"]:
        say(f"{start['topic']} already has {partitions} partitions: nothing to do")
        return {**start, "grown": False}
    deadline = time.monotonic() + timeout_s
    attempt = 0
    try:
        while True:
            attempt += 1
            target.resume()  # a paused mapping does not drain
            say(f"attempt {attempt}: waiting for group {start['group']} to drain {start['topic']}")

            def drained() -> dict[str, Any] | None:
                state = target.describe()
                return state if state["lag"] == 0 else None

            wait_until("lag 0", drained, deadline, poll_s, say)
            target.pause()
            say("drained: mapping paused, waiting for it to stop")

            def stopped() -> dict[str, Any] | None:
                state = target.describe()
                return state if state["members"] == 0 and target.disabled() else None

            wait_until("the mapping to stop (no group member)", stopped, deadline, poll_s, say)
            result = target.grow(partitions)
            if result.get("grown"):
                say(f"grown: {result['topic']} {result['from']} -> {result['partitions']} partitions")
                return result
            if result.get("refused") != "NotDrained":
                raise ProcedureError(result.get("error") or f"not grown: {result}")
            say(
                f"commands arrived while pausing (partition:lag {_figures(result)}): resuming and trying again"
            )
    except ProcedureError as exc:
        state = _quiet(target.describe)
        figures = f" (lag {state['lag']}, partition:lag {_figures(state)})" if state else ""
        raise ProcedureError(
            f"{exc}{figures}; {start['topic']} left at {start['partitions']} partitions"
        ) from exc
    finally:
        target.resume()
        say("mapping resumed")


def _figures(state: dict[str, Any]) -> str:
    return " ".join(
        f"{p}:{n}" for p, n in sorted(state.get("lag_by_partition", {}).items(), key=lambda i: int(i[0]))
    )


def _quiet(fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return fn()
    except Exception:  # describing is best effort once the procedure has failed
        return None


def imported_cluster_commands(stage: str, kafka: Any, partitions: int) -> str:
    """What an operator runs for a cluster the stack does not own (from a host in its VPC)."""
    stack = f"payment-service-{stage}"
    bootstrap = kafka.bootstrap_servers or "<bootstrap servers>"
    return "\n".join(
        [
            f"# Grow {kafka.commands_topic} to {partitions} partitions on the imported cluster {kafka.cluster_arn}",
            "# Kafka side from a host in the cluster's VPC, with the aws-msk-iam-auth jar and a client.properties of:",
            "#   security.protocol=SASL_SSL",
            "#   sasl.mechanism=AWS_MSK_IAM",
            "#   sasl.jaas.config=software.amazon.msk.auth.iam.IAMLoginModule required;",
            "#   sasl.client.callback.handler.class=software.amazon.msk.auth.iam.IAMClientCallbackHandler",
            f'UUID=$(aws cloudformation describe-stacks --stack-name {stack} --query "Stacks[0].Outputs'
            "[?OutputKey=='CommandsMappingId'].OutputValue\" --output text)",
            "# 1. drain: with the mapping enabled, wait until LAG is 0 on every partition",
            f"kafka-consumer-groups.sh --bootstrap-server {bootstrap} --command-config client.properties "
            f"--describe --group {kafka.consumer_group_id}",
            "# 2. pause, and wait until State is Disabled and the group shows no CONSUMER-ID",
            'aws lambda update-event-source-mapping --uuid "$UUID" --no-enabled',
            'aws lambda get-event-source-mapping --uuid "$UUID" --query State --output text',
            "# 3. check again: LAG 0 everywhere (else resume, step 5, and start again at 1)",
            f"kafka-consumer-groups.sh --bootstrap-server {bootstrap} --command-config client.properties "
            f"--describe --group {kafka.consumer_group_id}",
            "# 4. grow (never fewer: Kafka refuses a decrease)",
            f"kafka-topics.sh --bootstrap-server {bootstrap} --command-config client.properties "
            f"--alter --topic {kafka.commands_topic} --partitions {partitions}",
            "# 5. resume",
            'aws lambda update-event-source-mapping --uuid "$UUID" --enabled',
            f"# then set kafka.partitions to {partitions} for stage {stage} and deploy (pollers and concurrency follow)",
        ]
    )


def _stage_target(stage: str, context_file: str | None) -> tuple[Any, AwsTarget | None]:
    from infra.config import load, merge

    context = json.loads((ROOT / "cdk.json").read_text())["context"]["payment-service"]
    if context_file:
        context = merge(context, json.loads(Path(context_file).read_text()))
    try:
        kafka = load(context).stage(stage).kafka
    except ValueError as exc:
        raise ProcedureError(str(exc)) from exc
    if kafka.cluster_arn:
        return kafka, None
    import boto3

    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in boto3.client("cloudformation")
        .describe_stacks(StackName=f"payment-service-{stage}")["Stacks"][0]
        .get("Outputs", [])
    }
    missing = [k for k in ("CommandsMappingId", "TopicsFunctionName") if k not in outputs]
    if missing:
        raise ProcedureError(
            f"payment-service-{stage} has no {', '.join(missing)} output: deploy the stage (make deploy STAGE={stage})"
        )
    client = boto3.client("lambda")
    return kafka, AwsTarget(
        kafka.commands_topic,
        kafka.consumer_group_id,
        outputs["CommandsMappingId"],
        outputs["TopicsFunctionName"],
        client,
    )


def _local_target() -> LocalTarget:
    from local.stack.event_source_config import pause_file_path
    from local.stack.settings import PAYMENT_COMMANDS_TOPIC, client_env

    for name, value in client_env().items():
        os.environ.setdefault(name, value)
    return LocalTarget(
        os.environ.get("LOCAL_ESM_TOPIC") or PAYMENT_COMMANDS_TOPIC,
        os.environ.get("LOCAL_ESM_GROUP_ID") or "local-esm-authorize_payment",
        pause_file_path(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make partitions", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="status", choices=["status", "grow", "pause", "resume"])
    parser.add_argument("partitions", nargs="?", type=int, help="the new partition count (grow)")
    parser.add_argument("--stage", help="a deployed stage (cdk.json); without it, the local stack")
    parser.add_argument(
        "--context-file", help="a context file merged over cdk.json (as make synth CONTEXT_FILE=)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a drained moment")
    args = parser.parse_args(argv)
    if args.action == "grow" and (args.partitions is None or args.partitions < 1):
        parser.error("grow needs the new partition count: make partitions PARTITIONS=<n>")
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"  # the printed lines are the answer
    target: LocalTarget | AwsTarget | None
    try:
        if args.stage:
            kafka, target = _stage_target(args.stage, args.context_file)
            if target is None:
                if args.action != "grow":
                    parser.error(
                        "an imported cluster is operated by hand: make partitions STAGE=… PARTITIONS=<n>"
                    )
                print(imported_cluster_commands(args.stage, kafka, args.partitions))
                return 0
        else:
            target = _local_target()
        if args.action == "status":
            print(json.dumps(target.describe(), indent=2))
        elif args.action == "pause":
            target.pause()
        elif args.action == "resume":
            target.resume()
        else:
            grow_procedure(
                target, args.partitions, timeout_s=args.timeout, poll_s=0.5 if not args.stage else 5
            )
    except ProcedureError as exc:
        print(f"partitions: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not type(exc).__module__.startswith(("kafka", "botocore", "boto3")):
            raise
        fix = (
            "check the AWS CLI's credentials and that the stage is deployed"
            if args.stage
            else "start the local stack (make local-up)"
        )
        reason = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        print(f"partitions: error: {reason}: {fix}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
