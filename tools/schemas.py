"""Generate the machine-readable contract from the message models in payments_core.domain.contracts.

    python -m tools.schemas            # write schemas/ (make schemas)
    python -m tools.schemas --check    # exit 1 if schemas/ differs from the models

One JSON Schema per command (the envelope with that command's payload) under
``schemas/commands/`` and per event (envelope with event_id, source, correlation_id,
timestamp and payload) under ``schemas/events/``, plus ``schemas/asyncapi.yaml`` describing
the two topics with messages referencing those files. Output is deterministic (sorted keys,
trailing newline) so the committed files can be compared with a fresh rendering.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from payments_core.domain.contracts import (
    COMMAND_MODELS,
    EVENT_MODELS,
    CommandEnvelope,
    Order,
    ReleasePayment,
    RevertPayment,
)
from pydantic import BaseModel, ConfigDict, Field, create_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = REPO_ROOT / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMMANDS_TOPIC = "payment_commands"
EVENTS_TOPIC = "payment_events"


def command_path(command_type: str) -> str:
    return f"commands/{command_type}.json"


def event_path(event_type: str) -> str:
    return f"events/{event_type}.json"


class _EventEnvelope(BaseModel):
    """What ``payments_core.domain.contracts.event_envelope`` emits, as a model (payload set per event)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    event_id: str = Field(description="Extension: the same id every time the same state change is announced")
    source: Literal["payment-service"] = Field(description="Always 'payment-service' (contracts.SOURCE)")
    correlation_id: str | None = Field(
        description="The saga's id: the command's, or the one stored with the payment for webhook-driven events"
    )
    timestamp: str = Field(
        description="ISO-8601 UTC with an explicit offset", json_schema_extra={"format": "date-time"}
    )
    payload: dict[str, Any]


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace(".", "_").split("_"))


def _rules_pydantic_cannot_express(schema: dict[str, Any], payload_model: type[BaseModel]) -> None:
    """Validators written in Python (not types) that the wire contract still promises."""
    defs = schema.get("$defs", {})
    if issubclass(payload_model, ReleasePayment | RevertPayment):
        # _ByPaymentOrOrder._one_reference: one of the two references, non-empty.
        defs[payload_model.__name__]["anyOf"] = [
            {"required": [key], "properties": {key: {"type": "string", "minLength": 1}}}
            for key in ("payment_id", "order_id")
        ]
    if Order.__name__ in defs:
        # Order._currency; the minimum amount is configuration (MINIMUM_AMOUNT_CENTS), not schema.
        currency = defs[Order.__name__]["properties"]["currency"]
        for option in currency.get("anyOf", []):
            if option.get("type") == "string":
                option["pattern"] = "^[a-z]{3}$"


def command_schema(command_type: str) -> dict[str, Any]:
    payload_model = COMMAND_MODELS[command_type]
    envelope = create_model(
        f"{_pascal(command_type)}Command",
        __base__=CommandEnvelope,
        __doc__=f"The `{command_type}` command on `{COMMANDS_TOPIC}`: envelope and payload.",
        type=(Literal[command_type], ...),  # type: ignore[arg-type]
        payload=(payload_model, ...),
    )
    schema: dict[str, Any] = envelope.model_json_schema(by_alias=True, mode="validation")
    _rules_pydantic_cannot_express(schema, payload_model)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": command_path(command_type), **schema}


def event_schema(event_type: str) -> dict[str, Any]:
    payload_model = EVENT_MODELS[event_type]
    envelope = create_model(
        f"{_pascal(event_type)}Event",
        __base__=_EventEnvelope,
        __doc__=f"The `{event_type}` event on `{EVENTS_TOPIC}` (Kafka key: order_id): envelope and payload.",
        type=(Literal[event_type], ...),  # type: ignore[arg-type]
        payload=(payload_model, ...),
    )
    schema: dict[str, Any] = envelope.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": event_path(event_type), **schema}


SUMMARIES = {
    "authorize_payment": "Place a hold (manual-capture PaymentIntent) for an order.",
    "release_payment": "Capture the held funds and pay the runner.",
    "revert_payment": "Compensation: cancel the hold or refund the capture.",
    "payment.authorized": "The hold is in place; the saga stores payment_id and moves on.",
    "payment.requires_action": "Extension: Stripe needs the customer (3-D Secure); the outcome follows.",
    "payment.failed": "The authorization or a later step failed; the saga reads `error`.",
    "payment.released": "Released: status SUCCEEDED (captured, runner paid) or REVERTED.",
}


def asyncapi_document() -> dict[str, Any]:
    def message(name: str, ref: str, summary: str, keyed: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "payload": {"$ref": f"./{ref}"},
        }
        if keyed:
            doc["bindings"] = {
                "kafka": {"key": {"type": "string", "description": "order_id"}, "bindingVersion": "0.5.0"}
            }
        return doc

    commands = {
        name: message(name, command_path(name), SUMMARIES.get(name, name), False) for name in COMMAND_MODELS
    }
    events = {name: message(name, event_path(name), SUMMARIES.get(name, name), True) for name in EVENT_MODELS}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "campusG payment service",
            "version": "1.0.0",
            "description": (
                "Commands from the campusG create-order saga and the events the payment service "
                "answers with. Generated by `make schemas` from payments_core.domain.contracts; do not edit."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "paymentCommands": {
                "address": COMMANDS_TOPIC,
                "description": "Commands to the payment service. The orchestrator sends no key.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in commands},
            },
            "paymentEvents": {
                "address": EVENTS_TOPIC,
                "description": "Events of the payment service, keyed by order_id, delivered at least once.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in events},
            },
        },
        "operations": {
            "receivePaymentCommands": {
                "action": "receive",
                "channel": {"$ref": "#/channels/paymentCommands"},
                "messages": [{"$ref": f"#/channels/paymentCommands/messages/{name}"} for name in commands],
            },
            "sendPaymentEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/paymentEvents"},
                "messages": [{"$ref": f"#/channels/paymentEvents/messages/{name}"} for name in events],
            },
        },
        "components": {"messages": {**commands, **events}},
    }


# ---- rendering --------------------------------------------------------------------------------


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(str(value), ensure_ascii=False)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{key if str(key).isidentifier() else _yaml_scalar(key)}:"
            if isinstance(item, dict | list) and item:
                lines.append(head)
                lines.extend(_yaml_lines(item, indent + 2))
            elif isinstance(item, dict | list):
                lines.append(f"{head} {'{}' if isinstance(item, dict) else '[]'}")
            else:
                lines.append(f"{head} {_yaml_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    return lines


def yaml_text(document: dict[str, Any]) -> str:
    """A small, deterministic YAML emitter for plain data (keeps insertion order)."""
    header = (
        "# Generated by `make schemas` (tools/schemas.py) from payments_core.domain.contracts; do not edit.\n"
    )
    return header + "\n".join(_yaml_lines(document, 0)) + "\n"


def render() -> dict[str, str]:
    """Every file of schemas/, path relative to it -> content."""
    files = {command_path(name): _json_text(command_schema(name)) for name in COMMAND_MODELS}
    files.update({event_path(name): _json_text(event_schema(name)) for name in EVENT_MODELS})
    files["asyncapi.yaml"] = yaml_text(asyncapi_document())
    return files


def committed(directory: Path = SCHEMAS_DIR) -> dict[str, str]:
    if not directory.is_dir():
        return {}
    return {
        p.relative_to(directory).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def differences(directory: Path = SCHEMAS_DIR) -> list[str]:
    wanted, present = render(), committed(directory)
    problems = [f"missing: schemas/{p}" for p in sorted(wanted.keys() - present.keys())]
    problems += [f"not generated (stale?): schemas/{p}" for p in sorted(present.keys() - wanted.keys())]
    problems += [
        f"differs: schemas/{p}" for p in sorted(wanted.keys() & present.keys()) if wanted[p] != present[p]
    ]
    return problems


def write(directory: Path = SCHEMAS_DIR) -> list[str]:
    wanted = render()
    for stale in committed(directory).keys() - wanted.keys():
        (directory / stale).unlink()
    changed = []
    for relative, text in wanted.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(relative)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.schemas", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when schemas/ is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(line)
        if problems:
            print("schemas/ is out of date: run `make schemas`", file=sys.stderr)
            return 1
        print(f"schemas/ matches the models ({len(render())} files)")
        return 0
    changed = write()
    total = len(render())
    print(
        f"schemas/: {total} files, {len(changed)} updated" + (f" ({', '.join(changed)})" if changed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
