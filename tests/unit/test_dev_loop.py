"""The dev loop's helpers: which components `make test-one` starts for a test, and which log
`make local-logs C=…` shows for a component or a function."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local import logs as local_logs
from local.settings import load as load_local_settings

REPO = Path(__file__).resolve().parents[2]


def _components_for(node_id: str) -> list[str] | None:
    # In a child: the collection runs pytest in-process, which must not happen inside this pytest.
    code = f"import json; from local.testrun import components_for; print(json.dumps(components_for([{node_id!r}])[0]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_test_marked_with_its_components_starts_only_those() -> None:
    assert _components_for("tests/integration/test_create_topics.py") == ["kafka"]


def test_an_integration_test_without_a_marker_gets_the_whole_stack() -> None:
    assert _components_for("tests/integration/test_authorize.py") is None


def test_a_unit_test_starts_nothing() -> None:
    assert _components_for("tests/unit/test_domain.py") == []


@pytest.mark.parametrize(
    ("name", "component"),
    [("kafka", "kafka"), ("authorize_payment", "event-source"), ("payment_api", "api-gateway"),
     ("public_history", "public-api"), ("outbox_relay", "scheduler"), ("reconcile_payments", "scheduler")],
)  # fmt: skip
def test_a_function_name_finds_the_log_of_the_emulator_that_runs_it(name: str, component: str) -> None:
    comp = local_logs.find(name)
    assert comp.name == component
    assert comp.log.parent == load_local_settings().logs_dir


def test_every_function_under_functions_is_found_or_deployed_only() -> None:
    emulated = {f for fs in local_logs.EMULATED_FUNCTIONS.values() for f in fs}
    deployed = {p.parent.name for p in (REPO / "functions").glob("*/app.py")}
    assert emulated <= deployed


def test_an_unknown_name_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"no component or function named 'nope'; use one of: kafka, .*authorize_payment"
    ):
        local_logs.find("nope")
