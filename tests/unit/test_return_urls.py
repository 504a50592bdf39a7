"""return_url must be on a configured origin: Stripe appends the PaymentIntent's client secret
to it and sends the customer's browser there after 3-D Secure. The origin check, its
configuration, and the authorize command refused (permanently, before Stripe) for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from payments_core.config import get_settings
from payments_core.domain.contracts import RETURN_URL_NOT_ALLOWED, AuthorizePayment, parse_command
from payments_core.domain.errors import Rejection
from payments_core.domain.return_urls import is_allowed, origin_of, parse_origins

LOCAL = parse_origins("http://localhost:5173,https://localhost:5173")
SHOP = parse_origins("https://shop.example")


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost:5173/customer/history",  # what campusG's saga sends
        "http://localhost:5173",
        "https://localhost:5173/",
        "https://localhost:5173?x=1",
        "https://localhost:5173#top",
        "HTTPS://LOCALHOST:5173/customer/history",  # scheme and host are case-insensitive
        "https://LocalHost:5173/Customer/History",
        "https://localhost:05173/customer/history",  # a browser reads the port as 5173 too
    ],
)
def test_urls_on_an_allowed_origin_pass(url: str) -> None:
    assert is_allowed(url, LOCAL)


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost:5173@evil.example/customer/history",  # userinfo: the host is evil.example
        "https://user:pw@localhost:5173/",  # userinfo of any kind
        "https://localhost:5173.evil.example/",
        "https://localhost:51730/",
        "https://localhost:5174/",
        "https://localhost/",  # the default port is another origin
        "https://evil.example/?https://localhost:5173",
        "javascript:alert(document.cookie)//https://localhost:5173",
        "javascript://localhost:5173/%0aalert(1)",
        "data:text/html,https://localhost:5173",
        "ftp://localhost:5173/",
        "//localhost:5173/customer/history",  # scheme-relative
        "/customer/history",
        "https:localhost:5173/",
        "https:/localhost:5173/",
        "https:\\\\localhost:5173/",
        "https://localhost:5173\\@evil.example/",  # a browser reads \ as /, urllib does not
        "https://evil.example\\@localhost:5173/",
        " https://localhost:5173/",
        "https://localhost:5173/ ",
        "https://local host:5173/",
        "https://localhost:5173/\ncustomer",
        "https://localhost:5173/\tx",
        "https://localhost:5173/\u00a0",  # non-ASCII whitespace
        "https://localhost\u3002evil:5173/",  # ideographic full stop: a dot to a browser
        "https://xn--localhost-:5173/",
        "https://l\u0131ocalhost:5173/",
        "https://localhost:5173:5173/",
        "https://localhost:/",
        "https://localhost:99999/",
        "https://[::1]:5173/",
        "",
    ],
)
def test_everything_else_is_refused(url: str) -> None:
    assert not is_allowed(url, LOCAL)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://shop.example:443/pay", "https://shop.example"),
        ("http://shop.example:80/pay", "http://shop.example"),
        ("HTTP://SHOP.EXAMPLE/pay", "http://shop.example"),
        ("https://shop.example:8443/pay", "https://shop.example:8443"),
        ("http://shop.example:443/", "http://shop.example:443"),  # 443 is a default only for https
        ("https://[2001:DB8::1]:8443/x", "https://[2001:db8::1]:8443"),
    ],
)
def test_default_ports_and_case_are_normalised(url: str, origin: str) -> None:
    assert origin_of(url) == origin


def test_default_ports_match_either_way() -> None:
    assert is_allowed("https://shop.example:443/pay", SHOP)
    assert is_allowed("https://shop.example/pay", parse_origins("https://SHOP.example:443/"))
    assert not is_allowed("http://shop.example/pay", SHOP)  # another scheme is another origin


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
@example("https://localhost:5173@evil.example")
@example("\ud800")
def test_arbitrary_strings_never_raise_and_pass_only_on_an_allowed_origin(url: str) -> None:
    allowed = is_allowed(url, LOCAL)
    assert isinstance(allowed, bool)
    if allowed:
        # what the standard library (and so Stripe's and a browser's view) sees as the origin
        parts = urlsplit(url)
        assert parts.username is None and parts.password is None
        assert f"{parts.scheme.lower()}://{parts.hostname}:{parts.port}" in LOCAL


_HOSTS = st.sampled_from(["localhost", "LOCALHOST", "evil.example", "localhost.evil.example", "127.0.0.1"])
_PORTS = st.sampled_from(["", ":5173", ":443", ":80", ":05173", ":5174"])
_SCHEMES = st.sampled_from(["https", "http", "HTTPS", "javascript", "ftp"])
_SEPARATORS = st.sampled_from(["://", ":/", ":\\\\", "://user@", "://localhost:5173@"])
_PATHS = st.sampled_from(["", "/", "/customer/history", "?a=b", "#f", "@evil.example/", ".evil.example/"])


@settings(max_examples=400, deadline=None)
@given(_SCHEMES, _SEPARATORS, _HOSTS, _PORTS, _PATHS)
def test_only_urls_whose_origin_is_allowed_pass(
    scheme: str, separator: str, host: str, port: str, path: str
) -> None:
    url = f"{scheme}{separator}{host}{port}{path}"
    expected = (
        scheme.lower() in ("http", "https")
        and separator == "://"
        and host.lower() == "localhost"
        and port in (":5173", ":05173")
        and not path.startswith(("@", "."))
    )
    assert is_allowed(url, LOCAL) is expected, url


@pytest.mark.parametrize(
    "raw", ["https://localhost:5173/customer", "localhost:5173", "https://a@b.example", "*", "https://x y"]
)
def test_a_configured_entry_that_is_not_an_origin_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(ValueError, match="RETURN_URL_ORIGINS"):
        parse_origins(f"https://ok.example,{raw}")


# ---- the authorize command -------------------------------------------------------------------


@pytest.fixture
def origins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """RETURN_URL_ORIGINS unset: the local default applies."""
    monkeypatch.delenv("RETURN_URL_ORIGINS", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _authorize(return_url: object = None, *, with_key: bool = True) -> bytes:
    payload: dict[str, object] = {
        "order_id": "3b0d6c1e-8a44-4b8f-9f63-2b7c9d1f0a55",
        "customer": {"stripeCustomerId": "cus_1", "userStripeCard": {"payment_method_id": "pm_1"}},
        "order": {"amount": 1299},
    }
    if with_key:
        payload["return_url"] = return_url
    return json.dumps({"type": "authorize_payment", "correlation_id": "c1", "payload": payload}).encode()


@pytest.mark.usefixtures("origins")
def test_the_sagas_return_url_is_allowed_by_default() -> None:
    command = parse_command(_authorize("https://localhost:5173/customer/history"))
    assert isinstance(command.body, AuthorizePayment)
    assert command.body.return_url == "https://localhost:5173/customer/history"


@pytest.mark.usefixtures("origins")
@pytest.mark.parametrize("sent", [None, ""], ids=["null", "empty"])
def test_no_return_url_is_unchanged(sent: object) -> None:
    assert parse_command(_authorize(with_key=False)).body.return_url is None  # type: ignore[union-attr]
    assert parse_command(_authorize(sent)).body.return_url == sent  # type: ignore[union-attr]


@pytest.mark.usefixtures("origins")
@pytest.mark.parametrize(
    "url", ["https://localhost:5173@evil.example/steal", "https://evil.example/", "javascript:alert(1)"]
)
def test_a_return_url_elsewhere_is_refused_permanently_with_its_order(url: str) -> None:
    with pytest.raises(Rejection) as refused:
        parse_command(_authorize(url))
    assert refused.value.code == RETURN_URL_NOT_ALLOWED
    assert refused.value.order_id == "3b0d6c1e-8a44-4b8f-9f63-2b7c9d1f0a55"
    assert refused.value.correlation_id == "c1"
    assert "evil" not in refused.value.message  # the URL is not echoed back


def test_the_configured_origins_replace_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETURN_URL_ORIGINS", " https://campusg.example , https://Pay.CampusG.example:443/ ")
    get_settings.cache_clear()
    try:
        assert get_settings().return_url_origins == ("https://campusg.example", "https://pay.campusg.example")
        parse_command(_authorize("https://pay.campusg.example/customer/history"))
        with pytest.raises(Rejection) as refused:
            parse_command(_authorize("https://localhost:5173/customer/history"))
        assert refused.value.code == RETURN_URL_NOT_ALLOWED
    finally:
        get_settings.cache_clear()


def test_a_misconfigured_origin_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETURN_URL_ORIGINS", "https://campusg.example/customer/history")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValueError, match="RETURN_URL_ORIGINS"):
            get_settings()
    finally:
        get_settings.cache_clear()
