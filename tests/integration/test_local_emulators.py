"""The Lambda emulators of the local stack, driven with stand-in handlers written here.

The event-source mapping runs against the real broker (fresh topics per test); the API
Gateway emulator serves real HTTP on a free port.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack.api_gateway import ApiGateway, make_server
from local.stack.event_source_config import MappingConfig
from local.stack.event_source_mapping import EventSourceMapping
from local.stack.lambda_runtime import load_module
from local.stack.scheduler import Job, Scheduler
from local.stack.settings import HOST, LocalSettings

pytestmark = pytest.mark.integration

STAND_IN = '''
"""A stand-in Lambda handler: the test installs HOOK to decide what it returns."""
HOOK = None


def lambda_handler(event, context):
    assert context.function_name and context.get_remaining_time_in_millis() > 0
    return HOOK(event) if HOOK is not None else None
'''


def write_stand_in(folder: Path) -> Path:
    path = folder / "app.py"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(STAND_IN))
    return path


@pytest.fixture
def stand_in(tmp_path: Path) -> Any:
    return load_module(write_stand_in(tmp_path / "stand_in"))


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- event source mapping ------------------------------------------------------------------


@pytest.fixture
def run_mapping(local_settings: LocalSettings) -> Iterator[Callable[..., EventSourceMapping]]:
    """Start an EventSourceMapping in a thread; stopped after the test."""
    started: list[tuple[EventSourceMapping, threading.Thread]] = []

    def start(config: MappingConfig, handler: Any = None) -> EventSourceMapping:
        mapping = EventSourceMapping(config, handler=handler)
        thread = threading.Thread(target=mapping.run, daemon=True)
        thread.start()
        started.append((mapping, thread))
        return mapping

    yield start
    for mapping, thread in started:
        mapping.stop()
        thread.join(timeout=15)


def mapping_config(local_settings: LocalSettings, topic: str, dlq: str, **overrides: Any) -> MappingConfig:
    values: dict[str, Any] = {
        "function": "stand_in",
        "topic": topic,
        "group_id": f"test-esm-{uuid.uuid4().hex[:8]}",
        "bootstrap_servers": local_settings.kafka_bootstrap,
        "batch_size": 50,
        "batch_window_ms": 300,
        "max_retries": 3,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "dead_letter_topic": dlq,
        "handler_missing_retry_s": 0.2,
    }
    values.update(overrides)
    return MappingConfig(**values)


def committed_offset(
    local_settings: LocalSettings, group_id: str, topic: str, partition: int = 0
) -> int | None:
    """The group's committed offset, read by a separate client from the group coordinator."""
    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(
        bootstrap_servers=local_settings.kafka_bootstrap, group_id=group_id, enable_auto_commit=False
    )
    try:
        value = reader.committed(TopicPartition(topic, partition))
        return int(value) if value is not None else None
    finally:
        reader.close()


def produce(
    make_producer: Callable[..., Any], topic: str, values: list[bytes], key: bytes | None = None
) -> None:
    producer = make_producer()
    for value in values:
        producer.send(topic, value=value, key=key, partition=0, headers=[("h", b"\x01\x02")])
    producer.flush(timeout=10)


def test_esm_redelivers_from_first_failed_offset_and_commits_only_after_success(
    local_settings: LocalSettings,
    make_topic: Callable[..., str],
    make_producer: Callable[..., Any],
    run_mapping: Callable[..., EventSourceMapping],
    stand_in: Any,
) -> None:
    topic, dlq = make_topic(1), make_topic(1, prefix="dlq")
    produce(make_producer, topic, [f"m{i}".encode() for i in range(5)], key=b"order-1")
    config = mapping_config(local_settings, topic, dlq)
    key = f"{topic}-0"
    calls: list[list[int]] = []
    committed_during: list[int | None] = []
    events: list[dict[str, Any]] = []
    failed: list[int] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        events.append(event)
        offsets = [r["offset"] for r in event["records"][key]]
        calls.append(offsets)
        committed_during.append(committed_offset(local_settings, config.group_id, topic))
        if not failed and 2 in offsets:
            failed.append(len(calls) - 1)
            # two failures reported: the mapping must replay from the lowest one
            return {
                "batchItemFailures": [
                    {"itemIdentifier": {"partition": key, "offset": 3}},
                    {"itemIdentifier": {"partition": key, "offset": 2}},
                ]
            }
        return {"batchItemFailures": []}

    stand_in.HOOK = hook
    run_mapping(config, stand_in.lambda_handler)
    wait_for(lambda: committed_offset(local_settings, config.group_id, topic) == 5, what="offset 5 committed")

    delivered = [o for call in calls for o in call]
    k = failed[0]
    replayed = [o for o in calls[k] if o >= 2]
    assert calls[k + 1][: len(replayed)] == replayed, calls  # the failed record and all after it
    assert sorted(set(delivered)) == [0, 1, 2, 3, 4]
    assert delivered.count(0) == 1 and delivered.count(1) == 1  # not what came before it
    assert committed_during[k] in (None, calls[k][0])  # nothing of this batch committed before it returned
    assert committed_during[k + 1] == 2  # checkpoint just before the first failure

    event = events[0]
    assert event["eventSource"] == "aws:kafka"
    assert event["eventSourceArn"].startswith("arn:aws:kafka:")
    assert event["bootstrapServers"] == local_settings.kafka_bootstrap
    record = event["records"][key][0]
    assert set(record) == {
        "topic",
        "partition",
        "offset",
        "timestamp",
        "timestampType",
        "key",
        "value",
        "headers",
    }
    assert base64.b64decode(record["value"]) == b"m0"
    assert base64.b64decode(record["key"]) == b"order-1"
    assert record["headers"] == [{"h": [1, 2]}]
    assert record["timestampType"] == "CREATE_TIME"


def test_esm_handler_exception_fails_the_whole_batch(
    local_settings: LocalSettings,
    make_topic: Callable[..., str],
    make_producer: Callable[..., Any],
    run_mapping: Callable[..., EventSourceMapping],
    stand_in: Any,
) -> None:
    topic, dlq = make_topic(1), make_topic(1, prefix="dlq")
    produce(make_producer, topic, [b"a", b"b", b"c"])
    config = mapping_config(local_settings, topic, dlq)
    calls: list[list[int]] = []

    def hook(event: dict[str, Any]) -> None:
        calls.append([r["offset"] for r in event["records"][f"{topic}-0"]])
        if len(calls) == 1:
            raise RuntimeError("database unreachable")

    stand_in.HOOK = hook
    run_mapping(config, stand_in.lambda_handler)
    wait_for(lambda: committed_offset(local_settings, config.group_id, topic) == 3, what="offset 3 committed")
    assert calls[0][0] == 0 and calls[1][0] == 0  # the same batch again, from its start
    assert sorted({o for c in calls for o in c}) == [0, 1, 2]


def test_esm_dead_letters_after_bounded_retries(
    local_settings: LocalSettings,
    make_topic: Callable[..., str],
    make_producer: Callable[..., Any],
    make_consumer: Callable[..., Any],
    run_mapping: Callable[..., EventSourceMapping],
    stand_in: Any,
) -> None:
    topic, dlq = make_topic(1), make_topic(1, prefix="dlq")
    produce(make_producer, topic, [b"ok-0", b"poison", b"ok-2"], key=b"k")
    config = mapping_config(local_settings, topic, dlq, max_retries=2)
    key = f"{topic}-0"
    seen: list[bytes] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        failures = []
        for record in event["records"][key]:
            value = base64.b64decode(record["value"])
            seen.append(value)
            if value == b"poison":
                failures.append({"itemIdentifier": {"partition": key, "offset": record["offset"]}})
        return {"batchItemFailures": failures}

    stand_in.HOOK = hook
    run_mapping(config, stand_in.lambda_handler)
    wait_for(lambda: committed_offset(local_settings, config.group_id, topic) == 3, what="offset 3 committed")

    assert seen.count(b"poison") == 3  # first delivery + max_retries re-deliveries
    assert seen.count(b"ok-0") == 1
    assert seen[-1] == b"ok-2"  # the partition moved on after the dead letter

    consumer = make_consumer(dlq)
    dead = [r for batch in [consumer.poll(timeout_ms=5000)] for records in batch.values() for r in records]
    assert len(dead) == 1
    letter = dead[0]
    assert letter.value == b"poison" and letter.key == b"k"
    headers = dict(letter.headers)
    assert headers["h"] == b"\x01\x02"  # original headers kept
    assert headers["x-original-topic"] == topic.encode()
    assert headers["x-original-partition"] == b"0"
    assert headers["x-original-offset"] == b"1"
    assert headers["x-attempts"] == b"3"
    assert b"batchItemFailures" in headers["x-dead-letter-reason"]


def test_every_mapping_started_on_a_new_topic_is_assigned_its_partition(
    local_settings: LocalSettings,
    run_mapping: Callable[..., EventSourceMapping],
    make_topic: Callable[..., str],
) -> None:
    """kafka-python can leave a member that joined before its metadata listed the topic with no
    partition for good (seen in CI: test_redrive's record never delivered; about 1 mapping in 25
    on a topic just created, more when several start at once). Each of these mappings must
    deliver its topic's record all the same: a left-out one joins again (LEFT_OUT_REJOIN_S)."""
    from kafka import KafkaProducer

    mappings = 16
    delivered: dict[str, float] = {}
    started = time.monotonic()
    lock = threading.Lock()

    def handler_for(topic: str) -> Callable[[dict[str, Any], Any], None]:
        def handle(event: dict[str, Any], context: Any) -> None:
            with lock:
                delivered.setdefault(topic, time.monotonic() - started)

        return handle

    from kafka.admin import KafkaAdminClient, NewTopic

    topics = [f"left-out.{uuid.uuid4().hex[:10]}" for _ in range(mappings)]
    admin = KafkaAdminClient(bootstrap_servers=local_settings.kafka_bootstrap, client_id="tests")
    try:
        # created and subscribed to at once, as the stack does on its first start
        admin.create_topics([NewTopic(t, 1, 1) for t in topics])
        for topic in topics:
            run_mapping(mapping_config(local_settings, topic, topic + ".dlq"), handler=handler_for(topic))
        producer = KafkaProducer(bootstrap_servers=local_settings.kafka_bootstrap)
        for topic in topics:
            producer.send(topic, key=b"k", value=b"{}")
        producer.flush(timeout=10)
        producer.close()
        deadline = time.monotonic() + 30
        while len(delivered) < mappings and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):  # best effort: a leftover test topic harms nothing
            admin.delete_topics(topics)
        admin.close()
    missing = [t for t in topics if t not in delivered]
    assert not missing, (
        f"{len(missing)} of {mappings} mappings were never assigned their topic's partition "
        f"(delivered after {sorted(round(v, 1) for v in delivered.values())} s)"
    )


def test_esm_waits_for_a_handler_that_does_not_exist_yet(
    local_settings: LocalSettings,
    make_topic: Callable[..., str],
    make_producer: Callable[..., Any],
    run_mapping: Callable[..., EventSourceMapping],
    tmp_path: Path,
) -> None:
    topic, dlq = make_topic(1), make_topic(1, prefix="dlq")
    produce(make_producer, topic, [b"early"])
    future = tmp_path / "later" / "app.py"
    config = mapping_config(local_settings, topic, dlq, function=str(future))
    mapping = run_mapping(config)
    time.sleep(0.6)
    assert mapping.invocations == 0
    assert committed_offset(local_settings, config.group_id, topic) is None  # nothing lost
    write_stand_in(future.parent)  # HOOK is None: the handler returns None, i.e. success
    wait_for(lambda: committed_offset(local_settings, config.group_id, topic) == 1, what="offset 1 committed")


# --- API Gateway ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def api(stand_in: Any, tmp_path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """The API emulator on a free port in front of the stand-in, which echoes what it got."""
    received: list[dict[str, Any]] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        received.append(event)
        raw = base64.b64decode(event["body"]) if event["isBase64Encoded"] else (event["body"] or "").encode()
        return {
            "statusCode": 201,
            "headers": {"Content-Type": "application/octet-stream", "X-Single": "one"},
            "multiValueHeaders": {"Set-Cookie": ["a=1; Path=/", "b=2; Path=/"]},
            "body": base64.b64encode(b"echo:" + raw).decode(),
            "isBase64Encoded": True,
        }

    stand_in.HOOK = hook
    gateway = ApiGateway(function=str(tmp_path / "stand_in" / "app.py"), handler=stand_in.lambda_handler)
    port = _free_port()
    server = make_server(gateway, HOST, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield port, received
    server.shutdown()
    server.server_close()


def _request(port: int, method: str, path: str, body: bytes | None, headers: list[tuple[str, str]]) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.putrequest(method, path)
    for name, value in headers:
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def test_api_passes_binary_bodies_and_multi_value_headers(api: tuple[int, list[dict[str, Any]]]) -> None:
    port, received = api
    body = bytes(range(256))  # not UTF-8
    response, data = _request(
        port,
        "POST",
        "/api/stripe-webhook?a=1&a=2&b=",
        body,
        [
            ("Content-Type", "text/plain"),
            ("X-Multi", "first"),
            ("X-Multi", "second"),
            ("Stripe-Signature", "t=1,v1=x"),
        ],
    )
    event = received[-1]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
    assert event["multiValueHeaders"]["X-Multi"] == ["first", "second"]
    assert event["headers"]["X-Multi"] == "second"
    assert event["headers"]["Stripe-Signature"] == "t=1,v1=x"
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["resource"] == "/api/stripe-webhook"
    assert event["path"] == "/api/stripe-webhook"
    assert event["httpMethod"] == "POST"
    assert event["pathParameters"] is None and event["stageVariables"] is None
    context = event["requestContext"]
    assert context["resourcePath"] == "/api/stripe-webhook" and context["httpMethod"] == "POST"
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert context["requestId"] and context["stage"]

    assert response.status == 201
    assert data == b"echo:" + body  # the base64 response body decoded
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("X-Single") == "one"
    cookies = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]


def test_api_text_body_stays_text(api: tuple[int, list[dict[str, Any]]]) -> None:
    port, received = api
    payload = json.dumps({"id": "evt_1", "note": "caf\u00e9"}).encode()
    _request(port, "POST", "/api/stripe-webhook", payload, [("Content-Type", "application/json")])
    event = received[-1]
    assert event["isBase64Encoded"] is False
    assert event["body"] == payload.decode()


@pytest.mark.parametrize(
    ("path", "resource", "params"),
    [
        ("/payment/3b0d6c1e/status", "/payment/{order_id}/status", {"order_id": "3b0d6c1e"}),
        ("/payment/pay%201/details", "/payment/{payment_id}/details", {"payment_id": "pay 1"}),
        ("/health", "/health", None),
    ],
)
def test_api_fills_resource_and_path_parameters(
    api: tuple[int, list[dict[str, Any]]], path: str, resource: str, params: dict[str, str] | None
) -> None:
    port, received = api
    response, _ = _request(port, "GET", path, None, [])
    assert response.status == 201
    event = received[-1]
    assert event["resource"] == resource
    assert event["pathParameters"] == params
    assert event["body"] is None and event["isBase64Encoded"] is False
    assert event["queryStringParameters"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/not/a/route"), ("TRACE", "/health"), ("HEAD", "/health"), ("DELETE", "/payment/x/release")],
)
def test_api_answers_what_is_not_declared_as_api_gateway_does(
    api: tuple[int, list[dict[str, Any]]], method: str, path: str
) -> None:
    port, received = api
    response, data = _request(port, method, path, None, [])
    assert response.status == 403
    assert response.getheader("x-amzn-ErrorType") == "MissingAuthenticationTokenException"
    if method != "HEAD":
        assert json.loads(data) == {"message": "Missing Authentication Token"}
    assert received == [], "the function is not invoked"


def test_api_answers_502_until_the_handler_exists(tmp_path: Path) -> None:
    gateway = ApiGateway(function=str(tmp_path / "missing" / "app.py"))
    port = _free_port()
    server = make_server(gateway, HOST, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        response, data = _request(port, "GET", "/health", None, [])
        assert response.status == 502
        assert b"does not exist yet" in data
        write_stand_in(tmp_path / "missing")  # HOOK None -> returns None: a malformed response
        response, _ = _request(port, "GET", "/health", None, [])
        assert response.status == 502
        assert gateway.handler is not None  # found and loaded on the next request
    finally:
        server.shutdown()
        server.server_close()


# --- scheduler -----------------------------------------------------------------------------


def test_scheduler_invokes_on_its_interval_and_survives_a_missing_handler(
    stand_in: Any, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []

    def hook(event: dict[str, Any]) -> dict[str, int]:
        events.append(event)
        return {"published": 0}

    stand_in.HOOK = hook
    jobs = [
        Job(str(tmp_path / "stand_in" / "app.py"), 0.1, handler=stand_in.lambda_handler),
        Job(str(tmp_path / "absent" / "app.py"), 0.1),
    ]
    scheduler = Scheduler(jobs)
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    time.sleep(0.55)
    scheduler.stop()
    thread.join(timeout=5)
    assert 3 <= len(events) <= 8
    assert events[0]["detail-type"] == "Scheduled Event" and events[0]["source"] == "aws.events"
    assert jobs[1].runs == 0 and jobs[1].failures == 0


def test_localstripe_delivers_webhooks_to_the_local_api(
    local_settings: LocalSettings, localstripe_client: Any
) -> None:
    """`local-up` registered the webhook: localstripe posts to the API emulator on 3000.

    (localstripe 1.15 sends no event for a manual-capture authorization; the capture's
    ``payment_intent.succeeded`` is the one it sends.)
    """
    intent = localstripe_client.v1.payment_intents.create(
        params={
            "amount": 1000,
            "currency": "sgd",
            "payment_method": "pm_card_visa",
            "capture_method": "manual",
            "confirm": True,
        }
    )
    localstripe_client.v1.payment_intents.capture(intent.id)

    def delivered() -> bool:
        try:
            _, data = _request(local_settings.api_port, "GET", "/_local/requests", None, [])
        except OSError:
            return False
        return any(
            r["resource"] == "/api/stripe-webhook" and intent.id in (r["body"] or "")
            for r in json.loads(data)
        )

    wait_for(delivered, timeout=20, what=f"localstripe's webhook for {intent.id} to reach the API emulator")


def test_mapping_restarts_itself_when_a_poll_hangs(local_env: dict[str, str], tmp_path: Path) -> None:
    """kafka-python has been seen to block forever in poll(); the watchdog re-executes the
    mapping (offsets are committed only after success, so nothing is lost). Forced here with a
    limit shorter than one poll."""
    env = {
        **os.environ,
        **local_env,
        "LOCAL_ESM_TOPIC": f"watchdog-probe-{uuid.uuid4().hex[:8]}",
        "LOCAL_ESM_GROUP_ID": f"watchdog-probe-{uuid.uuid4().hex[:8]}",
        "LOCAL_ESM_POLL_HANG_S": "0.01",
        "LOCAL_ESM_BATCH_WINDOW_MS": "3000",
    }
    log_path = tmp_path / "esm.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "local.stack.event_source"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and log_path.read_text().count("READY") < 2:
                time.sleep(0.5)
        finally:
            process.terminate()
            process.wait(timeout=10)
    log = log_path.read_text()
    assert "restarting the mapping" in log
    assert log.count("READY") >= 2, log[-2000:]
