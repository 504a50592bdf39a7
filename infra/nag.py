"""cdk-nag (v3) acknowledgements, each with its reason, through CDK's ``Validations`` API.

v3 acknowledges one finding at a time: a rule that reports per finding (IAM4, IAM5) needs each
finding named, e.g. ``AwsSolutions-IAM5[Resource::*]``; ``applies_to`` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


@dataclass(frozen=True)
class Suppression:
    id: str
    reason: str
    applies_to: Sequence[str] = ()


def suppress(scope: IConstruct, suppressions: Iterable[Suppression]) -> None:
    """Acknowledge rules on ``scope`` and everything under it."""
    acks = [
        Acknowledgment(id=ident, reason=s.reason)
        for s in suppressions
        for ident in ([f"{s.id}[{finding}]" for finding in s.applies_to] or [s.id])
    ]
    Validations.of(scope).acknowledge(*acks)
