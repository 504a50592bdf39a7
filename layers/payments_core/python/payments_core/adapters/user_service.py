"""campusG's user service behind a small gateway: who a user is, which Connect account is theirs.

Only ``GET {USER_SERVICE_URL}/api/user/{user_id}`` is read (it carries both the Connect account
and the Stripe customer of the user). An unknown user (404) is an answer; anything that is not
one (no connection, a timeout, a 5xx, a body that is not the documented JSON) is a
``TransientError``: the release waits and is retried, as for a Stripe outage, rather than pay or
refuse on a guess.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from payments_core.config import Settings
from payments_core.domain.errors import TransientError


@dataclass(frozen=True)
class CampusUser:
    """What campusG's user service holds about a user that a payout depends on."""

    user_id: str
    stripe_connect_account_id: str | None
    stripe_customer_id: str | None


class UserDirectory(Protocol):
    def find_user(self, user_id: str) -> CampusUser | None:
        """The user, or None when the user service does not know them (404)."""
        ...


class UserServiceUnavailable(TransientError):
    """The user service did not give an answer: retry later."""


class HttpUserDirectory:
    """The real gateway: plain HTTP with a timeout on every socket operation."""

    def __init__(self, settings: Settings) -> None:
        self._base = settings.user_service_url
        self._timeout = settings.user_service_timeout_seconds

    def find_user(self, user_id: str) -> CampusUser | None:
        if not self._base:
            raise UserServiceUnavailable("USER_SERVICE_URL is not set: payout destinations cannot be checked")
        url = f"{self._base}/api/user/{urllib.parse.quote(user_id, safe='')}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - URL from config
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                body = response.read(1_000_000)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise UserServiceUnavailable(f"user service answered {exc.code} for a user lookup") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise UserServiceUnavailable(f"user service unreachable: {type(exc).__name__}: {exc}") from exc
        return _parse_user(user_id, body)


def _parse_user(user_id: str, body: bytes) -> CampusUser:
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise UserServiceUnavailable("user service answered something that is not JSON") from exc
    user = data.get("user") if isinstance(data, dict) and data.get("success") is True else None
    if not isinstance(user, dict):
        raise UserServiceUnavailable("user service answer has no user object")
    return CampusUser(
        user_id=user_id,
        stripe_connect_account_id=_text(user.get("stripeConnectAccountId")),
        stripe_customer_id=_text(user.get("stripeCustomerId")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
