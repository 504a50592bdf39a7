"""Settings read from the environment: a misspelt boolean stops start-up with the variable's
name instead of silently meaning false; the service name follows POWERTOOLS_SERVICE_NAME."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from payments_core.config import get_settings

LAYER = Path(__file__).resolve().parents[2] / "layers" / "payments_core" / "python"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DB_SSL", raising=False)
    monkeypatch.delenv("DB_IAM_AUTH", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("name", ["DB_SSL", "DB_IAM_AUTH"])
@pytest.mark.parametrize("raw", ["ture", "flase", "2", "enabled", "y es"])
def test_a_misspelt_boolean_is_a_startup_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=rf"^{name} must be a boolean .*got '{raw}'"):
        get_settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("require", True), (" on ", True),
     ("false", False), ("0", False), ("No", False), ("off", False), ("", True)],
)  # fmt: skip
def test_db_ssl_accepts_the_usual_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("DB_SSL", raw)
    assert get_settings().db_ssl is expected


def test_require_is_a_tls_word_not_a_general_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_IAM_AUTH", "require")
    with pytest.raises(ValueError, match="DB_IAM_AUTH"):
        get_settings()


def test_defaults_keep_tls_on_and_iam_auth_off() -> None:
    settings = get_settings()
    assert (settings.db_ssl, settings.db_iam_auth) == (True, False)


def _service_name(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_SERVICE_NAME"}
    if env_value is not None:
        env["POWERTOOLS_SERVICE_NAME"] = env_value
    env["PYTHONPATH"] = str(LAYER)
    code = (
        "from payments_core.observability import logger, metrics, tracer\n"
        "print(logger.service, metrics.service, tracer._options['service'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_service_name_comes_from_the_environment_variable_the_docstring_names() -> None:
    assert _service_name("payments-canary") == "payments-canary payments-canary payments-canary"
    assert _service_name(None) == "payment-service payment-service payment-service"
