"""Re-sign the Stripe webhook inside an API Gateway event with the current time, so the 300 s
tolerance accepts it, and print the event (for `make invoke-webhook` or a pipe into
`python -m local.stack.invoke payment_api -`). The secret is STRIPE_WEBHOOK_SECRET, else the local one.

    python scripts/sign_webhook_event.py events/api_stripe_webhook.json
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path

LOCAL_WEBHOOK_SECRET = "whsec_campusg_local"  # noqa: S105 - the local stack's test-only secret


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    event = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    body = event.get("body") or ""
    payload = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")
    header = sign(payload, os.environ.get("STRIPE_WEBHOOK_SECRET", LOCAL_WEBHOOK_SECRET), int(time.time()))
    event.setdefault("headers", {})["Stripe-Signature"] = header
    event.setdefault("multiValueHeaders", {})["Stripe-Signature"] = [header]
    print(json.dumps(event, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
