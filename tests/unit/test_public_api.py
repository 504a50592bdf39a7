"""The public history route (payments_core.entrypoints.public_api, functions/public_history): its answers,
CORS for the configured origins only, and that no request whatever is answered with a 500 or an
exception. A double stands in for the database; tokens come from a key made here."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payments_core.adapters.postgres import db as db_module
from payments_core.adapters.session_tokens import JwksCache, SessionTokenVerifier
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.entrypoints import public_api

from local.stack.issuer import new_private_key, public_jwk, session_token, without
from local.stack.settings import load as load_local_settings

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "http://127.0.0.1:3999"
ORIGIN = "http://localhost:5173"
KEY = new_private_key()
USER = "user_2abc"


class TotalsDb:
    """One user's payments: 12.99 spent as customer."""

    def __init__(self) -> None:
        self.fail = False
        self.asked: list[str] = []

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        if self.fail:
            raise TransientError("database unreachable")
        self.asked.append(params["user_id"])
        return [
            {"currency": "sgd", "spent_cents": 1299, "spent_count": 1, "earned_cents": 0, "earned_count": 0}
        ]


class Jwks:
    def __init__(self) -> None:
        self.fail = False

    def __call__(self, url: str) -> bytes:
        if self.fail:
            raise OSError("connection refused")
        return json.dumps({"keys": [public_jwk(KEY)]}).encode()


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[TotalsDb]:
    monkeypatch.setenv("CLERK_ISSUER", ISSUER)
    monkeypatch.setenv("FRONTEND_ORIGINS", f"{ORIGIN}, https://campusg.example/")
    monkeypatch.setenv("SESSION_TOKEN_LEEWAY_SECONDS", "5")
    get_settings.cache_clear()
    db = TotalsDb()
    monkeypatch.setattr(db_module, "_database", db)
    yield db
    public_api.set_verifier(None)
    get_settings.cache_clear()


@pytest.fixture
def jwks(database: TotalsDb) -> Jwks:
    fetch = Jwks()
    settings = get_settings()
    public_api.set_verifier(
        SessionTokenVerifier(
            settings.clerk_issuer,
            JwksCache(settings.clerk_jwks_url, fetch=fetch),
            settings.frontend_origins,
            settings.session_token_leeway_seconds,
        )
    )
    return fetch


def token(user: str = USER, **claims: Any) -> str:
    local = load_local_settings()
    return session_token(user, private_key=KEY, settings=local, origin=ORIGIN, iss=ISSUER, **claims)


def event(
    user_id: str = USER, authorization: str | None = None, origin: str | None = ORIGIN, method: str = "GET"
) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if origin is not None:
        headers["Origin"] = origin
    return {
        "resource": "/history/{user_id}",
        "path": f"/history/{user_id}",
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "pathParameters": {"user_id": user_id},
        "requestContext": {"requestId": "test", "resourcePath": "/history/{user_id}"},
        "body": None,
        "isBase64Encoded": False,
    }


def answer(e: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    response = public_api.history_answer(e)
    body = json.loads(response["body"]) if response["body"] else None
    return response["statusCode"], response["headers"], body


def test_own_history_with_a_session_token(jwks: Jwks, database: TotalsDb) -> None:
    status, headers, body = answer(event(authorization=f"Bearer {token()}"))
    assert status == 200
    assert body == {
        "userId": USER,
        "totalSpent": 12.99,
        "totalEarned": 0.0,
        "spentCount": 1,
        "earnedCount": 0,
        "byCurrency": [
            {"currency": "sgd", "spentCents": 1299, "earnedCents": 0, "spentCount": 1, "earnedCount": 0}
        ],
    }
    assert headers["Access-Control-Allow-Origin"] == ORIGIN and headers["Vary"] == "Origin"
    assert headers["Cache-Control"] == "no-store"
    assert database.asked == [USER]


def test_the_scheme_is_case_insensitive(jwks: Jwks) -> None:
    assert answer(event(authorization=f"bearer {token()}"))[0] == 200


def test_no_token_is_401_without_an_error_code_and_with_cors(jwks: Jwks, database: TotalsDb) -> None:
    status, headers, body = answer(event())
    assert status == 401 and body["error"] == "MISSING_TOKEN"
    assert headers["WWW-Authenticate"].startswith("Bearer") and "error=" not in headers["WWW-Authenticate"]
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert database.asked == []


@pytest.mark.parametrize(
    ("authorization", "reason"),
    # Minted when the test runs, not when it is collected: a session token lives 60 s, and the
    # whole unit suite can take longer than that to reach this test.
    [
        (lambda: "Bearer not-a-token", "malformed token"),
        (lambda: f"Bearer {token(**without('sid'))}", "not a session token (no 'sid' claim)"),
        (lambda: f"Bearer {token(azp='http://evil.example')}", "token issued to another origin ('azp')"),
        (
            lambda: (
                f"Bearer {session_token(USER, private_key=new_private_key(), kid=public_jwk(KEY)['kid'], iss=ISSUER, origin=ORIGIN)}"
            ),
            "token signature does not verify",
        ),
    ],
    ids=["garbage", "no-sid", "other-azp", "other-key"],
)
def test_a_bad_token_is_401_invalid_token(
    jwks: Jwks, database: TotalsDb, authorization: Callable[[], str], reason: str
) -> None:
    status, headers, body = answer(event(authorization=authorization()))
    assert status == 401
    assert body == {"success": False, "error": "INVALID_TOKEN", "message": reason}
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert database.asked == []


def test_an_expired_token_is_401(jwks: Jwks) -> None:
    stale = token(exp=int(__import__("time").time()) - 30)
    status, _, body = answer(event(authorization=f"Bearer {stale}"))
    assert (status, body["message"]) == (401, "token expired")


def test_another_users_history_is_403(jwks: Jwks, database: TotalsDb) -> None:
    status, headers, body = answer(event(user_id="user_other", authorization=f"Bearer {token()}"))
    assert status == 403 and body["error"] == "FORBIDDEN"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert database.asked == []


def test_a_malformed_user_id_of_ones_own_is_400(jwks: Jwks, database: TotalsDb) -> None:
    odd = "user with spaces"
    status, _, body = answer(event(user_id=odd, authorization=f"Bearer {token(odd)}"))
    assert status == 400 and body["error"] == "INVALID_REQUEST"
    assert database.asked == []


def test_no_cors_for_another_origin(jwks: Jwks) -> None:
    for origin in ("http://evil.example", None, "http://localhost:5173.evil.example", "null"):
        status, headers, _ = answer(event(authorization=f"Bearer {token()}", origin=origin))
        assert status == 200
        assert not [h for h in headers if h.lower().startswith("access-control-") or h == "Vary"], headers


def test_every_configured_origin_is_allowed(jwks: Jwks) -> None:
    _, headers, _ = answer(event(origin="https://campusg.example", method="OPTIONS"))
    assert headers["Access-Control-Allow-Origin"] == "https://campusg.example"


def test_preflight_from_the_frontend(jwks: Jwks) -> None:
    status, headers, body = answer(event(method="OPTIONS"))
    assert status == 204 and body is None
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in [h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")]
    assert headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"
    assert headers["Vary"] == "Origin"


def test_preflight_from_another_origin_has_no_cors(jwks: Jwks) -> None:
    status, headers, _ = answer(event(method="OPTIONS", origin="http://evil.example"))
    assert status == 204
    assert not [h for h in headers if h.lower().startswith("access-control-")], headers


def test_other_methods_are_405(jwks: Jwks) -> None:
    status, headers, body = answer(event(method="POST", authorization=f"Bearer {token()}"))
    assert status == 405 and headers["Allow"] == "GET, OPTIONS" and body["error"] == "METHOD_NOT_ALLOWED"


def test_unreachable_keys_or_database_are_503_not_401(jwks: Jwks, database: TotalsDb) -> None:
    jwks.fail = True
    status, headers, body = answer(event(authorization=f"Bearer {token()}"))
    assert (status, body["error"]) == (503, "SERVICE_UNAVAILABLE")
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    public_api.set_verifier(None)  # a new container, keys reachable, database not
    jwks_ok = Jwks()
    settings = get_settings()
    public_api.set_verifier(
        SessionTokenVerifier(ISSUER, JwksCache(settings.clerk_jwks_url, fetch=jwks_ok), [ORIGIN], 5)
    )
    database.fail = True
    status, _, body = answer(event(authorization=f"Bearer {token()}"))
    assert (status, body["error"]) == (503, "SERVICE_UNAVAILABLE")


def test_without_an_issuer_nothing_is_verified(monkeypatch: pytest.MonkeyPatch, database: TotalsDb) -> None:
    monkeypatch.setenv("CLERK_ISSUER", "")
    get_settings.cache_clear()
    status, _, body = answer(event(authorization=f"Bearer {token()}"))
    assert (status, body["error"]) == (503, "NOT_CONFIGURED")
    assert database.asked == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"CLERK_ISSUER": "https://clerk.campusg.example/"},
            ("https://clerk.campusg.example", "https://clerk.campusg.example/.well-known/jwks.json"),
        ),
        (
            {"CLERK_ISSUER": "https://a.example", "CLERK_JWKS_URL": "https://keys.example/jwks"},
            ("https://a.example", "https://keys.example/jwks"),
        ),
    ],
)
def test_issuer_and_jwks_url(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: tuple[str, str]
) -> None:
    for name in ("CLERK_ISSUER", "CLERK_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert (s.clerk_issuer, s.clerk_jwks_url) == expected
    finally:
        get_settings.cache_clear()


def test_origins_and_leeway_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FRONTEND_ORIGINS", " http://localhost:5173/ ,https://campusg.example,,http://localhost:5173"
    )
    monkeypatch.setenv("SESSION_TOKEN_LEEWAY_SECONDS", "600")
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert s.frontend_origins == ("http://localhost:5173", "https://campusg.example")
        assert s.session_token_leeway_seconds == 60  # capped
    finally:
        get_settings.cache_clear()


# ---- properties: any request gets a clear answer ----------------------------------------------

_header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.one_of(
        st.none(),
        _header_text,
        _header_text.map(lambda t: "Bearer " + t),
        st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer a.b.c", "Bearer ..."]),
    ),
    user_id=st.text(max_size=40),
    origin=st.one_of(st.none(), _header_text, st.just(ORIGIN)),
    method=st.sampled_from(["GET", "OPTIONS", "POST", "HEAD", ""]),
)
def test_any_request_gets_a_clear_answer(
    jwks: Jwks, authorization: str | None, user_id: str, origin: str | None, method: str
) -> None:
    status, headers, body = answer(
        event(user_id=user_id, authorization=authorization, origin=origin, method=method)
    )
    assert status in (204, 401, 403, 400, 405)
    if status == 401:
        assert body["error"] in ("MISSING_TOKEN", "INVALID_TOKEN") and body["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    if origin != ORIGIN:
        assert "Access-Control-Allow-Origin" not in headers


def test_the_verifier_is_loaded_lazily() -> None:
    # a cold start imports neither PyJWT nor cryptography; a preflight or a token-less request
    # neither; the first token does
    code = """
import sys, json
sys.path.insert(0, "functions/public_history")
import app
before = {m for m in ("jwt", "cryptography") if m in sys.modules}
event = {"httpMethod": "OPTIONS", "headers": {"Origin": "http://localhost:5173"}, "pathParameters": {"user_id": "u"}}
app.history_answer(event)
event["httpMethod"] = "GET"
app.history_answer(event)
after_cheap = {m for m in ("jwt", "cryptography") if m in sys.modules}
event["headers"]["Authorization"] = "Bearer a.b.c"
app.history_answer(event)
print(json.dumps([sorted(before), sorted(after_cheap), "jwt" in sys.modules]))
assert app.handler is app.lambda_handler
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "CLERK_ISSUER": "http://127.0.0.1:1",
        "FRONTEND_ORIGINS": ORIGIN,
        "POWERTOOLS_TRACE_DISABLED": "1",
        "AWS_DEFAULT_REGION": "ap-southeast-1",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, after_cheap, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert before == [] and after_cheap == [] and loaded is True


def test_the_payment_api_does_not_import_the_verifier() -> None:
    code = "import sys; sys.path.insert(0, 'functions/payment_api'); import app; print('jwt' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "AWS_DEFAULT_REGION": "ap-southeast-1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"


def test_the_event_fixtures_get_the_answers_they_describe(jwks: Jwks) -> None:
    events = ROOT / "events"
    preflight = json.loads((events / "public_history_preflight.json").read_text())
    status, headers, _ = answer(preflight)
    assert (status, headers["Access-Control-Allow-Origin"]) == (204, ORIGIN)
    get = json.loads((events / "public_history.json").read_text())
    status, _, body = answer(get)  # its token is a placeholder
    assert (status, body["error"]) == (401, "INVALID_TOKEN")
    get["headers"]["Authorization"] = get["multiValueHeaders"]["Authorization"][0] = f"Bearer {token()}"
    status, headers, body = answer(get)
    assert (status, body["totalSpent"], headers["Access-Control-Allow-Origin"]) == (200, 12.99, ORIGIN)
