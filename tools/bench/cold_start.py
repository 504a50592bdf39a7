"""make bench (e) and (f): the handlers' cold imports against boto3, and the layer's size."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from local.stack.settings import REPO_ROOT
from tools.bench.report import Report, Row, say

LAYER_PYTHON = REPO_ROOT / "layers" / "payments_core" / "python"
BUILT_LAYER = REPO_ROOT / "build" / "layer"

# CPU seconds, not wall time: the ratio to boto3 holds on a machine busy with other work
COLD_IMPORT = "import time; t = time.process_time(); import {module}; print(time.process_time() - t)"


def cold_import_cpu_seconds(function_dir: Path, runs: int, module: str = "app") -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAYER_PYTHON), str(function_dir)])}
    env.pop("PYTHONSTARTUP", None)
    timings = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", COLD_IMPORT.format(module=module)],
            cwd=function_dir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        timings.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(timings)


def bench_cold_imports(report: Report, runs: int) -> None:
    say(f"(e) cold import of each handler against `import boto3`, CPU seconds, median of {runs} ...")
    boto3_s = cold_import_cpu_seconds(REPO_ROOT, runs, module="boto3")
    report.add(
        Row(
            "cold_import_boto3_cpu_s",
            "cold import boto3 (CPU)",
            boto3_s,
            "s",
            note="what every Lambda Python runtime already carries",
        )
    )
    for app in sorted((REPO_ROOT / "functions").glob("*/app.py")):
        name = app.parent.name
        try:
            seconds = cold_import_cpu_seconds(app.parent, runs)
        except subprocess.CalledProcessError as exc:
            failed = f"import failed: {(exc.stderr or '').strip().splitlines()[-1:]}"
            report.add(Row(f"cold_import_{name}_ratio", f"cold import {name} / boto3 (CPU)", failed))
            continue
        ratio = seconds / boto3_s if boto3_s else float("inf")
        report.add(
            Row(
                f"cold_import_{name}_ratio",
                f"cold import {name} / boto3 (CPU)",
                f"{ratio:.2f}x ({seconds:.3f} s)",
                target="<= 2x",
                within=ratio <= 2,
            )
        )


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def bench_layer(report: Report) -> None:
    if not BUILT_LAYER.is_dir():
        report.add(Row("layer_size_mb", "layer size (unzipped)", "not built", note="run `make build`"))
        return
    report.add(
        Row(
            "layer_size_mb",
            "layer size (unzipped)",
            _tree_bytes(BUILT_LAYER) / 1_000_000,
            "MB",
            "< 250 MB (Lambda, all layers + code)",
            _tree_bytes(BUILT_LAYER) < 250_000_000,
        )
    )
    zipped = BUILT_LAYER.with_suffix(".zip")
    if zipped.is_file():
        report.add(Row("layer_zip_mb", "layer size (zip)", zipped.stat().st_size / 1_000_000, "MB"))
