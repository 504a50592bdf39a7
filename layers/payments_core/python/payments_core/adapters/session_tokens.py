"""Clerk session tokens: the bearer token campusG's frontend sends (``await getToken()``).

A session token is an RS256 JWT signed by the Clerk instance's keys, published as a JWKS at the
issuer. The same keys also sign JWT-template tokens, which carry no ``sid``: only a token with a
session id is a session token. What is checked, in order, each failure an ``InvalidToken``:

- the shape (three base64url parts, at most ``MAX_TOKEN_CHARS``) before any decoding;
- the header's ``alg`` is ``RS256`` (pinned: ``none``, ``HS256`` with the public key as the
  secret, or any other algorithm is refused before a key is chosen) and ``kid`` names a key of
  the issuer's JWKS;
- the signature, then ``iss`` equal to the configured issuer, ``exp``, ``nbf`` and ``iat``
  present, ``exp`` and ``nbf`` within the leeway, ``azp`` one of the frontend's origins,
  ``sid`` and ``sub`` non-empty strings.

The JWKS is cached for the container's life (refreshed after ``JWKS_MAX_AGE_SECONDS``, keeping
the old keys if the refresh fails). A token naming an unknown ``kid`` (the issuer rotated its
keys) triggers one refetch at most every ``JWKS_REFETCH_INTERVAL_SECONDS``, so a flood of forged
``kid`` values costs one request to the issuer per interval, not one per token.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

ALGORITHM = "RS256"
MAX_TOKEN_CHARS = 8192  # Clerk's session tokens are ~1 KB; API Gateway allows 10 KB of headers
JWKS_REFETCH_INTERVAL_SECONDS = 30.0
JWKS_RETRY_AFTER_FAILURE_SECONDS = 5.0
JWKS_MAX_AGE_SECONDS = 3600.0
JWKS_TIMEOUT_SECONDS = 3.0
JWKS_MAX_BYTES = 256 * 1024
REQUIRED_CLAIMS = ("exp", "nbf", "iat", "iss", "sub")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class InvalidToken(Exception):
    """The token cannot be accepted (answered 401); ``reason`` says why, for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(Exception):
    """The issuer's JWKS could not be read and no key is cached (answered 503: the token may be
    fine)."""


@dataclass(frozen=True)
class SessionClaims:
    user_id: str  # sub
    session_id: str  # sid
    origin: str  # azp


Fetch = Callable[[str], bytes]


def fetch_url(url: str) -> bytes:
    """GET the JWKS, at most ``JWKS_MAX_BYTES`` (+1, to tell a larger one). HTTPS only, but for a
    loopback address (the local issuer): keys read over plain HTTP could be anyone's."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise ValueError(f"the JWKS URL must be https (http only on a loopback address), got {url!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (scheme checked)
    with urllib.request.urlopen(request, timeout=JWKS_TIMEOUT_SECONDS) as response:  # noqa: S310
        return bytes(response.read(JWKS_MAX_BYTES + 1))


def parse_jwks(document: bytes) -> dict[str, Any]:
    """``{kid: RSA public key}`` of a JWKS: RSA signing keys with a kid, others left out."""
    data = json.loads(document)
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS: no 'keys' list")
    found: dict[str, Any] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:
            found[jwk["kid"]] = RSAAlgorithm.from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # one malformed key does not hide the others
    return found


class JwksCache:
    """The issuer's signing keys, fetched on first use and on an unknown kid (rate-limited)."""

    def __init__(
        self,
        url: str,
        fetch: Fetch = fetch_url,
        clock: Callable[[], float] = time.monotonic,
        refetch_interval: float = JWKS_REFETCH_INTERVAL_SECONDS,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._refetch_interval = refetch_interval
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()
        self.fetches = 0
        self.last_error: Exception | None = None  # why the last fetch failed, for the log

    def key(self, kid: str) -> Any:
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= JWKS_MAX_AGE_SECONDS
            if (stale or kid not in self._keys) and self._may_fetch(now):
                self._refresh(now)
            if not self._keys and self._fetched_at is None:
                raise KeysUnavailable(f"the issuer's keys could not be read from {self.url}")
            found = self._keys.get(kid)
        if found is None:
            raise InvalidToken("token signed with an unknown key")
        return found

    def _may_fetch(self, now: float) -> bool:
        if self._tried_at is None:
            return True
        failed_last = self._fetched_at is None or self._fetched_at < self._tried_at
        wait = JWKS_RETRY_AFTER_FAILURE_SECONDS if failed_last else self._refetch_interval
        return now - self._tried_at >= wait

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        self.fetches += 1
        try:
            document = self._fetch(self.url)
            if len(document) > JWKS_MAX_BYTES:
                raise ValueError("JWKS too large")
            keys = parse_jwks(document)
        except (OSError, ValueError) as exc:  # unreachable, not JSON, not a JWKS: keep what we had
            self.last_error = exc
            return
        self._keys = keys
        self._fetched_at = now


class SessionTokenVerifier:
    def __init__(
        self,
        issuer: str,
        jwks: JwksCache,
        origins: Iterable[str],
        leeway_seconds: int,
    ) -> None:
        self.issuer = issuer
        self.jwks = jwks
        self.origins = frozenset(origins)
        self.leeway_seconds = leeway_seconds

    def verify(self, token: str) -> SessionClaims:
        """The session's claims, or ``InvalidToken`` (or ``KeysUnavailable``); nothing else."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _SHAPE.match(token):
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token header") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"token algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token names no signing key (kid)")
        key = self.jwks.key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS), "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token not valid yet") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("token signature does not verify") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("token from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token has no '{exc.claim}' claim") from exc
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            # PyJWT turns most bad claim values into its own errors, not all: int(inf) of an
            # "exp": 1e999 is an OverflowError, int(None) of an "iat": null a TypeError
            raise InvalidToken("malformed token claims") from exc
        return self._session(claims)

    def _session(self, claims: dict[str, Any]) -> SessionClaims:
        sid, sub, azp = claims.get("sid"), claims.get("sub"), claims.get("azp")
        if not isinstance(sid, str) or not sid:
            # same keys, but a JWT-template token (or anything else): not a browser session
            raise InvalidToken("not a session token (no 'sid' claim)")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("token has no user ('sub')")
        if not isinstance(azp, str) or azp.rstrip("/") not in self.origins:
            raise InvalidToken("token issued to another origin ('azp')")
        return SessionClaims(user_id=sub, session_id=sid, origin=azp.rstrip("/"))
