"""A Lambda handler in a child process killed by SIGKILL at chosen points, for the crash drill.

Run a Lambda handler in a child process that dies by SIGKILL at chosen points, like a
function that hits its timeout or runs out of memory at any line. For the crash drill.

    runner = CrashRunner("authorize", seed=7, env=child_env, log_path=...)
    mapping = EventSourceMapping(config, handler=runner.handle)   # the local MSK mapping
    runner.invoke("reconcile")                                     # or a scheduled function

The parent (``CrashRunner``) hands each invocation to the child over a pipe, with a kill plan
drawn from its seeded RNG: "die at the N-th crossing of phase P", or "die after T ms wherever
you are" (a timer SIGKILL from the parent). When the child dies the invocation raises, so the
event source mapping re-delivers the whole batch, as AWS does after a crashed invocation, and
a fresh child (a cold start) takes the next one.

The child (``python -m local.doubles.crash_child``) builds the service's own gateways and wraps them,
without touching ``payments_core``:

- the Stripe gateway: ``before_stripe`` (a request about to be sent), then, once a money-moving
  request answered, ``after_stripe_before_commit`` (Stripe acted, the database does not know
  yet), or ``between_capture_and_transfer`` for a capture's answer;
- the database connection: ``before_db_commit`` (the transaction's COMMIT about to be sent);
- the event publisher: ``after_commit_before_publish`` (changes and outbox rows committed, the
  events not on Kafka yet).

Besides the seeded plans, the parent can name orders whose transfer is to be interrupted while
it is in flight at Stripe (``in_flight[order_id] = "kill" | "drop"``): about a second after the
child sends that order's transfer, it dies (``transfer_in_flight``: a Lambda timeout while the
request is at Stripe) or drops every database session it has (``connection_dropped``: the
sessions are terminated by the server, the process goes on). Each order is interrupted once.

At the chosen crossing the child writes one line naming the phase to the parent, then sends
itself SIGKILL: nothing after that point runs (no ``finally``, no ROLLBACK, no socket closed
politely); PostgreSQL sees the connection drop and releases its locks, as with a dead Lambda.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from local.stack.settings import REPO_ROOT

log = logging.getLogger("local.doubles.crash_runner")

BEFORE_STRIPE = "before_stripe"
AFTER_STRIPE = "after_stripe_before_commit"
CAPTURE_TO_TRANSFER = "between_capture_and_transfer"
BEFORE_COMMIT = "before_db_commit"
BEFORE_PUBLISH = "after_commit_before_publish"
TIMER = "anywhere_timer"
TRANSFER_IN_FLIGHT = "transfer_in_flight"
DROPPED = "connection_dropped"  # not a kill: the child lives on without its sessions
PHASES = (
    BEFORE_STRIPE,
    AFTER_STRIPE,
    BEFORE_COMMIT,
    BEFORE_PUBLISH,
    CAPTURE_TO_TRANSFER,
    TIMER,
    TRANSFER_IN_FLIGHT,
)
IN_FLIGHT_AFTER_S = 1.0  # how long the transfer has been on its way when the child is interrupted

# Stripe requests that move money (their answer returning is a crash point); the rest only read.
MONEY_MOVING = frozenset({"create_hold", "capture", "cancel", "refund", "transfer", "reverse_transfer"})
FUNCTIONS = {
    "batch": "authorize_payment",
    "reconcile": "reconcile_payments",
    "relay": "outbox_relay",
    "api": "payment_api",  # an API Gateway event: the webhook route, say
}


class ChildKilled(RuntimeError):
    """The invocation's process died (killed by plan, by timer, or of its own accord)."""

    def __init__(self, phase: str, detail: str = "") -> None:
        super().__init__(f"function process killed ({phase}{': ' + detail if detail else ''})")
        self.phase = phase
        self.detail = detail


# ---- the parent ---------------------------------------------------------------------------------


class CrashRunner:
    """One function's child process, restarted after every death, and its seeded kill plans."""

    def __init__(
        self,
        name: str,
        *,
        seed: int,
        env: dict[str, str],
        log_path: Path,
        kill_probability: float = 0.3,
        timer_share: float = 0.15,
        timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.rng = random.Random(f"{seed}:{name}")
        self.env = env
        self.log_path = log_path
        self.kill_probability = kill_probability
        self.timer_share = timer_share
        self.timeout_s = timeout_s
        self.kills: Counter[str] = Counter()  # by phase
        self.kill_details: list[tuple[str, str]] = []
        self.planned_not_reached = 0
        self.invocations = 0
        self.cold_starts = 0
        self.crossings: Counter[str] = Counter()  # phases crossed by invocations that lived
        # orders whose transfer is interrupted in flight ("kill" or "drop"), shared by the drill
        self.in_flight: dict[str, str] = {}
        self.dropped: list[str] = []  # orders whose sessions were dropped during their transfer
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- process
    def _start(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "local.doubles.crash_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=out,
            cwd=str(REPO_ROOT),
            env=self.env,
        )
        out.close()
        self.cold_starts += 1
        return proc

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        return self._proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()  # our own child, by its handle
            proc.wait(10)

    def kill_child(self) -> None:
        """SIGKILL the child now, from another thread, while ``invoke`` waits for it: for a test
        that kills on an event it watches (a request reaching a Stripe double), not on a timer
        that a loaded machine may fire too early or too late. ``invoke`` raises ChildKilled."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _sigkill(proc)

    # -- plans
    def plan(self, event: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Whether and where this invocation dies, from the seeded RNG."""
        if self.rng.random() >= self.kill_probability:
            return None
        records, releases, reverts = _records_of(event) if event is not None else (3, 1, 1)
        if self.rng.random() < self.timer_share:
            return {"phase": TIMER, "after_ms": self.rng.randint(5, 60 + 40 * records)}
        choices: list[tuple[str, int]] = [
            (BEFORE_STRIPE, max(1, records)),
            (AFTER_STRIPE, max(1, records)),
            (BEFORE_COMMIT, max(1, 2 * records)),
            (BEFORE_PUBLISH, 1),
        ]
        # the windows where money has moved at Stripe and nothing else knows yet, aimed at
        # directly as well (a batch has few releases and reverts among its Stripe calls)
        targeted: list[tuple[str, int, str]] = []
        if releases:
            choices.append((CAPTURE_TO_TRANSFER, releases))
            targeted.append((AFTER_STRIPE, releases, "transfer"))
        if reverts:
            targeted += [(AFTER_STRIPE, reverts, "refund"), (AFTER_STRIPE, reverts, "cancel")]
        if targeted and self.rng.random() < 0.4:
            phase, upto, method = self.rng.choice(targeted)
            return {"phase": phase, "at": self.rng.randint(1, upto), "method": method}
        phase, upto = self.rng.choice(choices)
        return {"phase": phase, "at": self.rng.randint(1, upto)}

    # -- invocations
    def handle(self, event: dict[str, Any], context: Any = None) -> Any:
        """The mapping's handler: one batch in the child, under a kill plan."""
        return self.invoke("batch", event, plan=self.plan(event))

    def invoke(
        self, kind: str, event: dict[str, Any] | None = None, *, plan: dict[str, Any] | None = None
    ) -> Any:
        with self._lock:
            self.invocations += 1
            proc = self._child()
            request = {"kind": kind, "event": event or {}, "kill": plan, "in_flight": dict(self.in_flight)}
            timer: threading.Timer | None = None
            if plan is not None and plan["phase"] == TIMER:
                timer = threading.Timer(plan["after_ms"] / 1000, _sigkill, args=(proc,))
                timer.start()
            try:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(json.dumps(request).encode() + b"\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass  # already dead (timer): read the end below
                reply = _read_reply(proc, self.timeout_s)
            finally:
                if timer is not None:
                    timer.cancel()
            for order_id in (reply or {}).get("dropped") or []:
                self.in_flight.pop(order_id, None)
                self.dropped.append(order_id)
                self.kills[DROPPED] += 1
            if reply is not None and "killed" not in reply:
                if plan is not None:
                    self.planned_not_reached += 1
                self.crossings.update(reply.get("crossings") or {})
                if not reply.get("ok"):
                    raise RuntimeError(f"{self.name}: handler raised {reply.get('error')}")
                return reply.get("response")
            # the child is dead (or hung past the timeout and is killed now, as Lambda would)
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if reply is not None:
                phase, detail = str(reply["killed"]), str(reply.get("detail") or "")
            elif plan is not None and plan["phase"] == TIMER:
                phase, detail = TIMER, f"after {plan['after_ms']} ms"
            else:
                phase, detail = "unplanned", f"exit {proc.returncode}"
            if phase == TRANSFER_IN_FLIGHT:
                self.in_flight.pop(detail.split()[-1], None)
            self.kills[phase] += 1
            self.kill_details.append((phase, detail))
            self._proc = self._start()  # the next cold start begins now, while the mapping backs off
            raise ChildKilled(phase, detail)


def _sigkill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)


def _read_reply(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any] | None:
    """The child's answer line; None when it died (or hung) without one."""
    assert proc.stdout is not None
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        proc.kill()
        reader.join(5)
        return None
    line = result[0] if result else b""
    if not line.strip():
        return None
    reply: dict[str, Any] = json.loads(line)
    return reply


def _records_of(event: dict[str, Any]) -> tuple[int, int, int]:
    """(records, release commands, revert commands) of an MSK event."""
    records = [r for rs in (event.get("records") or {}).values() for r in rs]
    kinds: Counter[str] = Counter()
    for r in records:
        try:
            kinds[str(json.loads(base64.b64decode(r.get("value") or "")).get("type"))] += 1
        except (ValueError, AttributeError):
            continue
    return len(records), kinds["release_payment"], kinds["revert_payment"]
