"""The stack's servers for outside services: moto (AWS), localstripe and stripe-mock (Stripe)."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

from local.stack import settings as cfg
from local.stack.processes import Component, StackError, run_with_progress
from local.stack.settings import HOST


class Moto(Component):
    def marker(self) -> str:
        return "moto.server"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.settings.moto_port)]

    def ready(self) -> bool:
        try:
            url = f"{self.settings.aws_endpoint}/moto-api/"
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (http://127.0.0.1 only)
                return bool(resp.status == 200)
        except OSError:
            return False


class LocalStripe(Component):
    def marker(self) -> str:
        return "local.stack._localstripe"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "local.stack._localstripe",
            "--port",
            str(self.settings.localstripe_port),
            "--from-scratch",
        ]


class StripeMock(Component):
    @property
    def binary(self) -> Path:
        return self.settings.cache_dir / f"stripe-mock-{cfg.STRIPE_MOCK_VERSION}" / "stripe-mock"

    def marker(self) -> str:
        return str(self.binary)

    def prepare(self) -> None:
        if self.binary.is_file():
            return
        go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
        if go is None:
            raise StackError(
                self.name,
                f"stripe-mock {cfg.STRIPE_MOCK_VERSION} is not cached and Go is not installed",
                f"install Go (https://go.dev/dl, or `apt-get install -y golang`) or put a stripe-mock "
                f"binary at {self.binary}",
            )
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        log = self.settings.log_path("stripe-mock-build")
        code = run_with_progress(
            self.name,
            f"building stripe-mock {cfg.STRIPE_MOCK_VERSION} with `go install`",
            [go, "install", f"{cfg.STRIPE_MOCK_MODULE}@{cfg.STRIPE_MOCK_VERSION}"],
            log,
            timeout=900,
            env=dict(os.environ, GOBIN=str(self.binary.parent)),
        )
        if code != 0 or not self.binary.is_file():
            raise StackError(
                self.name,
                "`go install` of stripe-mock failed",
                "check network access to the Go module proxy (proxy.golang.org), then retry",
                log,
            )

    def command(self) -> list[str]:
        # stripe-mock opens HTTPS on every interface unless told otherwise (even with
        # -http-addr); park it on a unix socket so nothing listens beyond 127.0.0.1.
        https_socket = self.settings.run_dir / "stripe-mock-https.sock"
        https_socket.unlink(missing_ok=True)
        return [
            str(self.binary),
            "-http-addr",
            f"{HOST}:{self.settings.stripe_mock_port}",
            "-https-unix",
            str(https_socket),
        ]
