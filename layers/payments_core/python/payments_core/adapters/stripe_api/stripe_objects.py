"""What the service keeps of Stripe's objects: plain snapshots, never a client secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class IntentSnapshot:
    """What the service needs to know of a PaymentIntent (never its client secret)."""

    id: str
    status: str
    amount: int = 0
    amount_capturable: int = 0
    amount_received: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    failure_code: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    next_action_url: str | None = None
    latest_charge: str | None = None
    created: int = 0

    @classmethod
    def from_stripe(cls, obj: Any) -> IntentSnapshot:
        data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        error = data.get("last_payment_error") or {}
        next_action = data.get("next_action") or {}
        redirect = next_action.get("redirect_to_url") or {}
        charge = data.get("latest_charge")
        if isinstance(charge, dict):
            charge = charge.get("id")
        return cls(
            id=data["id"],
            status=data.get("status") or "",
            amount=int(data.get("amount") or 0),
            amount_capturable=int(data.get("amount_capturable") or 0),
            amount_received=int(data.get("amount_received") or 0),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            failure_code=error.get("code"),
            decline_code=error.get("decline_code"),
            failure_message=error.get("message"),
            next_action_url=redirect.get("url"),
            latest_charge=charge,
            created=int(data.get("created") or 0),
        )


@dataclass(frozen=True)
class AccountSnapshot:
    """What a payout needs to know of a connected account: can it receive a transfer?"""

    id: str
    transfers_capability: str | None  # Stripe's capabilities.transfers: active, inactive, pending
    payouts_enabled: bool = False

    @property
    def can_receive_transfers(self) -> bool:
        # Stripe accepts a transfer to a connected account only while its transfers
        # capability is active; payouts_enabled is about the account's own bank payouts.
        return self.transfers_capability == "active"

    @classmethod
    def from_stripe(cls, obj: Any) -> AccountSnapshot:
        data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        capabilities = data.get("capabilities") or {}
        transfers = capabilities.get("transfers") if isinstance(capabilities, dict) else None
        return cls(
            id=str(data["id"]),
            transfers_capability=transfers if isinstance(transfers, str) else None,
            payouts_enabled=bool(data.get("payouts_enabled")),
        )
