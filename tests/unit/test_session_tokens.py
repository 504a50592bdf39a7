"""Clerk session token verification (payments_core.adapters.session_tokens): the algorithm pinned, the
JWKS cached and refetched at most once per interval, every claim rule, and (hypothesis) that no
input whatever escapes as anything but InvalidToken."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payments_core.adapters.session_tokens import (
    JWKS_REFETCH_INTERVAL_SECONDS,
    MAX_TOKEN_CHARS,
    InvalidToken,
    JwksCache,
    KeysUnavailable,
    SessionClaims,
    SessionTokenVerifier,
)

from local.stack.issuer import new_private_key, public_jwk

ISSUER = "https://clerk.campusg.test"
ORIGIN = "http://localhost:5173"
KEY = new_private_key()
OTHER_KEY = new_private_key()
JWK = public_jwk(KEY)
KID = JWK["kid"]


class _Now:
    """PyJWT reads the wall clock: claims are made relative to it, each time they are made."""

    def __add__(self, other: int) -> int:
        return int(time.time()) + other

    def __sub__(self, other: int) -> int:
        return int(time.time()) - other


NOW: Any = _Now()


def jwks_bytes(*keys: Any) -> bytes:
    return json.dumps({"keys": [public_jwk(k) for k in keys]}).encode()


class Fetcher:
    """The issuer's JWKS endpoint, counting requests; ``fail`` makes it unreachable."""

    def __init__(self, document: bytes) -> None:
        self.document = document
        self.calls = 0
        self.fail = False

    def __call__(self, url: str) -> bytes:
        self.calls += 1
        if self.fail:
            raise OSError("connection refused")
        return self.document


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "azp": ORIGIN,
        "exp": NOW + 60,
        "iat": NOW + 0,
        "iss": ISSUER,
        "nbf": NOW - 10,
        "sid": "sess_2abc",
        "sub": "user_2abc",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: Any = KEY, kid: str | None = KID, algorithm: str = "RS256", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers=headers)


def make_verifier(
    fetcher: Fetcher | None = None, clock: Clock | None = None, leeway: int = 5
) -> SessionTokenVerifier:
    cache = JwksCache(f"{ISSUER}/.well-known/jwks.json", fetch=fetcher or Fetcher(jwks_bytes(KEY)))
    if clock is not None:
        cache._clock = clock
    return SessionTokenVerifier(ISSUER, cache, [ORIGIN], leeway_seconds=leeway)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: Any, payload: Any, key: Any = KEY) -> str:
    """Any JSON header and payload, RS256-signed with ``key`` (PyJWT's encode would refuse some)."""
    from jwt.algorithms import RSAAlgorithm

    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{_b64(signature)}"


def test_a_session_token_verifies_to_its_claims() -> None:
    assert make_verifier().verify(token()) == SessionClaims("user_2abc", "sess_2abc", ORIGIN)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(key=OTHER_KEY), "token signature does not verify"),
        (lambda: token(exp=NOW - 6), "token expired"),
        (lambda: token(nbf=NOW + 6), "token not valid yet"),
        (lambda: token(iss="https://evil.example"), "token from another issuer"),
        (lambda: token(azp="http://evil.example"), "token issued to another origin ('azp')"),
        (lambda: token(azp=None), "token issued to another origin ('azp')"),
        (lambda: token(sid=None), "not a session token (no 'sid' claim)"),
        (lambda: token(sid=""), "not a session token (no 'sid' claim)"),
        (lambda: token(exp=None), "token has no 'exp' claim"),
        (lambda: token(nbf=None), "token has no 'nbf' claim"),
        (lambda: token(iat=None), "token has no 'iat' claim"),
        (lambda: token(sub=None), "token has no 'sub' claim"),
        (lambda: token(kid=None), "token names no signing key (kid)"),
        (lambda: token(kid="ins_unknown"), "token signed with an unknown key"),
        (lambda: "not.a.jwt", "malformed token header"),
        (lambda: "abc", "malformed token"),
        (lambda: "a." * 5000, "malformed token"),
    ],
    ids=[
        "other-key",
        "expired",
        "not-yet-valid",
        "other-issuer",
        "other-azp",
        "no-azp",
        "no-sid",
        "empty-sid",
        "no-exp",
        "no-nbf",
        "no-iat",
        "no-sub",
        "no-kid",
        "unknown-kid",
        "garbage",
        "one-part",
        "too-long",
    ],
)
def test_a_bad_token_is_refused_with_its_reason(make: Callable[[], str], reason: str) -> None:
    with pytest.raises(InvalidToken) as refused:
        make_verifier().verify(make())
    assert refused.value.reason == reason


def test_the_leeway_is_five_seconds_on_exp_and_nbf() -> None:
    verifier = make_verifier(leeway=5)
    assert verifier.verify(token(exp=NOW - 4)).user_id == "user_2abc"
    assert verifier.verify(token(nbf=NOW + 4)).user_id == "user_2abc"
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token(exp=NOW - 6))


def test_alg_none_is_refused() -> None:
    header = _b64(json.dumps({"alg": "none", "kid": KID, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims()).encode())
    with pytest.raises(InvalidToken, match="must be RS256"):
        make_verifier().verify(f"{header}.{payload}.{_b64(b'x')}")
    with pytest.raises(InvalidToken, match="malformed token"):  # no signature at all
        make_verifier().verify(f"{header}.{payload}.")


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # the classic confusion: the public key (known to all) used as an HMAC secret
    from cryptography.hazmat.primitives import serialization

    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": KID, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    signature = _b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="must be RS256"):
        make_verifier().verify(f"{header}.{payload}.{signature}")


def test_a_header_claiming_rs256_over_an_hmac_signature_does_not_verify() -> None:
    header = _b64(json.dumps({"alg": "RS256", "kid": KID}).encode())
    payload = _b64(json.dumps(claims()).encode())
    with pytest.raises(InvalidToken, match="signature does not verify"):
        make_verifier().verify(f"{header}.{payload}.{_b64(b'x' * 256)}")


def test_the_jwks_is_fetched_once_and_cached() -> None:
    fetcher = Fetcher(jwks_bytes(KEY))
    verifier = make_verifier(fetcher)
    for _ in range(5):
        verifier.verify(token())
    assert fetcher.calls == 1


def test_an_unknown_kid_refetches_at_most_once_per_interval() -> None:
    fetcher, clock = Fetcher(jwks_bytes(KEY)), Clock()
    verifier = make_verifier(fetcher, clock)
    verifier.verify(token())
    new_key = new_private_key()
    rotated = token(key=new_key, kid=public_jwk(new_key)["kid"])
    for _ in range(20):  # a flood of unknown kids: no request to the issuer yet
        with pytest.raises(InvalidToken, match="unknown key"):
            verifier.verify(token(kid="forged-" + str(_)))
    assert fetcher.calls == 1
    # the issuer rotates its keys; after the interval, one refetch finds the new one
    fetcher.document = jwks_bytes(KEY, new_key)
    clock.now += JWKS_REFETCH_INTERVAL_SECONDS
    assert verifier.verify(rotated).user_id == "user_2abc"
    assert fetcher.calls == 2
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(token(kid="forged-again"))
    assert fetcher.calls == 2


def test_an_unreachable_issuer_is_keys_unavailable_not_a_bad_token() -> None:
    fetcher, clock = Fetcher(jwks_bytes(KEY)), Clock()
    fetcher.fail = True
    verifier = make_verifier(fetcher, clock)
    with pytest.raises(KeysUnavailable):
        verifier.verify(token())
    with pytest.raises(KeysUnavailable):  # not hammered: the next try waits a few seconds
        verifier.verify(token())
    assert fetcher.calls == 1
    fetcher.fail = False
    clock.now += 5
    assert verifier.verify(token()).user_id == "user_2abc"


def test_cached_keys_survive_a_failed_refresh() -> None:
    fetcher, clock = Fetcher(jwks_bytes(KEY)), Clock()
    verifier = make_verifier(fetcher, clock)
    verifier.verify(token())
    fetcher.fail = True
    clock.now += 7200  # past the cache's age: a refresh is tried, fails, the old keys stay
    assert verifier.verify(token()).user_id == "user_2abc"
    assert fetcher.calls == 2


def test_a_malformed_jwks_keeps_its_good_keys() -> None:
    document = json.dumps(
        {"keys": [{"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}, {"kty": "EC", "kid": "ec"}, JWK]}
    ).encode()
    assert make_verifier(Fetcher(document)).verify(token()).user_id == "user_2abc"


# ---- properties: whatever arrives, only InvalidToken (a 401) comes out ----------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _verify_or_invalid(verifier: SessionTokenVerifier, value: str) -> None:
    try:
        result = verifier.verify(value)
    except InvalidToken as exc:
        assert exc.reason  # a reason for the 401's body
    else:
        assert isinstance(result, SessionClaims)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_any_string_is_a_token_or_invalid(value: str) -> None:
    _verify_or_invalid(make_verifier(), value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_.=", max_size=60), min_size=1, max_size=5).map(
        ".".join
    )
)
def test_any_dotted_base64ish_string_is_invalid(value: str) -> None:
    with pytest.raises(InvalidToken):
        make_verifier().verify(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_json_values, payload=_json_values, signature=st.binary(max_size=300))
def test_any_header_and_payload_json_unsigned_is_invalid(header: Any, payload: Any, signature: bytes) -> None:
    raw = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{_b64(signature)}"
    with pytest.raises(InvalidToken):
        make_verifier().verify(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    overrides=st.dictionaries(
        st.sampled_from(["azp", "exp", "iat", "iss", "nbf", "sid", "sub", "aud", "jti"]),
        _json_values,
        max_size=4,
    ),
    extra_header=st.dictionaries(
        st.sampled_from(["typ", "cty", "crit", "jku", "x5u"]), _json_values, max_size=2
    ),
)
def test_validly_signed_tokens_with_any_claim_values_verify_or_are_invalid(
    overrides: dict[str, Any], extra_header: dict[str, Any]
) -> None:
    payload = claims()
    payload.update(overrides)
    raw = signed({"alg": "RS256", "typ": "JWT", "kid": KID, **extra_header}, payload)
    verifier = make_verifier()
    try:
        result = verifier.verify(raw)
    except InvalidToken:
        return
    # accepted only when every rule holds
    assert result == SessionClaims(payload["sub"], payload["sid"], ORIGIN)
    assert payload["iss"] == ISSUER and payload["azp"] == ORIGIN


def test_a_token_longer_than_the_limit_is_refused_before_decoding() -> None:
    long = token() + "A" * MAX_TOKEN_CHARS
    with pytest.raises(InvalidToken, match="malformed token"):
        make_verifier().verify(long)


@pytest.mark.parametrize(
    "url",
    ["http://clerk.campusg.example/.well-known/jwks.json", "file:///etc/passwd", "ftp://x/jwks", "jwks.json"],
)
def test_keys_are_read_over_https_only_but_from_loopback(url: str) -> None:
    from payments_core.adapters.session_tokens import fetch_url

    with pytest.raises(ValueError, match="must be https"):
        fetch_url(url)
    verifier = SessionTokenVerifier(ISSUER, JwksCache(url), [ORIGIN], 5)
    with pytest.raises(KeysUnavailable):  # a 503, not a 401: the token may be fine
        verifier.verify(token())


def test_the_local_issuer_over_http_on_loopback_is_allowed() -> None:
    import threading

    from local.stack.issuer import make_server

    server = make_server({"keys": [JWK]}, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        verifier = SessionTokenVerifier(ISSUER, JwksCache(url), [ORIGIN], 5)
        assert verifier.verify(token()).user_id == "user_2abc"
    finally:
        server.shutdown()
        server.server_close()
