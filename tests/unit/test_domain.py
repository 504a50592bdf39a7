"""The state machine: forward moves only, and each status is announced with one stable id."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from payments_core.domain.payment import (
    ALLOWED_TRANSITIONS,
    PaymentStatus,
    can_transition,
    event_id_for,
    event_id_for_rejection,
    status_from_payment_intent,
)

S = PaymentStatus
ORDER = [S.PENDING, S.REQUIRES_ACTION, S.AUTHORIZED, S.SUCCEEDED, S.REVERTED]


def test_examples_from_the_issue():
    assert can_transition(S.REQUIRES_ACTION, S.AUTHORIZED)
    assert can_transition(S.AUTHORIZED, S.SUCCEEDED)
    assert not can_transition(S.SUCCEEDED, S.AUTHORIZED)
    assert not can_transition(S.AUTHORIZED, S.PENDING)
    assert not can_transition(S.FAILED, S.AUTHORIZED)
    assert not can_transition(S.REVERTED, S.AUTHORIZED)


def test_final_statuses_have_no_way_out():
    for status in S:
        assert (ALLOWED_TRANSITIONS[status] == frozenset()) == status.is_final


def test_no_status_can_be_reentered():
    """The transition graph has no cycle, so a status is entered at most once per payment."""
    for a, b in itertools.permutations(S, 2):
        if can_transition(a, b):
            assert not _reachable(b, a), f"{a} -> {b} -> ... -> {a} would re-enter {a}"


def _reachable(start: PaymentStatus, goal: PaymentStatus) -> bool:
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        if current == goal:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(ALLOWED_TRANSITIONS[current])
    return False


@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_any_sequence_of_proposals_only_moves_forward(proposals):
    status = S.PENDING
    history = [status]
    for proposal in proposals:
        if can_transition(status, proposal):
            status = proposal
            history.append(status)
    assert len(history) == len(set(history))
    held_then_lost = [s for s in history if s in (S.AUTHORIZED, S.SUCCEEDED)]
    if S.SUCCEEDED in held_then_lost and S.AUTHORIZED in held_then_lost:
        assert history.index(S.AUTHORIZED) < history.index(S.SUCCEEDED)


def test_payment_intent_statuses_map_to_ours():
    assert status_from_payment_intent("requires_capture", attempt_failed=False) is S.AUTHORIZED
    assert status_from_payment_intent("succeeded", attempt_failed=False) is S.SUCCEEDED
    assert status_from_payment_intent("canceled", attempt_failed=False) is S.REVERTED
    assert status_from_payment_intent("requires_action", attempt_failed=False) is S.REQUIRES_ACTION
    assert status_from_payment_intent("requires_payment_method", attempt_failed=True) is S.FAILED
    assert status_from_payment_intent("requires_payment_method", attempt_failed=False) is None
    assert status_from_payment_intent("processing", attempt_failed=False) is None


def test_event_ids_are_stable_and_distinct():
    assert event_id_for("p1", "AUTHORIZED") == event_id_for("p1", "AUTHORIZED")
    assert event_id_for("p1", "AUTHORIZED") != event_id_for("p1", "SUCCEEDED")
    assert event_id_for("p1", "AUTHORIZED") != event_id_for("p2", "AUTHORIZED")
    assert event_id_for_rejection(b"x", "INVALID_PAYLOAD") == event_id_for_rejection(b"x", "INVALID_PAYLOAD")
    assert event_id_for_rejection(b"x", "INVALID_PAYLOAD") != event_id_for_rejection(b"y", "INVALID_PAYLOAD")
