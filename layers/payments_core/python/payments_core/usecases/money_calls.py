"""The money-moving Stripe calls of an order's lease holder, recorded in stripe_money_calls.

Every call that moves money writes its intent before it is sent (committed; for a create, with
the PENDING row) and its outcome after: an unknown one (a timeout, a 5xx) at once, and it makes
the payment uncertain; a known one (ok, refused) with the holder's next statement (its next
transaction's fence, or the release: ``leases``), not in a transaction of its own. A call left
without an outcome is checked against Stripe by the settlement audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from payments_core.adapters.postgres.db import Database
from payments_core.domain.errors import Rejection, TransientError

# The Stripe methods that move money: their intent and outcome are recorded.
MONEY_ACTIONS = frozenset({"create_hold", "capture", "cancel", "refund", "transfer", "reverse_transfer"})

# The intent, written by the statement that renews the lease (none when it was taken over).
_MONEY_CALL_SQL = """
WITH renewed AS (
    UPDATE order_leases SET expires_at = greatest(expires_at, now() + make_interval(secs => :ttl))
    WHERE order_id = :order_id AND token = :token RETURNING token
)
INSERT INTO stripe_money_calls (order_id, action, lease_token)
SELECT :order_id, :action, token FROM renewed
RETURNING id, EXISTS (
    SELECT 1 FROM stripe_money_calls WHERE order_id = :order_id AND action = :action
) AS attempted_before
"""
# A known outcome (ok, refused) is written by the next statement the holder sends anyway (the
# fence of its next transaction, or the release) rather than in a transaction of its own.
_WITH_OUTCOME = (
    "WITH call AS (UPDATE stripe_money_calls SET finished_at = now(), outcome = :outcome"
    " WHERE id = :call_id AND finished_at IS NULL) "
)
# An outcome we do not know (a timeout, a 5xx) makes the payment uncertain at once.
_MONEY_OUTCOME_SQL = """
WITH call AS (
    UPDATE stripe_money_calls SET finished_at = now(), outcome = :outcome WHERE id = :id RETURNING order_id
)
UPDATE payments SET audit_due_at = least(coalesce(audit_due_at, 'infinity'), now() + make_interval(secs => :delay)),
                    audit_reason = coalesce(audit_reason, :reason)
WHERE :uncertain AND order_id = (SELECT order_id FROM call)
"""


@dataclass
class MoneyCalls:
    """One lease holder's money calls: the intent to use for the next one, and a known outcome
    not yet known written (it rides on the holder's next statement)."""

    db: Database
    order_id: str
    audit_delay_s: float
    # Writes that ride on a transaction of the holder count once that transaction commits
    # (Database.commits moves past the count taken when they were written); until then they
    # are written again by the next fence, or by the release.
    _outcome: tuple[int, str] | None = None  # (call id, ok | refused) not yet known written
    _outcome_at: int | None = None
    _intent: tuple[str, int, int] | None = None  # (action, call id, commits when written)

    def _settled(self, at: int | None) -> bool:
        """A write made in the transaction that began with ``at`` commits has committed."""
        return at is not None and self.db.commits > at

    def intended(self, action: str, call_id: int) -> None:
        """The intent of the next ``action`` call was written inside the current transaction
        (with the row it is for): once that transaction commits, ``Lease.money_call`` uses it instead
        of writing one."""
        self._intent = (action, call_id, self.db.commits)

    def take_intent(self, action: str) -> int | None:
        """The call id of the intent written for this ``action`` (``intended``), once committed;
        None otherwise. Either way that intent is used up."""
        intent, self._intent = self._intent, None
        if intent is not None and intent[0] == action and self._settled(intent[2]):
            return intent[1]
        return None

    def record_intent(self, action: str, token: int, ttl_s: float) -> tuple[int, bool] | None:
        """Write the intent of an ``action`` call, renewing the lease ``token`` with it: (call id,
        whether an earlier call of this action was recorded for the order), or None when the
        lease is no longer ``token``'s."""
        rows = self.db.query(_MONEY_CALL_SQL, order_id=self.order_id, token=token, ttl=ttl_s, action=action)
        if not rows:
            return None
        return rows[0]["id"], bool(rows[0]["attempted_before"])

    @contextmanager
    def outcome(self, action: str, call_id: int) -> Iterator[None]:
        """The outcome of the call the block makes: ok, refused (Stripe said no: nothing moved)
        or unknown (the payment becomes uncertain at once)."""
        outcome = "unknown"
        try:
            yield
            outcome = "ok"
        except Rejection:
            outcome = "refused"
            raise
        finally:
            if outcome == "unknown":
                # Left unrecorded if the database is gone too: the audit finds the open call.
                with suppress(TransientError):
                    self.db.execute(
                        _MONEY_OUTCOME_SQL,
                        id=call_id,
                        outcome=outcome,
                        uncertain=True,
                        delay=self.audit_delay_s,
                        reason=f"{action} outcome unknown",
                    )
            else:
                # Nothing is uncertain: written with the holder's next statement (see fence and
                # release). If the holder dies first, the call is found open and audited.
                self._outcome, self._outcome_at = (int(call_id), outcome), None

    def pending_outcome(self) -> tuple[int, str] | None:
        """The known outcome (call id, ok | refused) still to be written with the holder's next
        statement: None once a transaction that carried it has committed."""
        if self._outcome is not None and self._settled(self._outcome_at):
            self._outcome = None
        return self._outcome

    def riding_on(self, sql: str, params: dict[str, Any]) -> str:
        """``sql`` (a statement of the holder's) made to write the pending known outcome too, its
        parameters added to ``params``; ``sql`` itself when none is pending."""
        outcome = self.pending_outcome()
        if outcome is None:
            return sql
        params.update(call_id=outcome[0], outcome=outcome[1])
        return _WITH_OUTCOME + sql

    def carried(self, commits: int) -> None:
        """A statement ``riding_on`` made ran in the transaction begun at ``commits``."""
        if self._outcome is not None:
            self._outcome_at = commits

    def written(self) -> None:
        """The pending outcome was written by a statement of its own (the release)."""
        self._outcome = None

    def flush_outcome(self) -> None:
        """Write a known outcome still waiting, on its own (before another money call)."""
        if self._outcome is not None and not self._settled(self._outcome_at):
            with suppress(TransientError):
                self.db.execute(
                    _MONEY_OUTCOME_SQL,
                    id=self._outcome[0],
                    outcome=self._outcome[1],
                    uncertain=False,
                    delay=self.audit_delay_s,
                    reason="",
                )
        self._outcome = None
