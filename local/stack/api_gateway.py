"""The local API Gateway (REST API, Lambda proxy integration), like ``sam local start-api``.

    python -m local.stack.api_gateway            (started by `make local-up` on 127.0.0.1:3000)
    python -m local.stack.api_gateway --public   (the public face, on 127.0.0.1:3001)

Two faces, as in AWS. The private one (``API_URL``) serves ``payment_api``'s routes to the
sagas; locally it also answers CORS for the frontend's origins (``FRONTEND_ORIGINS``) itself,
as an API Gateway with CORS enabled would, so campusG's unmodified profile page can fetch
``/history/{user_id}`` from the browser (in AWS the private API is reachable only inside the
VPC, never from a browser). The public one (``PUBLIC_API_URL``) serves only
``GET``/``OPTIONS /history/{user_id}`` to ``public_history``, which answers CORS itself.

Both read their routes from ``payments_core.entrypoints.routes`` (the list the resolver, the public face
and the CDK read) and, as API Gateway does, answer any method or path not declared there
(``TRACE``, ``HEAD`` of a ``GET`` route, an unknown path) with 403 ``{"message":"Missing
Authentication Token"}`` without invoking the function.

Each HTTP request becomes an API Gateway REST proxy event; the handler's ``statusCode``,
``headers``, ``multiValueHeaders`` and ``body`` are returned as they are (a base64 body is
decoded when ``isBase64Encoded``). Request bodies that are not UTF-8 text, or whose content
type is a binary media type, arrive base64-encoded with ``isBase64Encoded: true``, as API
Gateway does with binary media types configured.

One warm container: the handler module is imported once and invoked one request at a time
(the service's database connection is per container, not per thread). A handler file that
does not exist yet answers 502 and is looked for again on the next request.

``GET /_local/requests`` (answered by the emulator itself) lists the last requests with their
bodies and statuses: what Stripe's emulator actually posted, for example.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from local.stack.api_events import (
    DEFAULT_BINARY_MEDIA_TYPES,
    PUBLIC_ROUTES,
    ROUTES,
    Route,
    build_event,
    compile_routes,
    proxy_response,
)
from local.stack.lambda_runtime import (
    FakeLambdaContext,
    Handler,
    function_name_of,
    handler_path,
    load_handler,
)
from local.stack.settings import HOST, load

log = logging.getLogger("local.stack.api_gateway")

MISSING_TOKEN_HEADERS = [
    ("Content-Type", "application/json"),
    ("x-amzn-ErrorType", "MissingAuthenticationTokenException"),
]
MISSING_TOKEN_BODY = json.dumps({"message": "Missing Authentication Token"}).encode()
CORS_ALLOWED_METHODS = "GET, POST, OPTIONS"
CORS_ALLOWED_HEADERS = "Authorization, Content-Type"
ADMIN_PATH = "/_local/requests"  # the emulator's own: recent requests, for tests and debugging
RECENT_REQUESTS = 100


@dataclass
class ApiGateway:
    """The handler behind the routes; invoked one request at a time."""

    function: str = "payment_api"
    handler: Handler | None = None
    routes: list[Route] = field(default_factory=lambda: compile_routes(ROUTES))
    binary_media_types: tuple[str, ...] = DEFAULT_BINARY_MEDIA_TYPES
    timeout_seconds: float = 29.0  # API Gateway's integration limit
    # origins answered CORS by the gateway itself (the private face, locally); empty: none
    cors_origins: tuple[str, ...] = ()
    # an undeclared path or method is answered 403 here (API Gateway), not forwarded
    strict_routes: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # the last requests, served at GET /_local/requests (never forwarded to the handler)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))

    def remember(self, event: dict[str, Any], status: int, elapsed_ms: float) -> None:
        self.recent.append(
            {
                "time": event["requestContext"]["requestTimeEpoch"],
                "requestId": event["requestContext"]["requestId"],
                "httpMethod": event["httpMethod"],
                "path": event["path"],
                "resource": event["resource"],
                "statusCode": status,
                "durationMs": round(elapsed_ms, 1),
                "body": (event["body"] or "")[:65536],
                "isBase64Encoded": event["isBase64Encoded"],
            }
        )

    def declared(self, method: str, path: str) -> bool:
        return any(r.method == method and r.regex.match(path) for r in self.routes)

    def cors_for(self, origin: str | None) -> list[tuple[str, str]]:
        if not origin or origin not in self.cors_origins:
            return []
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    def _load(self) -> Handler:
        if self.handler is None:
            self.handler = load_handler(handler_path(self.function))
            log.info("handler %s loaded (cold start)", handler_path(self.function))
        return self.handler

    def invoke(self, event: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run the handler; returns status, header pairs and body bytes for the HTTP reply."""
        with self._lock:
            try:
                handler = self._load()
            except FileNotFoundError:
                message = f"handler {handler_path(self.function)} does not exist yet"
                log.warning(message)
                return _error(502, message)
            except Exception:
                log.error("importing the handler failed\n%s", traceback.format_exc())
                return _error(502, "handler import failed (see the api-gateway log)")
            context = FakeLambdaContext(function_name_of(self.function), timeout_seconds=self.timeout_seconds)
            try:
                response = handler(event, context)
            except Exception:
                log.error("handler raised\n%s", traceback.format_exc())
                return _error(502, "Internal server error")
        try:
            return proxy_response(response)
        except (TypeError, ValueError) as exc:
            log.error("malformed Lambda proxy response (%s): %r", exc, response)
            return _error(502, "Internal server error")


def _error(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps({"message": message}).encode()


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def make_server(gateway: ApiGateway, host: str, port: int) -> ThreadingHTTPServer:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "local-api-gateway"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            started = time.monotonic()
            if self.command == "GET" and urlsplit(self.path).path == ADMIN_PATH:
                self._reply(
                    200, [("Content-Type", "application/json")], json.dumps(list(gateway.recent)).encode()
                )
                return
            origin = self.headers.get("Origin")
            path_only = urlsplit(self.path).path or "/"
            if gateway.cors_origins and self.command == "OPTIONS" and origin:
                # a preflight, answered by the gateway (API Gateway's CORS mock integration)
                cors = gateway.cors_for(origin)
                if cors:
                    cors += [
                        ("Access-Control-Allow-Methods", CORS_ALLOWED_METHODS),
                        ("Access-Control-Allow-Headers", CORS_ALLOWED_HEADERS),
                        ("Access-Control-Max-Age", "600"),
                    ]
                self._reply(204, cors, b"")
                return
            if gateway.strict_routes and not gateway.declared(self.command, path_only):
                self._reply(403, list(MISSING_TOKEN_HEADERS), MISSING_TOKEN_BODY)
                return
            event = build_event(
                method=self.command,
                raw_path=self.path,
                header_items=list(self.headers.items()),
                body=body,
                source_ip=self.client_address[0],
                routes=gateway.routes,
                binary_media_types=gateway.binary_media_types,
                host=f"{host}:{port}",
            )
            status, pairs, data = gateway.invoke(event)
            if not any(name.lower() == "access-control-allow-origin" for name, _ in pairs):
                pairs.extend(gateway.cors_for(origin))
            pairs.append(("x-amzn-RequestId", event["requestContext"]["requestId"]))
            self._reply(status, pairs, data)
            elapsed_ms = (time.monotonic() - started) * 1000
            gateway.remember(event, status, elapsed_ms)
            log.info(
                "%s %s -> %d (%s, %.0f ms)", self.command, self.path, status, event["resource"], elapsed_ms
            )

        def _reply(self, status: int, pairs: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for name, value in pairs:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def __getattr__(self, name: str) -> Any:
            # Every method reaches _handle (http.server answers an unknown one 501 itself):
            # API Gateway answers TRACE, or any method it was not given, 403 like a wrong path.
            if name.startswith("do_"):
                return self._handle
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s api-gateway %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    parser = argparse.ArgumentParser(prog="python -m local.stack.api_gateway")
    parser.add_argument(
        "--public", action="store_true", help="the public face (the frontend's history route)"
    )
    public = parser.parse_args(argv).public
    settings = load()
    extra_binary = tuple(t for t in os.environ.get("LOCAL_API_BINARY_MEDIA_TYPES", "").split(",") if t)
    if public:
        function = os.environ.get("LOCAL_PUBLIC_API_FUNCTION") or "public_history"
        routes, port = PUBLIC_ROUTES, settings.public_api_port
        gateway = ApiGateway(
            function=function,
            routes=compile_routes(routes),
            binary_media_types=DEFAULT_BINARY_MEDIA_TYPES + extra_binary,
        )
    else:
        function = os.environ.get("LOCAL_API_FUNCTION") or "payment_api"
        routes, port = ROUTES, settings.api_port
        origins = tuple(o.strip().rstrip("/") for o in settings.frontend_origins.split(",") if o.strip())
        gateway = ApiGateway(
            function=function,
            binary_media_types=DEFAULT_BINARY_MEDIA_TYPES + extra_binary,
            cors_origins=origins,
        )
    server = make_server(gateway, HOST, port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    if not handler_path(function).is_file():
        log.warning(
            "handler %s does not exist yet; requests answer 502 until it does", handler_path(function)
        )
    log.info("READY: http://%s:%d -> %s", HOST, port, handler_path(function))
    for method, template in routes:
        log.info("  %-5s %s", method, template)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.5)
    server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
