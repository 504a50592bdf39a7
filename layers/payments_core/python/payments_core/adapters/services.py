"""The gateways a use case needs, built once per warm container. Tests build their own
``Services`` with doubles in place of Stripe or Kafka."""

from __future__ import annotations

from dataclasses import dataclass, field

from payments_core.adapters.kafka.kafka_gateway import EventPublisher, KafkaEventPublisher
from payments_core.adapters.postgres.db import Database, get_database
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway, StripeGateway
from payments_core.adapters.user_service import HttpUserDirectory, UserDirectory
from payments_core.config import Settings, get_settings


@dataclass
class Services:
    db: Database
    stripe: StripeGateway
    publisher: EventPublisher
    settings: Settings
    # campusG's user service; built from the settings unless a test passes a double
    users: UserDirectory = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.users is None:
            self.users = HttpUserDirectory(self.settings)


_services: Services | None = None


def get_services() -> Services:
    global _services
    if _services is None:
        settings = get_settings()
        _services = Services(
            db=get_database(),
            stripe=StripeApiGateway(settings),
            publisher=KafkaEventPublisher(settings),
            settings=settings,
        )
    return _services


def set_services(services: Services | None) -> None:
    """Replace the container's gateways (tests, local tools)."""
    global _services
    _services = services
