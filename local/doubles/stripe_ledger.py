"""The strict Stripe double's record of the money moved, and the Transfers API served from it.

What moved money at the strict Stripe double: PaymentIntents per order, captures, refunds,
and the Transfers API (with reversals) that localstripe lacks, served from the same record."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from local.doubles.http_double import Answer
from local.doubles.stripe_wire import nested, new_id, ok, page, stripe_error


@dataclass
class Ledger:
    """What Stripe did, as seen by the double (the checks' second source besides localstripe)."""

    intents_by_order: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    captures: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # pi -> amounts
    refunds: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # pi -> refunds
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> transfer object

    def transfers_for(self, transfer_group: str) -> list[dict[str, Any]]:
        return [t for t in self.transfers.values() if t.get("transfer_group") == transfer_group]

    def captured(self, pi: str) -> int | None:
        return self.captures[pi][0] if self.captures.get(pi) else None

    def refunded(self, pi: str) -> int:
        return sum(int(r["amount"]) for r in self.refunds.get(pi, []))

    def serve_transfers(self, method: str, route: str, params: list[tuple[str, str]]) -> Answer:
        """``/v1/transfers[/{id}[/reversals]]``, which localstripe lacks (the caller holds the ledger's lock)."""
        parts = route.strip("/").split("/")  # v1, transfers[, id[, reversals]]
        values = dict(params)
        if len(parts) == 2 and method == "POST":
            return self.create_transfer(values, nested(params, "metadata"))
        if len(parts) == 2 and method == "GET":
            since = int(values.get("created[gte]") or 0)
            found = [
                t
                for t in self.transfers.values()
                if all(values.get(f) in (None, t.get(f)) for f in ("transfer_group", "destination"))
                and int(t["created"]) >= since
            ]
            return ok(page(found[::-1], "/v1/transfers", values))
        transfer = self.transfers.get(parts[2])
        if transfer is None:
            return stripe_error(404, f"No such transfer: '{parts[2]}'", code="resource_missing", param="id")
        if len(parts) == 3 and method == "GET":
            return ok(transfer)
        if len(parts) == 4 and parts[3] == "reversals" and method == "POST":
            return self.reverse(transfer, values, nested(params, "metadata"))
        if len(parts) == 4 and parts[3] == "reversals" and method == "GET":
            return ok(page(transfer["reversals"]["data"], transfer["reversals"]["url"], values))
        return stripe_error(404, f"Unrecognized request URL ({method}: {route}).")

    def create_transfer(self, values: dict[str, str], metadata: dict[str, str]) -> Answer:
        try:
            amount = int(values["amount"])
        except (KeyError, ValueError):
            return stripe_error(400, "Invalid integer: amount", param="amount")
        destination = values.get("destination", "")
        if amount <= 0:
            return stripe_error(400, "Amount must be at least 1 cent", param="amount")
        if not destination.startswith("acct_"):
            return stripe_error(400, f"No such destination: '{destination}'", param="destination")
        tid = new_id("tr_")
        transfer = {
            "id": tid,
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "balance_transaction": new_id("txn_"),
            "created": int(time.time()),
            "currency": values.get("currency", "").lower(),
            "description": values.get("description"),
            "destination": destination,
            "destination_payment": new_id("py_"),
            "livemode": False,
            "metadata": metadata,
            "reversals": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/transfers/{tid}/reversals",
            },
            "reversed": False,
            "source_transaction": values.get("source_transaction"),
            "source_type": "card",
            "transfer_group": values.get("transfer_group"),
        }
        self.transfers[tid] = transfer
        return ok(transfer)

    def reverse(self, transfer: dict[str, Any], values: dict[str, str], metadata: dict[str, str]) -> Answer:
        remaining = int(transfer["amount"]) - int(transfer["amount_reversed"])
        amount = int(values.get("amount") or remaining)
        if remaining <= 0:
            return stripe_error(400, f"Transfer {transfer['id']} has already been fully reversed.")
        if amount <= 0 or amount > remaining:
            return stripe_error(
                400,
                f"Amount ({amount}) is greater than the amount remaining to be reversed ({remaining})",
                param="amount",
            )
        reversal = {
            "id": new_id("trr_"),
            "object": "transfer_reversal",
            "amount": amount,
            "balance_transaction": new_id("txn_"),
            "created": int(time.time()),
            "currency": transfer["currency"],
            "destination_payment_refund": new_id("pyr_"),
            "metadata": metadata,
            "source_refund": None,
            "transfer": transfer["id"],
        }
        transfer["amount_reversed"] = int(transfer["amount_reversed"]) + amount
        transfer["reversed"] = transfer["amount_reversed"] >= int(transfer["amount"])
        transfer["reversals"]["data"].insert(0, reversal)
        return ok(reversal)
