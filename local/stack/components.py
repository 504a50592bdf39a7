"""Every component of the local stack, in start order, and the Python emulators' components."""

from __future__ import annotations

import signal
import sys

from local.stack import settings as cfg
from local.stack.fake_services import LocalStripe, Moto, StripeMock
from local.stack.kafka_broker import Kafka
from local.stack.postgres_server import Postgres
from local.stack.processes import Component, log_contains, port_open
from local.stack.settings import LocalSettings


class PythonEmulator(Component):
    """A long-running emulator or stand-in run from ``local.stack``; ready when it logs READY."""

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
