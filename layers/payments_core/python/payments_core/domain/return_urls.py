"""Which ``return_url`` an authorize may carry: only one on a configured origin.

Stripe redirects the customer's browser to the ``return_url`` after 3-D Secure and appends
the PaymentIntent's client secret to it, so a URL of anyone's choosing would hand that secret
(and the customer) to them. A URL is allowed when its origin (scheme, host, port) is exactly
one of the configured ones.

The parse is deliberately stricter than a browser's, and anything it is not sure of is
refused: an allowed URL must never be read by the browser as another origin. So no userinfo
(``https://localhost:5173@evil.example`` is evil.example to a browser), no backslash (a
browser reads it as ``/``, urllib does not), no whitespace or control character (browsers
strip some of them), only ASCII letters, digits, dots and hyphens in a host name, or an IPv6
literal in brackets. Scheme and host are compared case-insensitively and default ports
(``:443`` for https, ``:80`` for http) dropped, as browsers do.
"""

from __future__ import annotations

import re

_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL = re.compile(
    r"(?P<scheme>https?)://"
    r"(?P<host>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<rest>[/?#].*)?",
    re.IGNORECASE | re.DOTALL | re.ASCII,
)
# Whitespace, C0/C1 controls, DEL and the backslash: a browser ignores, strips or reinterprets them.
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\\\s]")


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower-cased, default port dropped; None when
    the URL is not one this module can read without doubt."""
    parsed = _parse(url)
    return parsed[0] if parsed else None


def _parse(url: str) -> tuple[str, str] | None:
    """(origin, the rest of the URL) or None."""
    if not isinstance(url, str) or _UNSAFE.search(url):
        return None
    match = _URL.fullmatch(url)
    if match is None:
        return None
    scheme, host = match["scheme"].lower(), match["host"].lower()
    if ".." in host:
        return None
    origin = f"{scheme}://{host}"
    if match["port"] is not None:
        port = int(match["port"])
        if not 0 < port <= 65535:
            return None
        if port != _DEFAULT_PORTS[scheme]:
            origin += f":{port}"
    return origin, match["rest"] or ""


def parse_origins(raw: str) -> tuple[str, ...]:
    """The configured origins, comma-separated (``scheme://host[:port]``, nothing after it but
    an optional ``/``), normalised. Raises ValueError naming the first entry that is not one."""
    origins: list[str] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        parsed = _parse(entry)
        if parsed is None or parsed[1] not in ("", "/"):
            raise ValueError(f"RETURN_URL_ORIGINS: {entry!r} is not an origin (scheme://host[:port])")
        origins.append(parsed[0])
    return tuple(dict.fromkeys(origins))


def is_allowed(url: str, origins: tuple[str, ...]) -> bool:
    """Whether ``url`` is an http(s) URL on one of ``origins`` (normalised, see ``parse_origins``)."""
    origin = origin_of(url)
    return origin is not None and origin in origins
