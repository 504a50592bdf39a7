"""A local stand-in for campusG's Clerk issuer: its JWKS, and session tokens signed with its key.

A local stand-in for campusG's Clerk instance: an RS256 key and its JWKS, and session tokens
signed with it, so the public history function verifies tokens locally exactly as in AWS.

    python -m local.stack.issuer                       (started by `make local-up` on 127.0.0.1:3002)
    python -m local.stack.issuer token USER [--origin O] [--ttl 60]    (`make -s local-token USER=...`)

The server makes a fresh 2048-bit RSA key at each start into the stack's state directory
(``.local/issuer/signing-key.pem``, git-ignored, mode 0600) and serves its public half at
``/.well-known/jwks.json``. ``token`` reads that key and prints a token shaped like Clerk's
session tokens: ``sub`` (the user), ``sid``, ``azp`` (the page's origin), ``iss``, ``iat``,
``nbf`` and ``exp`` 60 s ahead, ``kid`` in the header. Tests mint their own variants with
``session_token(...)``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from local.stack.settings import FRONTEND_ORIGIN, HOST, LocalSettings, load

log = logging.getLogger("local.stack.issuer")
JWKS_PATH = "/.well-known/jwks.json"
TOKEN_TTL_SECONDS = 60  # Clerk's session tokens live 60 s
_ABSENT = object()


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_private_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key: Any) -> dict[str, str]:
    """The JWK of the key's public half, its kid the RFC 7638 thumbprint."""
    numbers = private_key.public_key().public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    kid = "ins_local_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:22]
    return {**members, "kid": kid, "use": "sig", "alg": "RS256"}


def write_key(path: Path, private_key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    partial.replace(path)


def read_key(settings: LocalSettings | None = None) -> Any:
    from cryptography.hazmat.primitives import serialization

    path = (settings or load()).issuer_key_path
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SystemExit(
            f"local-token: no issuer key at {path}: start the local stack first (`make local-up`)"
        ) from exc
    return serialization.load_pem_private_key(data, password=None)


def session_token(
    user_id: str,
    *,
    origin: str | None = None,
    settings: LocalSettings | None = None,
    ttl_seconds: int = TOKEN_TTL_SECONDS,
    now: float | None = None,
    private_key: Any = None,
    kid: str | None = None,
    algorithm: str = "RS256",
    **claims: Any,
) -> str:
    """A Clerk-shaped session token for ``user_id`` signed by the local issuer's key (or the
    given one). A keyword claim overrides the default one; ``_ABSENT``-valued claims
    (``without("sid")``) are left out."""
    import jwt

    s = settings or load()
    key = private_key if private_key is not None else read_key(s)
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "azp": origin or s.frontend_origins.split(",")[0].strip() or FRONTEND_ORIGIN,
        "exp": issued + ttl_seconds,
        "iat": issued,
        "iss": s.issuer_url,
        "nbf": issued - 10,  # Clerk back-dates nbf by 10 s for clock skew
        "sid": f"sess_local_{uuid.uuid4().hex[:20]}",
        "sub": user_id,
        "v": 2,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not _ABSENT}
    headers = {"kid": kid if kid is not None else public_jwk(key)["kid"]}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def without(*names: str) -> dict[str, Any]:
    """Claims to leave out of ``session_token``: ``session_token(u, **without("sid"))``."""
    return dict.fromkeys(names, _ABSENT)


def make_server(jwks: dict[str, Any], host: str, port: int) -> ThreadingHTTPServer:
    body = json.dumps(jwks).encode()

    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "local-issuer"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != JWKS_PATH:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info(format, *args)

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def serve() -> int:
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s issuer %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    settings = load()
    key = new_private_key()
    write_key(settings.issuer_key_path, key)
    jwk = public_jwk(key)
    server = make_server({"keys": [jwk]}, HOST, settings.issuer_port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("READY: %s%s (kid %s)", settings.issuer_url, JWKS_PATH, jwk["kid"])
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.5)
    server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.stack.issuer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_token = sub.add_parser("token", help="print a session token for a user")
    p_token.add_argument("user", help="the Clerk user id (the token's sub)")
    p_token.add_argument("--origin", default="", help="the token's azp (default: the frontend's origin)")
    p_token.add_argument("--ttl", type=int, default=TOKEN_TTL_SECONDS, help="seconds until exp")
    args = parser.parse_args(argv)
    if args.command == "token":
        if not args.user:
            parser.error("a user id is required")
        print(session_token(args.user, origin=args.origin or None, ttl_seconds=args.ttl))
        return 0
    return serve()


if __name__ == "__main__":
    sys.exit(main())
