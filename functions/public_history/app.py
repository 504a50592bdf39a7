"""PLACEHOLDER, written by the infrastructure change (issue 17) only so the stack synthesizes:
the real function (Clerk session check, then the student's own history) replaces this file.
Until then the route answers 503 and reads nothing."""

import json
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "statusCode": 503,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": "public history is not deployed yet"}),
    }
