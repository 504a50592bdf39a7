"""The frontend's history route on the local stack's public face (``PUBLIC_API_URL``): the
public_history function behind the local API Gateway, verifying tokens of the local issuer
(``local/stack/issuer.py``) against its JWKS over HTTP; and CORS on the private face (``API_URL``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from local.stack import control as stack
from local.stack.issuer import new_private_key, public_jwk, read_key, session_token, without
from local.stack.settings import FRONTEND_ORIGIN, LocalSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def public_face(local_settings: LocalSettings) -> str:
    """The public face's URL; fails (never skips) when it or the issuer is not running."""
    down = [
        name
        for name, port in (
            ("public-api", local_settings.public_api_port),
            ("issuer", local_settings.issuer_port),
        )
        if not stack.port_open(port)
    ]
    if down:
        pytest.fail(f"local stack not running ({', '.join(down)} down): run `make local-up`", pytrace=False)
    return local_settings.public_api_url


@pytest.fixture
def customer(make_services: Callable[..., Any]) -> str:
    """A fresh customer with two payments: 19.99 held and 10.01 captured (30.00 spent), one failed."""
    services = make_services()
    user = f"user_{uuid.uuid4().hex[:10]}"
    for status, amount, captured in (
        ("AUTHORIZED", 1999, None),
        ("SUCCEEDED", 1001, 1001),
        ("FAILED", 5000, None),
    ):
        services.db.execute(
            "INSERT INTO payments (payment_id, order_id, clerk_user_id, status, amount_cents,"
            " captured_amount_cents, currency) VALUES (CAST(:p AS uuid), :o, :c, :s, :a, :cap, 'sgd')",
            p=str(uuid.uuid4()),
            o=f"public-history-{uuid.uuid4()}",
            c=user,
            s=status,
            a=amount,
            cap=captured,
        )
    return user


def get(url: str, token: str | None = None, origin: str | None = FRONTEND_ORIGIN) -> requests.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["Origin"] = origin
    return requests.get(url, headers=headers, timeout=15)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_own_history_with_a_local_token(public_face: str, customer: str) -> None:
    response = get(f"{public_face}/history/{customer}", session_token(customer))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "userId": customer,
        "totalSpent": 30.0,
        "totalEarned": 0.0,
        "spentCount": 2,
        "earnedCount": 0,
        "byCurrency": [
            {"currency": "sgd", "spentCents": 3000, "earnedCents": 0, "spentCount": 2, "earnedCount": 0}
        ],
    }
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    assert response.headers["Vary"] == "Origin"


def test_the_same_body_as_the_private_route(
    public_face: str, customer: str, local_settings: LocalSettings
) -> None:
    public = get(f"{public_face}/history/{customer}", session_token(customer)).json()
    private = requests.get(f"{local_settings.api_url}/history/{customer}", timeout=15).json()
    assert public == private and public["totalSpent"] == 30.0


def test_another_users_token_is_403(public_face: str, customer: str) -> None:
    response = get(f"{public_face}/history/{customer}", session_token(f"user_{uuid.uuid4().hex[:10]}"))
    assert response.status_code == 403
    assert response.json()["error"] == "FORBIDDEN"
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN


def test_no_token_is_401(public_face: str, customer: str) -> None:
    response = get(f"{public_face}/history/{customer}")
    assert response.status_code == 401
    assert response.json()["error"] == "MISSING_TOKEN"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN


def _forged(customer: str, local_settings: LocalSettings) -> dict[str, str]:
    real_kid = public_jwk(read_key(local_settings))["kid"]
    claims = {
        "azp": FRONTEND_ORIGIN,
        "exp": int(time.time()) + 60,
        "iat": int(time.time()),
        "nbf": int(time.time()) - 10,
        "iss": local_settings.issuer_url,
        "sid": "sess_forged",
        "sub": customer,
    }
    payload = _b64(json.dumps(claims).encode())
    none_header = _b64(json.dumps({"alg": "none", "kid": real_kid, "typ": "JWT"}).encode())
    hs_header = _b64(json.dumps({"alg": "HS256", "kid": real_kid, "typ": "JWT"}).encode())
    from cryptography.hazmat.primitives import serialization

    public_pem = (
        read_key(local_settings)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hs_signature = _b64(hmac.new(public_pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest())
    return {
        # another key, claiming the issuer's kid
        "other-key": session_token(customer, private_key=new_private_key(), kid=real_kid),
        # another key under its own kid: unknown to the issuer's JWKS
        "unknown-kid": session_token(customer, private_key=new_private_key()),
        "alg-none": f"{none_header}.{payload}.",
        "alg-none-signed": f"{none_header}.{payload}.{_b64(b'sig')}",
        "hs256-public-key": f"{hs_header}.{payload}.{hs_signature}",
    }


@pytest.mark.parametrize(
    "kind", ["other-key", "unknown-kid", "alg-none", "alg-none-signed", "hs256-public-key"]
)
def test_a_forged_token_is_401(
    public_face: str, customer: str, local_settings: LocalSettings, kind: str
) -> None:
    response = get(f"{public_face}/history/{customer}", _forged(customer, local_settings)[kind])
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "INVALID_TOKEN"
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


@pytest.mark.parametrize(
    ("kind", "claims", "reason"),
    [
        ("expired", {"exp": -30}, "token expired"),
        ("no-sid", without("sid"), "not a session token (no 'sid' claim)"),
        ("wrong-azp", {"azp": "http://evil.example"}, "token issued to another origin ('azp')"),
        ("other-issuer", {"iss": "https://clerk.other.example"}, "token from another issuer"),
    ],
    ids=["expired", "no-sid", "wrong-azp", "other-issuer"],
)
def test_a_token_breaking_a_rule_is_401(
    public_face: str, customer: str, kind: str, claims: dict[str, Any], reason: str
) -> None:
    if "exp" in claims:
        claims = {"exp": int(time.time()) + claims["exp"]}
    response = get(f"{public_face}/history/{customer}", session_token(customer, **claims))
    assert response.status_code == 401, response.text
    assert response.json() == {"success": False, "error": "INVALID_TOKEN", "message": reason}


def test_garbage_in_the_header_is_401_not_500(public_face: str, customer: str) -> None:
    for value in ("Bearer", "Bearer ...", "Bearer a.b.c", "Basic dXNlcjpwdw==", "Bearer " + "A" * 9000):
        response = requests.get(
            f"{public_face}/history/{customer}", headers={"Authorization": value}, timeout=15
        )
        assert response.status_code == 401, (value[:20], response.status_code, response.text)


def test_make_local_token_prints_a_token_for_the_user(public_face: str, customer: str) -> None:
    import subprocess

    from local.stack.settings import REPO_ROOT

    result = subprocess.run(
        ["make", "-s", "local-token", f"USER={customer}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert get(f"{public_face}/history/{customer}", token).status_code == 200
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"sub", "sid", "azp", "iss", "exp", "nbf", "iat"} <= set(claims)
    assert claims["sub"] == customer and claims["azp"] == FRONTEND_ORIGIN
    assert 50 <= claims["exp"] - time.time() <= 61
    assert jwt.get_unverified_header(token)["kid"].startswith("ins_local_")
    other = subprocess.run(
        ["make", "-s", "local-token", f"USER={customer}", "ORIGIN=http://evil.example"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    assert jwt.decode(other, options={"verify_signature": False})["azp"] == "http://evil.example"
    assert get(f"{public_face}/history/{customer}", other).status_code == 401


def test_preflight_from_the_frontend_origin(public_face: str) -> None:
    response = requests.options(
        f"{public_face}/history/user_2abc",
        headers={
            "Origin": FRONTEND_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=15,
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    allowed = [h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")]
    assert "authorization" in allowed
    assert response.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"


def test_preflight_from_another_origin_gets_no_cors(public_face: str) -> None:
    response = requests.options(
        f"{public_face}/history/user_2abc",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=15,
    )
    assert not [h for h in response.headers if h.lower().startswith("access-control-")], response.headers


def test_a_token_from_another_origin_gets_no_cors_either(public_face: str, customer: str) -> None:
    response = get(f"{public_face}/history/{customer}", session_token(customer), origin="http://evil.example")
    assert response.status_code == 200  # not a browser: CORS is the browser's to enforce
    assert "Access-Control-Allow-Origin" not in response.headers


def test_the_public_face_serves_only_the_history_route(public_face: str) -> None:
    for method, path in (("GET", "/health"), ("POST", "/payment/x/release"), ("POST", "/history/u")):
        response = requests.request(method, f"{public_face}{path}", timeout=15)
        assert response.status_code == 403, (method, path, response.status_code)
        assert response.json() == {"message": "Missing Authentication Token"}


def test_the_private_face_answers_cors_for_the_frontend(local_settings: LocalSettings, customer: str) -> None:
    url = f"{local_settings.api_url}/history/{customer}"
    # campusG's unmodified fetch: a simple GET, no token; the browser needs the ACAO header
    response = get(url, origin=FRONTEND_ORIGIN)
    assert response.status_code == 200 and response.json()["totalSpent"] == 30.0
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    assert "Access-Control-Allow-Origin" not in get(url, origin="http://evil.example").headers
    preflight = requests.options(
        url, headers={"Origin": FRONTEND_ORIGIN, "Access-Control-Request-Method": "GET"}, timeout=15
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    # the sagas' calls are unchanged: no Origin, no CORS header, the same answer
    plain = requests.get(url, timeout=15)
    assert plain.status_code == 200 and "Access-Control-Allow-Origin" not in plain.headers
