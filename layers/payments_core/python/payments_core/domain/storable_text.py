"""Text PostgreSQL can store: NULs and lone UTF-16 surrogates written as escapes, or refused.

Shared by the Kafka commands and the HTTP requests, so that an id is stored, keyed and answered
in one form whichever way it came in.
"""

from __future__ import annotations

import re
from typing import Any

# What PostgreSQL text cannot hold (NUL) and what cannot be encoded as UTF-8 at all (a lone
# UTF-16 surrogate: JSON can carry "\ud800", and json.loads joins only paired ones).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_TEXT_MESSAGE = (
    "text must not contain NUL characters (\\u0000) or lone UTF-16 surrogates (\\ud800-\\udfff)"
)


def storable(text: str) -> str:
    """``text`` with each NUL and lone surrogate written as its JSON escape, six ASCII
    characters (``\\u0000``, ``\\ud800``): the one form in which a refused command's order id
    is stored, used as the Kafka key and answered. Other text is returned unchanged."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Free text a compensation must never be refused for: escaped like an id instead (a revert
# refused for its reason would leave the hold on the card).
FREE_TEXT_FIELDS = ("reason",)


def escape_free_text(payload: Any) -> None:
    """Write the NULs and lone surrogates of the payload's free-text fields as escapes, in place."""
    if isinstance(payload, dict):
        for name in FREE_TEXT_FIELDS:
            if isinstance(payload.get(name), str):
                payload[name] = storable(payload[name])


def has_unstorable_text(value: Any) -> bool:
    """Whether any key or string in a parsed JSON value contains a NUL or a lone surrogate.
    Iterative: the value's depth is not this function's concern."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
