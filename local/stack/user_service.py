"""A local stand-in for campusG's user service, in memory.

A local stand-in for campusG's user service: the routes the payment service and the tests
use, with campusG's answers, in memory (like localstripe, a double of an outside service).

    python -m local.stack.user_service          (started by `make local-up` on 127.0.0.1:3003)

- ``GET /api/user/{id}`` → ``200 {"success": true, "user": {"clerkUserId", "stripeConnectAccountId",
  "stripeCustomerId", ...}}``; unknown: ``404 {"success": false, "message": "User not found"}``
- ``GET /api/user/{id}/connect-account`` → ``200 {"success": true, "stripe_connect_account_id"}``
- ``PUT /api/user/{id}/connect-account`` with ``{"stripe_connect_account_id": "acct_…"}`` →
  ``200 {"success": true, "stripe_connect_account_id"}``. Unlike campusG (whose users come from
  Clerk), an unknown user is created here, so a test or the demo registers a runner in one call.
- ``PUT /_users/{id}`` (stand-in only, like localstripe's ``/_config``): replace a user with
  ``{"stripeConnectAccountId", "stripeCustomerId"}``, to play a runner who is also a customer.
- ``POST /_outage`` with ``{"status": 503}`` (stand-in only): answer every ``/api`` request with
  that status until ``{"status": null}``; the tests' "user service down".

Starts with the users of ``local.stack.campus_users``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from local.stack.campus_users import SEED_USERS
from local.stack.settings import HOST, load

log = logging.getLogger("local.stack.user_service")
_USER = re.compile(r"^/api/user/([^/]+)$")
_CONNECT = re.compile(r"^/api/user/([^/]+)/connect-account$")
_STAND_IN_USER = re.compile(r"^/_users/([^/]+)$")
_MAX_BODY = 64 * 1024


class Directory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}
        self.outage: int | None = None
        for seed in SEED_USERS:
            self.put(seed.user_id, seed.stripe_connect_account_id, seed.stripe_customer_id)

    def put(self, user_id: str, account: str | None, customer: str | None) -> dict[str, Any]:
        user = {
            "clerkUserId": user_id,
            "stripeConnectAccountId": account,
            "stripeCustomerId": customer,
        }
        with self._lock:
            self._users[user_id] = user
        return dict(user)

    def get(self, user_id: str) -> dict[str, Any] | None:
        with self._lock:
            user = self._users.get(user_id)
            return dict(user) if user else None

    def set_account(self, user_id: str, account: str) -> None:
        with self._lock:
            user = self._users.setdefault(
                user_id, {"clerkUserId": user_id, "stripeConnectAccountId": None, "stripeCustomerId": None}
            )
            user["stripeConnectAccountId"] = account


def make_server(directory: Directory, host: str, port: int) -> ThreadingHTTPServer:
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "local-user-service"

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> dict[str, Any] | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                return None
            try:
                data = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return None
            return data if isinstance(data, dict) else None

        def _path(self) -> str:
            return urllib.parse.urlsplit(self.path).path

        def _down(self) -> bool:
            if directory.outage is not None and self._path().startswith("/api/"):
                self._answer(directory.outage, {"success": False, "message": "Service unavailable"})
                return True
            return False

        def do_GET(self) -> None:
            if self._down():
                return
            path = self._path()
            if match := _USER.match(path):
                user = directory.get(urllib.parse.unquote(match.group(1)))
                if user is None:
                    self._answer(404, {"success": False, "message": "User not found"})
                else:
                    self._answer(200, {"success": True, "user": user})
                return
            if match := _CONNECT.match(path):
                user = directory.get(urllib.parse.unquote(match.group(1)))
                if user is None:
                    self._answer(404, {"success": False, "message": "User not found"})
                else:
                    account = user["stripeConnectAccountId"]
                    self._answer(200, {"success": True, "stripe_connect_account_id": account})
                return
            self._answer(404, {"success": False, "message": "Not found"})

        def do_PUT(self) -> None:
            if self._down():
                return
            path = self._path()
            body = self._body()
            if body is None:
                self._answer(400, {"success": False, "message": "body must be a JSON object"})
                return
            if match := _CONNECT.match(path):
                account = body.get("stripe_connect_account_id")
                if not isinstance(account, str) or not account.startswith("acct_"):
                    self._answer(400, {"success": False, "message": "stripe_connect_account_id is required"})
                    return
                directory.set_account(urllib.parse.unquote(match.group(1)), account)
                self._answer(200, {"success": True, "stripe_connect_account_id": account})
                return
            if match := _STAND_IN_USER.match(path):
                user = directory.put(
                    urllib.parse.unquote(match.group(1)),
                    body.get("stripeConnectAccountId"),
                    body.get("stripeCustomerId"),
                )
                self._answer(200, {"success": True, "user": user})
                return
            self._answer(404, {"success": False, "message": "Not found"})

        def do_POST(self) -> None:
            body = self._body()
            if self._path() == "/_outage" and body is not None:
                status = body.get("status")
                directory.outage = int(status) if status else None
                self._answer(200, {"success": True, "outage": directory.outage})
                return
            self._answer(404, {"success": False, "message": "Not found"})

        def log_message(self, format: str, *args: Any) -> None:
            log.info(format, *args)

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s user-service %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    settings = load()
    server = make_server(Directory(), HOST, settings.user_service_port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("READY: %s (%d users seeded)", settings.user_service_url, len(SEED_USERS))
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.5)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
