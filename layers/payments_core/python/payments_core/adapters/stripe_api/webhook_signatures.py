"""Stripe's webhook signature check, through stripe-python (no network): which of the accepted
signing secrets verifies a ``Stripe-Signature`` header, and if none, why not."""

from __future__ import annotations

_NO_MATCH = "No signatures found matching"


def signature_failure(payload: str, header: str, secrets: tuple[str, ...], tolerance: int) -> str | None:
    """None when one of ``secrets`` verifies the header, else why not. stripe-python accepts
    any of the header's ``v1`` signatures (Stripe sends one per active secret during its own
    roll) but takes one secret: each is tried. A signature that matches but is too old says so
    rather than "no match"."""
    import stripe

    reasons: list[str] = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=tolerance)
        except stripe.SignatureVerificationError as exc:
            reasons.append(str(exc.user_message or exc))
        else:
            return None
    return next((r for r in reasons if not r.startswith(_NO_MATCH)), reasons[0] if reasons else "no secret")
