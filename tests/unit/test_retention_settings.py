"""RETAIN_*_DAYS and RETENTION_BATCH_ROWS: defaults, overrides, and values that would delete rows
still needed refused rather than clamped."""

from __future__ import annotations

import pytest
from payments_core.config import get_settings
from payments_core.retention_periods import (
    RETENTION_DEFAULT_DAYS,
    RETENTION_ENV,
    RETENTION_FLOOR_DAYS,
    RetentionSettings,
    retention_settings,
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in [*RETENTION_ENV.values(), "RETENTION_BATCH_ROWS"]:
        monkeypatch.delenv(env, raising=False)
    get_settings.cache_clear()


def test_defaults_are_the_documented_periods() -> None:
    s = retention_settings()
    assert s == RetentionSettings()
    assert {t: s.days(t) for t in RETENTION_ENV} == {
        "outbox": 7,
        "stripe_events": 30,
        "order_leases": 7,
        "stripe_money_calls": 30,
        "command_outcomes": 8,
        "payments": 400,
        "payments_archive": 2557,
    }
    assert s.batch_rows == 1000
    # every default is at least its floor, and the webhook ids outlive Stripe's 3-day retries
    assert all(RETENTION_DEFAULT_DAYS[t] >= RETENTION_FLOOR_DAYS[t] for t in RETENTION_ENV)
    assert RETENTION_FLOOR_DAYS["stripe_events"] > 3 and RETENTION_FLOOR_DAYS["outbox"] > 3
    # longer than Kafka's default 7-day retention of a command record
    assert RETENTION_FLOOR_DAYS["command_outcomes"] > 7
    # payments stay live past the card networks' 120-day dispute window; the archive 7 years
    assert RETENTION_FLOOR_DAYS["payments"] > 120 and s.payments_archive_days == 7 * 365 + 2


def test_each_setting_is_read_from_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = {t: RETENTION_FLOOR_DAYS[t] + 40 + i for i, t in enumerate(RETENTION_ENV)}
    for table, env in RETENTION_ENV.items():
        monkeypatch.setenv(env, str(wanted[table]))
    monkeypatch.setenv("RETENTION_BATCH_ROWS", "250")
    s = retention_settings()
    assert {t: s.days(t) for t in RETENTION_ENV} == wanted
    assert s.batch_rows == 250
    assert get_settings().retention == s  # the service's settings carry them


@pytest.mark.parametrize("table", list(RETENTION_ENV))
def test_a_period_below_its_floor_is_refused(monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    if table == "payments_archive":  # its floor is below the payments' default: lower that too
        monkeypatch.setenv(RETENTION_ENV["payments"], str(RETENTION_FLOOR_DAYS["payments"]))
    monkeypatch.setenv(RETENTION_ENV[table], str(RETENTION_FLOOR_DAYS[table] - 1))
    with pytest.raises(ValueError, match=RETENTION_ENV[table]):
        retention_settings()
    monkeypatch.setenv(RETENTION_ENV[table], str(RETENTION_FLOOR_DAYS[table]))
    assert retention_settings().days(table) == RETENTION_FLOOR_DAYS[table]


@pytest.mark.parametrize("raw", ["seven", "7.5", "-1"])
def test_a_period_that_is_not_whole_days_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RETAIN_OUTBOX_DAYS", raw)
    with pytest.raises(ValueError, match="RETAIN_OUTBOX_DAYS"):
        retention_settings()


@pytest.mark.parametrize("raw", ["0", "10001", "many"])
def test_a_batch_size_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RETENTION_BATCH_ROWS", raw)
    with pytest.raises(ValueError, match="RETENTION_BATCH_ROWS"):
        retention_settings()


def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAIN_STRIPE_EVENTS_DAYS", "")
    assert retention_settings().stripe_events_days == 30


def test_payments_outlive_every_other_row_of_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A payment is archived with its order's remaining rows: only after their own periods."""
    monkeypatch.setenv("RETAIN_STRIPE_EVENTS_DAYS", "400")
    with pytest.raises(
        ValueError, match=r"RETAIN_PAYMENTS_DAYS must exceed RETAIN_STRIPE_EVENTS_DAYS \(400\)"
    ):
        retention_settings()
    monkeypatch.setenv("RETAIN_PAYMENTS_DAYS", "401")
    assert retention_settings().payments_days == 401


def test_the_archive_outlives_the_payments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAIN_PAYMENTS_DAYS", "800")
    monkeypatch.setenv("RETAIN_ARCHIVED_PAYMENTS_DAYS", "800")
    with pytest.raises(ValueError, match="RETAIN_ARCHIVED_PAYMENTS_DAYS must exceed RETAIN_PAYMENTS_DAYS"):
        retention_settings()
    monkeypatch.setenv("RETAIN_ARCHIVED_PAYMENTS_DAYS", "801")
    assert retention_settings().payments_archive_days == 801
