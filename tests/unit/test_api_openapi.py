"""The committed OpenAPI document (docs/openapi.json) must describe the routes as they are:
regenerate it with `make openapi` after changing a route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from payments_core.entrypoints.api import app, openapi_document

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_document_matches_the_routes() -> None:
    assert DOCUMENT.is_file(), "docs/openapi.json is missing: run `make openapi`"
    committed = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert committed == json.loads(openapi_document()), "docs/openapi.json is stale: run `make openapi`"


def test_document_lists_every_route() -> None:
    document = json.loads(openapi_document())
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    routes = {(r.method, r.openapi_path) for r in app._static_routes + app._dynamic_routes}
    assert (
        documented
        == routes
        == {
            ("POST", "/api/stripe-webhook"),
            ("GET", "/payment/{order_id}/status"),
            ("GET", "/payment/{payment_id}/details"),
            ("POST", "/payment/{payment_id}/release"),
            ("POST", "/payment/{payment_id}/revert"),
            ("GET", "/history/{user_id}"),
            ("GET", "/health"),
        }
    )
    for path, ops in document["paths"].items():
        for op in ops.values():
            assert "422" not in op["responses"], path  # this API answers 400, not 422


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def test_release_documents_its_required_body() -> None:
    document = json.loads(openapi_document())
    operation = document["paths"]["/payment/{payment_id}/release"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert _schema(document, body["content"]["application/json"]["schema"])["required"] == [
        "runner_id",
        "runner_connect_account_id",
    ]
    assert {"202", "400", "404", "409"} <= set(operation["responses"])


def test_document_says_what_the_code_enforces() -> None:
    document = json.loads(openapi_document())
    paths = document["paths"]
    webhook = paths["/api/stripe-webhook"]["post"]
    (signature,) = webhook["parameters"]
    assert (signature["name"].lower(), signature["in"], signature["required"]) == (
        "stripe-signature",
        "header",
        True,
    )
    assert "400" in webhook["responses"]
    revert = paths["/payment/{payment_id}/revert"]["post"]
    assert revert["requestBody"].get("required", False) is False  # the body is optional
    release = _schema(
        document,
        paths["/payment/{payment_id}/release"]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ],
    )
    amount = release["properties"]["amount_to_capture"]["anyOf"][0]
    assert amount == {"type": "integer", "maximum": 99999999, "exclusiveMinimum": 0}
    assert release["properties"]["runner_id"]["pattern"] == "^[^\\u0000]*$"
    for path, operations in paths.items():
        for operation in operations.values():
            if operation.get("parameters") or operation.get("requestBody"):
                assert "400" in operation["responses"], path  # every validation error is a 400
            for body in operation.get("requestBody", {}).get("content", {}):
                assert body == "application/json", path
