"""Typed values read from the environment, each refused with a ValueError naming its variable.

Only the settings (``config``, ``retention_periods``) call these: a wrong value stops the
function at start-up, naming the variable to fix, instead of surfacing as odd behaviour later.
"""

from __future__ import annotations

import os


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


# Booleans are parsed strictly: a misspelt DB_SSL=ture must stop the function at start-up, not
# quietly turn TLS off.
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_bool(name: str, default: bool, *, also_true: frozenset[str] = frozenset()) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE or value in also_true:
        return True
    if value in _FALSE:
        return False
    accepted = ", ".join(sorted(_TRUE | also_true | _FALSE))
    raise ValueError(f"{name} must be a boolean ({accepted}), got {raw!r}")


def env_ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated whole seconds, got {raw!r}") from exc
    if not values or min(values) < 0:
        raise ValueError(f"{name} must be comma-separated whole seconds, got {raw!r}")
    return values


def env_bounded(name: str, default: float, least: float, most: float) -> float:
    """A number of the environment within [least, most]; ValueError naming the range otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number between {least:g} and {most:g}, got {raw!r}") from exc
    if not least <= value <= most:
        raise ValueError(f"{name} must be between {least:g} and {most:g}, got {raw!r}")
    return value


def env_reads_per_second(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of Stripe requests per second, got {raw!r}") from exc
    if not 0 < value <= 1000:  # 0 would stop every call for ever; above live mode's limits is a typo
        raise ValueError(f"{name} must be above 0 and at most 1000 requests per second, got {raw!r}")
    return value


def env_origins(name: str) -> tuple[str, ...]:
    """Comma-separated origins (``scheme://host[:port]``), compared exactly as browsers send them."""
    raw = os.environ.get(name) or ""
    return tuple(dict.fromkeys(o.strip().rstrip("/") for o in raw.split(",") if o.strip()))
