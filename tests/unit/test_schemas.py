"""The committed machine-readable contract (schemas/) against the models, and every example
(events/ fixtures, README json blocks) against the committed schemas."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tools/ is local tooling, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from tools import schemas  # noqa: E402

EVENTS_DIR = REPO_ROOT / "events"
README = REPO_ROOT / "README.md"
# Fixtures that show what the service refuses: every record in them must fail validation.
EXPECTED_INVALID_PREFIXES = ("malformed_", "unknown_", "invalid_")


def _validators() -> dict[str, Draft202012Validator]:
    found: dict[str, Draft202012Validator] = {}
    for directory in ("commands", "events"):
        for path in sorted((schemas.SCHEMAS_DIR / directory).glob("*.json")):
            schema = json.loads(path.read_text())
            Draft202012Validator.check_schema(schema)
            found[path.stem] = Draft202012Validator(schema)
    return found


VALIDATORS = _validators() if schemas.SCHEMAS_DIR.is_dir() else {}


def _problems(document: Any) -> list[str]:
    """Why a command or event envelope does not match its schema (empty when it does)."""
    if not isinstance(document, dict):
        return ["not a JSON object"]
    validator = VALIDATORS.get(str(document.get("type")))
    if validator is None:
        return [f"no schema for type {document.get('type')!r}"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_committed_schemas_match_the_models() -> None:
    problems = schemas.differences()
    assert not problems, (
        "schemas/ disagrees with payments_core.domain.contracts; run `make schemas`:\n" + "\n".join(problems)
    )


def test_every_message_type_has_a_schema() -> None:
    from payments_core.domain.contracts import COMMAND_MODELS
    from payments_core.domain.events import EVENT_MODELS

    assert set(VALIDATORS) == set(COMMAND_MODELS) | set(EVENT_MODELS)


def test_schemas_accept_an_event_as_the_service_emits_it() -> None:
    from payments_core.domain.events import PaymentAuthorized, PaymentReleased, event_envelope

    authorized = event_envelope(
        "payment.authorized",
        PaymentAuthorized(payment_id="p1", order_id="o1", payment_intent_id="pi_1", amount_cents=1299),
        event_id="e1",
        correlation_id=None,
    )
    reverted = event_envelope(
        "payment.released",
        PaymentReleased(payment_id="p1", order_id="o1", status="REVERTED", message="order cancelled"),
        event_id="e2",
        correlation_id="c1",
    )
    assert _problems(authorized) == []
    assert _problems(reverted) == []
    assert _problems({**reverted, "payload": {**reverted["payload"], "status": "DONE"}})


def test_schemas_keep_the_rules_written_as_validators() -> None:
    release_without_reference = {"type": "release_payment", "payload": {"runner_id": "user_runner"}}
    assert _problems(release_without_reference)
    assert _problems({"type": "revert_payment", "payload": {"payment_id": ""}})
    assert not _problems({"type": "revert_payment", "payload": {"order_id": "o1"}})


def _msk_fixtures() -> list[Path]:
    return sorted(p for p in EVENTS_DIR.glob("*.json") if "records" in json.loads(p.read_text()))


def _records(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for batch in event["records"].values() for record in batch]


def test_events_folder_has_the_msk_fixtures() -> None:
    names = {p.name for p in _msk_fixtures()}
    assert {
        "authorize_valid.json",
        "authorize_3ds.json",
        "authorize_declined.json",
        "malformed_json.json",
        "unknown_type.json",
        "authorize_same_command_three_times.json",
        "release.json",
        "revert.json",
        "revert_before_authorize.json",
    } <= names


@pytest.mark.parametrize("path", _msk_fixtures(), ids=lambda p: p.name)
def test_msk_fixture_commands_match_the_schemas(path: Path) -> None:
    event = json.loads(path.read_text())
    records = _records(event)
    assert records, f"{path.name} has no records"
    expect_invalid = path.name.startswith(EXPECTED_INVALID_PREFIXES)
    for record in records:
        raw = base64.b64decode(record["value"], validate=True)
        try:
            problems = _problems(json.loads(raw))
        except ValueError as exc:
            problems = [f"value is not JSON: {exc}"]
        if expect_invalid:
            assert problems, f"{path.name} offset {record['offset']} is meant to be invalid but validates"
        else:
            assert problems == [], f"{path.name} offset {record['offset']}: {problems}"


def _envelope_fixtures() -> list[Path]:
    """Plain command or event envelopes in events/ (not MSK, API Gateway or Stripe events)."""
    found = []
    for path in sorted(EVENTS_DIR.glob("*.json")):
        document = json.loads(path.read_text())
        if isinstance(document, dict) and "records" not in document and document.get("type") in VALIDATORS:
            found.append(path)
    return found


@pytest.mark.parametrize("path", _envelope_fixtures(), ids=lambda p: p.name)
def test_envelope_fixtures_match_the_schemas(path: Path) -> None:
    document = json.loads(path.read_text())
    problems = _problems(document)
    if path.name.startswith(EXPECTED_INVALID_PREFIXES):
        assert problems
    else:
        assert problems == [], f"{path.name}: {problems}"


def _looks_like_ours(message_type: Any) -> bool:
    """Our commands and events, or a misspelling of one; not a Stripe event type."""
    if not isinstance(message_type, str):
        return False
    return (
        message_type in VALIDATORS or message_type.endswith("_payment") or message_type.startswith("payment.")
    )


def _readme_examples() -> list[tuple[str, Any]]:
    if not README.is_file():
        return []
    examples = []
    for number, block in enumerate(re.findall(r"```json\s*\n(.*?)```", README.read_text(), re.S), 1):
        try:
            document = json.loads(block)
        except ValueError:
            continue  # e.g. two one-line objects in one block, or an abridged shape
        if isinstance(document, dict) and _looks_like_ours(document.get("type")):
            examples.append((f"README json block {number} ({document['type']})", document))
    return examples


@pytest.mark.parametrize(("where", "document"), _readme_examples(), ids=[w for w, _ in _readme_examples()])
def test_readme_examples_match_the_schemas(where: str, document: Any) -> None:
    assert _problems(document) == [], f"{where}: {_problems(document)}"


# ---- API Gateway fixtures: each is a request the API function routes, with a body it accepts ----

API_FIXTURES = {
    # fixture: (method, resource, the answer with no payments stored)
    "api_payment_status.json": ("GET", "/payment/{order_id}/status", 404),
    "api_payment_details.json": ("GET", "/payment/{payment_id}/details", 404),
    "api_release.json": ("POST", "/payment/{payment_id}/release", 404),
    "api_revert.json": ("POST", "/payment/{payment_id}/revert", 404),
    "api_history.json": ("GET", "/history/{user_id}", 200),
}


class _EmptyDb:
    """A database with no payments: enough to see the request reach its route function."""

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return []


def test_events_folder_has_an_api_fixture_for_every_saga_route() -> None:
    from local.stack.api_events import ROUTES

    on_disk = {p.name for p in EVENTS_DIR.glob("api_*.json")} - {"api_stripe_webhook.json"}
    assert on_disk == set(API_FIXTURES)
    served = set(ROUTES) - {("POST", "/api/stripe-webhook"), ("GET", "/health")}
    assert {(method, resource) for method, resource, _ in API_FIXTURES.values()} == served


@pytest.mark.parametrize("name", sorted(API_FIXTURES))
def test_api_fixture_is_routed_and_its_body_accepted(name: str) -> None:
    from payments_core.adapters.services import Services, set_services
    from payments_core.config import get_settings
    from payments_core.entrypoints import api

    method, resource, expected = API_FIXTURES[name]
    event = json.loads((EVENTS_DIR / name).read_text())
    assert (event["httpMethod"], event["resource"]) == (method, resource)
    assert event["requestContext"]["resourcePath"] == resource
    path = resource
    for param, value in event["pathParameters"].items():
        path = path.replace("{" + param + "}", value)
    assert event["path"] == path and event["requestContext"]["path"].endswith(path)

    set_services(Services(db=_EmptyDb(), stripe=None, publisher=None, settings=get_settings()))  # type: ignore[arg-type]
    try:
        response = api.app.resolve(event, None)  # type: ignore[arg-type]
    finally:
        set_services(None)
    body = json.loads(response["body"])
    # A 404 "Payment not found" comes from the route function after the body was accepted (a bad
    # body is a 400 first); an unrouted request is a 404 "No such route".
    assert response["statusCode"] == expected, body
    if expected == 404:
        assert body == {"success": False, "error": "NOT_FOUND", "message": "Payment not found"}
    else:
        assert body["userId"] == event["pathParameters"]["user_id"] and body["spentCount"] == 0
