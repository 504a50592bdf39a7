"""The Docker Compose CLI, built from source once, for checking docker-compose.local.yml.

    python -m local.stack.compose_cli            build it if missing, print its path

This machine has the docker client without the compose plugin, and no Docker engine; `docker
compose config` needs neither an engine nor Docker Desktop, so the project builds the plugin
with the Go toolchain at a pinned version into the cache (as it does stripe-mock): about four
minutes the first time, nothing after. The binary also works on its own as `docker-compose`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from local.stack import settings as cfg
from local.stack.processes import run_with_progress

COMPOSE_MODULE = "github.com/docker/compose/v2/cmd"
COMPOSE_VERSION = "v2.29.7"


def binary(s: cfg.LocalSettings | None = None) -> Path:
    s = s or cfg.load()
    return s.cache_dir / f"docker-compose-{COMPOSE_VERSION}" / "docker-compose"


def ensure(s: cfg.LocalSettings | None = None) -> Path:
    """The path of the built CLI, building it first when it is not cached. RuntimeError (one
    line naming the fix) when Go is missing or the build fails."""
    s = s or cfg.load()
    target = binary(s)
    if target.is_file():
        return target
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError(
            "the Docker Compose CLI is not cached and Go is not installed: install Go, then retry"
        )
    build_dir = target.parent / "bin.partial"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    log = s.log_path("docker-compose-build")
    code = run_with_progress(
        "compose-cli",
        f"building docker compose {COMPOSE_VERSION} with `go install`",
        [go, "install", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
        log,
        timeout=1800,
        env=dict(os.environ, GOBIN=str(build_dir), CGO_ENABLED="0"),
    )
    built = build_dir / "cmd"  # `go install` names the binary after the package directory
    if code != 0 or not built.is_file():
        raise RuntimeError(
            f"building docker compose {COMPOSE_VERSION} failed (log: {log}); check access to the Go module proxy"
        )
    built.rename(target)
    shutil.rmtree(build_dir, ignore_errors=True)
    return target


def main() -> int:
    try:
        print(ensure())
    except RuntimeError as exc:
        print(f"compose-cli: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
