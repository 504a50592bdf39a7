"""The dev loop's helpers: which components `make test-one` starts for a test, and which log
`make local-logs C=…` shows for a component or a function."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from local.stack import logs as local_logs
from local.stack.settings import load as load_local_settings

REPO = Path(__file__).resolve().parents[2]


def _components_for(node_id: str) -> list[str] | None:
    # In a child: the collection runs pytest in-process, which must not happen inside this pytest.
    code = f"import json; from local.stack.testrun import components_for; print(json.dumps(components_for([{node_id!r}])[0]))"
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


def test_a_first_run_step_reports_its_start_progress_and_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from local.stack import processes

    monkeypatch.setattr(processes, "PROGRESS_EVERY_S", 0.1)
    log = tmp_path / "build.log"
    code = processes.run_with_progress(
        "stripe-mock",
        "building stripe-mock v0 with `go install`",
        ["sh", "-c", "echo compiling; sleep 0.5"],
        log,
        timeout=30,
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert log.read_text() == "compiling\n"
    assert out[0].startswith("stripe-mock   building stripe-mock v0 with `go install` (once; log: ")
    assert any(line.startswith("stripe-mock   ... still building (") for line in out[1:-1])
    assert re.fullmatch(r"stripe-mock   building done in \d+ s", out[-1])


def test_a_first_run_step_that_hangs_is_stopped_at_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from local.stack import processes

    monkeypatch.setattr(processes, "PROGRESS_EVERY_S", 0.1)
    code = processes.run_with_progress(
        "kafka", "fetching jars", ["sleep", "30"], tmp_path / "f.log", timeout=0.3
    )
    assert code == -1
    assert capsys.readouterr().out.splitlines()[-1].startswith("kafka         fetching failed (exit -1) in ")
