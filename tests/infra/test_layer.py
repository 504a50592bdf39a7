"""The shared layer: complete enough that every function's app imports from it alone, and small.

The real layer targets the Lambda runtime (python3.12, aarch64 wheels); this machine may be
another Python on x86_64, whose interpreter cannot load aarch64 extension modules (pydantic-core).
So the import test builds a host-platform variant of the same layer with the same builder (same
requirements, same payments_core copy, same exclusions) and imports from that; the size test
builds the real one. Both fetch wheels with pip (PyPI or its cache).
"""

from __future__ import annotations

import platform
import ssl
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infra import build_layer
from infra.components.functions import handler_of
from infra.runtime import PROVIDED_BY_RUNTIME, WHEEL_PLATFORM

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = sorted(p.parent for p in (ROOT / "functions").glob("*/app.py"))
MAX_ZIPPED_MB = 20


@pytest.fixture(scope="session")
def host_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("host-layer")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    build_layer.build(out, platform=f"{machine}-manylinux2014", python_version=version)
    return out / "layer" / "python"


@pytest.fixture(scope="session")
def lambda_runtime_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """boto3/botocore as the Lambda runtime provides them (the layer leaves them out)."""
    target = tmp_path_factory.mktemp("runtime-sdk")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
            "--only-binary=:all:",
            "boto3",
        ],
        check=True,
    )
    return target


def test_layer_leaves_out_what_the_runtime_provides(host_layer: Path) -> None:
    names = {p.name.split("-")[0].lower() for p in host_layer.iterdir()}
    assert not names & set(PROVIDED_BY_RUNTIME)
    assert (host_layer / "payments_core" / "config.py").is_file()


@pytest.mark.parametrize("function_dir", FUNCTIONS, ids=[p.name for p in FUNCTIONS])
def test_function_imports_from_the_layer_alone(
    function_dir: Path, host_layer: Path, lambda_runtime_sdk: Path
) -> None:
    # -I: no PYTHONPATH, no user site; -S: no site-packages (so not the venv). The path is what
    # Lambda gives a function: its own dir, then the layer, then the runtime's SDK.
    path = [str(function_dir), str(host_layer), str(lambda_runtime_sdk)]
    handler = handler_of(function_dir.name).removeprefix("app.")
    code = f"import sys; sys.path[:0] = {path!r}; import app; assert callable(app.{handler})"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=function_dir,
        env={
            "AWS_DEFAULT_REGION": "ap-southeast-1",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "PATH": "/usr/bin:/bin",
        },
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_real_layer_size(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path_factory.mktemp("lambda-layer")
    zipped = build_layer.build(out)  # python3.12 / aarch64-manylinux2014, as deployed
    size_mb = zipped.stat().st_size / 1024 / 1024
    unzipped_mb = build_layer.unzipped_size(out / "layer") / 1024 / 1024
    with capsys.disabled():
        print(f"\nlayer ({WHEEL_PLATFORM}): {size_mb:.1f} MB zipped, {unzipped_mb:.1f} MB unzipped")
    assert size_mb < MAX_ZIPPED_MB
    assert unzipped_mb < 250  # Lambda's limit for function + layers, unzipped
    with zipfile.ZipFile(zipped) as zf:
        names = zf.namelist()
    assert "python/payments_core/__init__.py" in names
    # The RDS CAs, so the migration can verify the instance's certificate (test_migration_tls.py).
    with zipfile.ZipFile(zipped) as zf:
        bundle = zf.read("python/payments_core/rds-ca-bundle.pem").decode()
    subjects = [
        dict(part[0] for part in ca["subject"])
        for ca in ssl.create_default_context(cadata=bundle).get_ca_certs()
    ]
    assert any(
        s.get("commonName", "").startswith("Amazon RDS") and "Root CA" in s["commonName"] for s in subjects
    )
    assert len(subjects) >= 100  # every region's RDS root CAs and the RDS Proxy's Amazon roots
    assert any(n.startswith("python/pydantic_core/") and "aarch64" in n for n in names)


def test_layer_zip_is_deterministic(tmp_path: Path) -> None:
    # Same content, same bytes: an unchanged layer keeps its asset hash (no new layer version).
    src = tmp_path / "layer" / "python"
    src.mkdir(parents=True)
    (src / "m.py").write_text("x = 1\n")
    first = build_layer._zip(tmp_path / "layer", tmp_path / "a.zip").read_bytes()
    (src / "m.py").touch()
    second = build_layer._zip(tmp_path / "layer", tmp_path / "b.zip").read_bytes()
    assert first == second


@pytest.mark.parametrize("event", ["api_release.json", "api_payment_status.json", "api_history.json"])
def test_webhook_function_answers_only_the_webhook_route(
    event: str, host_layer: Path, lambda_runtime_sdk: Path
) -> None:
    """The webhook function shares payments_core.entrypoints.api's resolver with the API function but has
    other permissions: a saga route sent to it is answered 404 before anything is resolved."""
    function_dir = ROOT / "functions" / "stripe_webhook"
    path = [str(function_dir), str(host_layer), str(lambda_runtime_sdk)]
    code = f"""
import json, sys
sys.path[:0] = {path!r}
import app

class Context:
    function_name = "stripe_webhook"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:ap-southeast-1:123456789012:function:stripe_webhook"
    aws_request_id = "test"

answer = app.lambda_handler(json.load(open({str(ROOT / "events" / event)!r})), Context())
assert answer["statusCode"] == 404, answer
assert json.loads(answer["body"])["error"] == "NOT_FOUND", answer
"""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=function_dir,
        env={
            "AWS_DEFAULT_REGION": "ap-southeast-1",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "CampusG/Payments/test",
            "PATH": "/usr/bin:/bin",
        },
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
