"""The reconciler's pace (AUDIT_STRIPE_READS_PER_SECOND) and its stale checks' backoff
(RECONCILE_BACKOFF_SECONDS): defaults, overrides, and values refused with a reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from payments_core.config import DEFAULT_RECONCILE_BACKOFF_SECONDS, get_settings

NAMES = ("AUDIT_STRIPE_READS_PER_SECOND", "RECONCILE_BACKOFF_SECONDS")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults() -> None:
    s = get_settings()
    assert s.audit_stripe_reads_per_second == 10.0
    assert s.reconcile_backoff_seconds == DEFAULT_RECONCILE_BACKOFF_SECONDS == (300, 900, 3600)


def test_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_STRIPE_READS_PER_SECOND", "40.5")
    monkeypatch.setenv("RECONCILE_BACKOFF_SECONDS", "60,600")
    s = get_settings()
    assert s.audit_stripe_reads_per_second == 40.5 and s.reconcile_backoff_seconds == (60, 600)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("AUDIT_STRIPE_READS_PER_SECOND", "0", "above 0 and at most 1000"),
        ("AUDIT_STRIPE_READS_PER_SECOND", "-3", "above 0 and at most 1000"),
        ("AUDIT_STRIPE_READS_PER_SECOND", "fast", "must be a number of Stripe requests per second"),
        ("RECONCILE_BACKOFF_SECONDS", "300,-1", "comma-separated whole seconds"),
        ("RECONCILE_BACKOFF_SECONDS", "5m", "comma-separated whole seconds"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must.*{reason}|{name} {reason}|{name}.*{reason}"):
        get_settings()
