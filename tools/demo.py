"""The campusG sagas' payment conversation, played against the local stack through Kafka and
HTTP only, as campusG's orchestrator, complete-order saga and frontend would.

    python -m tools.demo        (make demo: creates the venv and starts the stack first)

Setup (the client side's job, not the service's): customers and cards in localstripe, and the
runner's Connect account registered on campusG's user service (the local stand-in), since the
service pays only a runner's own account. Then, over
Kafka: authorize (card OK); authorize with a 3-D Secure card, authentication completed at
localstripe, its webhook reaching the API; authorize with a declined card; the same authorize
command sent twice; release; a release to an account that is not the runner's (refused, nothing
captured); revert of another order. Over HTTP, with plain unsigned ``requests``
as the complete-order saga makes them: release and a repeated release, revert after the release
(refund), and what the routes refuse (400, 404, 409). A revert that overtakes its own authorize
(answered REVERTED, the late authorize holds nothing). The frontend's GET /history for the
customer and the runner, and the API's status for each order. Exits 1 when any step deviates
from the contract; leaves the stack running.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import requests

from local.stack import control as stack
from local.stack.settings import (
    PAYMENT_COMMANDS_TOPIC,
    PAYMENT_EVENTS_TOPIC,
    STRIPE_SECRET_KEY,
    client_env,
)

CARD_OK = "4242424242424242"
CARD_3DS = "4000002760003184"
CARD_DECLINED = "4000000000000341"
WAIT_SECONDS = 30.0
NEEDED = ("kafka", "postgres", "moto", "localstripe", "user-service", "event-source", "api-gateway")


# ---- output --------------------------------------------------------------------------------------


class Timeline:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.deviations: list[str] = []
        self.tty = sys.stdout.isatty()
        self._last_progress = 0.0

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.2f}s]"

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def say(self, marker: str, text: str) -> None:
        self.clear_progress()
        print(f"{self._stamp()} {marker} {text}", flush=True)

    def ok(self, text: str) -> None:
        self.say("  ok", text)

    def deviation(self, text: str) -> None:
        self.deviations.append(text)
        self.say("FAIL", text)

    def check(self, condition: bool, good: str, bad: str) -> bool:
        if condition:
            self.ok(good)
        else:
            self.deviation(bad)
        return condition

    def progress(self, text: str, waited: float) -> None:
        if self.tty:
            print(f"\r{self._stamp()} ... {text} ({waited:4.1f}s)\033[K", end="", flush=True)
        elif waited - self._last_progress >= 5:
            self._last_progress = waited
            print(f"{self._stamp()} ... still {text} ({waited:.0f}s)", flush=True)

    def clear_progress(self) -> None:
        self._last_progress = 0.0
        if self.tty:
            print("\r\033[K", end="", flush=True)


# ---- the orchestrator's side: Kafka, HTTP, and Stripe as the client app ---------------------------


class Saga:
    def __init__(self, timeline: Timeline) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        self.t = timeline
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        partitions = [
            TopicPartition(PAYMENT_EVENTS_TOPIC, p)
            for p in sorted(self.consumer.partitions_for_topic(PAYMENT_EVENTS_TOPIC) or [])
        ]
        if not partitions:
            raise RuntimeError(f"topic {PAYMENT_EVENTS_TOPIC} does not exist")
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            self.consumer.position(tp)  # fix the starting point before any command is sent
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.api = os.environ["API_URL"]
        self.stripe_base = os.environ["STRIPE_API_BASE"]
        self.user_service = os.environ["USER_SERVICE_URL"]

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.consumer.close()

    def register_runner(self, runner: str, account: str) -> bool:
        """campusG's onboarding: the runner's Connect account, on the user service."""
        answer = requests.put(
            f"{self.user_service}/api/user/{urllib.parse.quote(runner, safe='')}/connect-account",
            json={"stripe_connect_account_id": account},
            timeout=10,
        )
        return answer.status_code == 200 and answer.json().get("stripe_connect_account_id") == account

    # Kafka ------------------------------------------------------------------------------------

    def send(self, command: dict[str, Any]) -> None:
        # The orchestrator sends no key.
        self.producer.send(PAYMENT_COMMANDS_TOPIC, json.dumps(command).encode()).get(timeout=10)
        payload = command["payload"]
        ref = (
            f"order {payload['order_id']}"
            if "order_id" in payload
            else f"payment {payload.get('payment_id')}"
        )
        self.t.say("->", f"{command['type']:<17} {ref}  (correlation {command['correlation_id'][:8]})")

    def _drain(self, timeout_ms: int) -> None:
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                if record.key is None:
                    continue
                try:
                    self.events[record.key.decode()].append(json.loads(record.value))
                except ValueError:
                    continue

    def seen(self, order_id: str) -> int:
        """How many events of the order were received so far: pass as ``after`` to wait for the next."""
        self._drain(0)
        return len(self.events[order_id])

    def wait_event(
        self, order_id: str, event_type: str, *, after: int = 0, within: float = WAIT_SECONDS
    ) -> dict[str, Any] | None:
        """The first ``event_type`` for the order beyond the first ``after`` events of it."""
        started = time.monotonic()
        while (waited := time.monotonic() - started) < within:
            for envelope in self.events[order_id][after:]:
                if envelope.get("type") == event_type:
                    self.t.clear_progress()
                    return envelope
            self.t.progress(f"waiting for {event_type} on {PAYMENT_EVENTS_TOPIC}", waited)
            self._drain(200)
        self.t.clear_progress()
        return None

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.t.progress("collecting any further events", seconds - left)
            self._drain(200)
        self.t.clear_progress()

    def expect(
        self,
        order_id: str,
        event_type: str,
        *,
        after: int = 0,
        correlation_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """The first ``event_type`` of the order beyond its first ``after`` events, checked against
        ``fields`` (payload values) and, when given, the ``correlation_id`` it must carry."""
        envelope = self.wait_event(order_id, event_type, after=after)
        if envelope is None:
            seen = [e.get("type") for e in self.events[order_id][after:]] or "nothing"
            self.t.deviation(f"no {event_type} for order {order_id} within {WAIT_SECONDS:.0f}s (saw {seen})")
            return None
        payload = envelope.get("payload") or {}
        summary = ", ".join(
            f"{k}={payload[k]}" for k in ("status", "error", "payment_intent_id") if k in payload
        )
        self.t.say("<-", f"{event_type:<23} {summary}  (event_id {str(envelope.get('event_id'))[:8]})")
        wrong = {k: payload.get(k) for k, v in fields.items() if payload.get(k) != v}
        if wrong:
            self.t.deviation(f"{event_type} for {order_id}: expected {fields}, got {wrong}")
        if correlation_id is not None:
            self.t.check(
                envelope.get("correlation_id") == correlation_id,
                f"it carries the request's correlation_id {correlation_id[:8]}",
                f"{event_type} carries correlation_id {envelope.get('correlation_id')}, expected {correlation_id}",
            )
        return envelope

    def refused(self, order_id: str, event_type: str) -> None:
        found = [e for e in self.events[order_id] if e.get("type") == event_type]
        self.t.check(not found, f"no {event_type} for this order", f"unexpected {event_type}: {found[:1]}")

    # HTTP: the complete-order saga's and the frontend's calls, plain and unsigned --------------------

    def http(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """One call as campusG makes it (``requests``, JSON body, no signing); (0, {}) when the
        API cannot be reached, which is reported as a deviation."""
        try:
            response = requests.request(method, self.api + path, json=body, timeout=10)
        except requests.RequestException as exc:
            self.t.deviation(f"{method} {path} failed: {exc}")
            return 0, {}
        try:
            answer = response.json()
        except ValueError:
            answer = {"_raw": response.text[:200]}
        if not isinstance(answer, dict):
            answer = {"_raw": answer}
        keys = (
            "error",
            "message",
            "status",
            "queued",
            "totalSpent",
            "spentCount",
            "totalEarned",
            "earnedCount",
        )
        shown = {k: answer[k] for k in keys if k in answer}
        if isinstance(answer.get("payment"), dict):
            shown["status"] = answer["payment"].get("status")
        self.t.say(method[:4], f"{path} -> {response.status_code} {json.dumps(shown) if shown else ''}")
        return response.status_code, answer

    def api_payment(self, order_id: str) -> dict[str, Any]:
        code, body = self.http("GET", f"/payment/{urllib.parse.quote(order_id)}/status")
        return body.get("payment") or {} if code == 200 else {}

    def api_status(self, order_id: str, expected: str) -> None:
        code, body = self.http("GET", f"/payment/{urllib.parse.quote(order_id)}/status")
        status = (body.get("payment") or {}).get("status")
        self.t.check(
            code == 200 and status == expected,
            f"API says {expected}",
            f"API answered {code} {status!r}, expected 200 {expected!r}",
        )

    def http_expect(
        self, method: str, path: str, body: Any, expected_code: int, **fields: Any
    ) -> dict[str, Any]:
        """A call whose status code and answer fields are known in advance."""
        code, answer = self.http(method, path, body)
        wrong = {k: answer.get(k) for k, v in fields.items() if answer.get(k) != v}
        fields_text = ", ".join(f"{k}={v}" for k, v in fields.items())
        self.t.check(
            code == expected_code and not wrong,
            f"{expected_code} as the contract says" + (f" ({fields_text})" if fields else ""),
            f"{method} {path}: answered {code} {wrong or ''}, expected {expected_code} {fields or ''}",
        )
        return answer

    # Stripe, as the client app and as the customer's bank --------------------------------------------

    def _stripe(self) -> Any:
        import stripe

        return stripe.StripeClient(
            STRIPE_SECRET_KEY, base_addresses={"api": self.stripe_base}, max_network_retries=0
        ).v1

    def new_card(self, number: str) -> tuple[str, str]:
        v1 = self._stripe()
        customer = v1.customers.create(params={"email": f"demo-{uuid.uuid4().hex[:8]}@campus.test"})
        method = v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        v1.payment_methods.attach(method.id, params={"customer": customer.id})
        self.t.say("  ", f"setup: localstripe customer {customer.id}, card {number[-4:]} as {method.id}")
        return customer.id, method.id

    def intents(self, customer_id: str, order_id: str) -> list[Any]:
        page = self._stripe().payment_intents.list(params={"customer": customer_id, "limit": 100})
        return [pi for pi in page.data if (pi.to_dict().get("metadata") or {}).get("order_id") == order_id]

    def show_intent(self, customer_id: str, order_id: str, expected: str | None) -> Any:
        found = self.intents(customer_id, order_id)
        if not found:
            if expected is None:
                self.t.ok("no PaymentIntent in Stripe for this order")
            else:
                self.t.deviation(f"no PaymentIntent in Stripe for order {order_id}")
            return None
        pi = found[0]
        self.t.say("  $", f"Stripe {pi.id} status={pi.status} amount={pi.amount} capture={pi.capture_method}")
        if expected is not None:
            self.t.check(
                pi.status == expected,
                f"Stripe says {expected}",
                f"Stripe says {pi.status}, expected {expected}",
            )
        return pi

    def charge(self, payment_intent_id: str) -> Any:
        """The PaymentIntent's charge (localstripe expands it; Stripe names it by id)."""
        v1 = self._stripe()
        charge = v1.payment_intents.retrieve(payment_intent_id).latest_charge
        return v1.charges.retrieve(charge) if isinstance(charge, str) else charge

    def authenticate(self, payment_intent_id: str) -> None:
        """What the customer's browser does on the 3-D Secure page (localstripe's test hook)."""
        pi = self._stripe().payment_intents.retrieve(payment_intent_id)
        body = urllib.parse.urlencode({"client_secret": pi.client_secret, "success": "true"}).encode()
        request = urllib.request.Request(  # noqa: S310 (127.0.0.1 only)
            f"{self.stripe_base}/v1/payment_intents/{payment_intent_id}/_authenticate",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {STRIPE_SECRET_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (127.0.0.1 only)
            after = json.loads(resp.read())
        self.t.say(
            "  $", f"3-D Secure completed at localstripe: {payment_intent_id} status={after.get('status')}"
        )


# ---- the conversation ----------------------------------------------------------------------------


def command(command_type: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": command_type,
        "correlation_id": str(uuid.uuid4()),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime()),  # the saga sends no zone
        "payload": payload,
    }


def authorize(
    order_id: str, customer_id: str, payment_method_id: str, amount: int = 1299, user: str = "user_demo"
) -> dict[str, Any]:
    return command(
        "authorize_payment",
        order_id=order_id,
        customer={
            "clerkUserId": user,
            "stripeCustomerId": customer_id,
            "userStripeCard": {"payment_method_id": payment_method_id},
        },
        order={"amount": amount, "description": f"Payment for order {order_id}"},
        return_url="https://localhost:5173/customer/history",
    )


@dataclass
class Order:
    name: str
    order_id: str
    customer_id: str
    expected_status: str
    payment_id: str | None = None
    notes: list[str] = field(default_factory=list)


def play(saga: Saga, t: Timeline) -> list[Order]:
    run = uuid.uuid4().hex[:6]
    user, runner = f"user_demo_{run}", f"user_runner_{run}"  # fresh ids, so GET /history is exact
    runner_account = "acct_demo_runner"  # a Connect account of the local Stripe (local.stack.campus_users)
    orders: list[Order] = []
    t.say("  $", f"campusG's user service: {runner} registers Connect account {runner_account}")
    t.check(saga.register_runner(runner, runner_account), "runner registered", "the user service refused it")

    t.step("1. authorize, card 4242 4242 4242 4242 -> payment.authorized")
    customer, method = saga.new_card(CARD_OK)
    ok = Order("card OK, then released", f"demo-{run}-ok", customer, "SUCCEEDED")
    orders.append(ok)
    saga.send(authorize(ok.order_id, customer, method, user=user))
    event = saga.expect(ok.order_id, "payment.authorized", status="AUTHORIZED")
    ok.payment_id = (event or {}).get("payload", {}).get("payment_id")
    saga.show_intent(customer, ok.order_id, "requires_capture")
    saga.api_status(ok.order_id, "AUTHORIZED")

    t.step(
        "2. authorize, 3-D Secure card 4000 0027 6000 3184 -> requires_action -> authenticated -> authorized"
    )
    customer, method = saga.new_card(CARD_3DS)
    tds = Order("3-D Secure, authenticated", f"demo-{run}-3ds", customer, "AUTHORIZED")
    orders.append(tds)
    saga.send(authorize(tds.order_id, customer, method, amount=2450, user=user))
    event = saga.expect(tds.order_id, "payment.requires_action", status="REQUIRES_ACTION")
    pi = saga.show_intent(customer, tds.order_id, "requires_action")
    saga.api_status(tds.order_id, "REQUIRES_ACTION")
    if event is not None and pi is not None:
        saga.authenticate(pi.id)
        t.say("  ", "localstripe now sends payment_intent.amount_capturable_updated to the API (webhook)")
        saga.expect(tds.order_id, "payment.authorized", status="AUTHORIZED")
        saga.show_intent(customer, tds.order_id, "requires_capture")
        saga.api_status(tds.order_id, "AUTHORIZED")

    t.step("3. authorize, declined card 4000 0000 0000 0341 -> payment.failed")
    customer, method = saga.new_card(CARD_DECLINED)
    declined = Order("card declined", f"demo-{run}-declined", customer, "FAILED")
    orders.append(declined)
    saga.send(authorize(declined.order_id, customer, method, amount=5000, user=user))
    saga.expect(declined.order_id, "payment.failed", error="STRIPE_CARD_ERROR")
    saga.show_intent(customer, declined.order_id, None)
    saga.api_status(declined.order_id, "FAILED")

    t.step("4. the same authorize command sent twice -> one hold")
    customer, method = saga.new_card(CARD_OK)
    twice = Order("sent twice, then reverted", f"demo-{run}-twice", customer, "REVERTED")
    orders.append(twice)
    same = authorize(twice.order_id, customer, method, amount=700, user=user)
    saga.send(same)
    saga.send(same)
    event = saga.expect(twice.order_id, "payment.authorized", status="AUTHORIZED")
    twice.payment_id = (event or {}).get("payload", {}).get("payment_id")
    saga.settle(3.0)
    announced = [e for e in saga.events[twice.order_id] if e.get("type") == "payment.authorized"]
    distinct = {e.get("event_id") for e in announced}
    t.say("  ", f"{len(announced)} payment.authorized received, {len(distinct)} distinct event_id")
    t.check(len(distinct) == 1, "one state change announced", f"{len(distinct)} different event ids")
    holds = saga.intents(customer, twice.order_id)
    t.say("  $", f"Stripe PaymentIntents for the order: {[pi.id for pi in holds]}")
    t.check(len(holds) == 1, "exactly one hold on the card", f"{len(holds)} PaymentIntents for one order")
    saga.api_status(twice.order_id, "AUTHORIZED")

    t.step("5. release the first order over Kafka -> payment.released SUCCEEDED")
    if ok.payment_id:
        release = command(
            "release_payment",
            payment_id=ok.payment_id,
            runner_id=runner,
            runner_connect_account_id=runner_account,
        )
        saga.send(release)
        event = saga.expect(
            ok.order_id,
            "payment.released",
            correlation_id=release["correlation_id"],
            status="SUCCEEDED",
            runner_id=runner,
            amount=12.99,
        )
        payload = (event or {}).get("payload", {})
        if event is not None and not payload.get("transfer_id"):
            t.say(
                "  ", "no transfer_id: localstripe has no Connect transfers; the service records the failure"
            )
        saga.show_intent(ok.customer_id, ok.order_id, "succeeded")
        saga.api_status(ok.order_id, "SUCCEEDED")
    else:
        t.deviation("no payment_id from step 1: release not sent")

    t.step(
        "5b. release the 3-D Secure order to an account that is not the runner's -> refused, nothing captured"
    )
    wrong = command(
        "release_payment", order_id=tds.order_id, runner_id=runner, runner_connect_account_id="acct_runner2"
    )
    saga.send(wrong)
    saga.expect(
        tds.order_id,
        "payment.failed",
        correlation_id=wrong["correlation_id"],
        error="PAYOUT_DESTINATION_REFUSED",
        status="AUTHORIZED",
    )
    saga.show_intent(tds.customer_id, tds.order_id, "requires_capture")
    saga.api_status(tds.order_id, "AUTHORIZED")

    t.step("6. revert another order (the one sent twice) over Kafka -> payment.released REVERTED")
    if twice.payment_id:
        saga.send(command("revert_payment", payment_id=twice.payment_id, reason="order cancelled"))
        saga.expect(twice.order_id, "payment.released", status="REVERTED")
        saga.show_intent(twice.customer_id, twice.order_id, "canceled")
        saga.api_status(twice.order_id, "REVERTED")
    else:
        t.deviation("no payment_id from step 4: revert not sent")

    t.step("7. release over HTTP, as the complete-order saga does -> 202, then payment.released SUCCEEDED")
    customer, method = saga.new_card(CARD_OK)
    over_http = Order("released then reverted over HTTP", f"demo-{run}-http", customer, "REVERTED")
    orders.append(over_http)
    saga.send(authorize(over_http.order_id, customer, method, amount=1850, user=user))
    event = saga.expect(over_http.order_id, "payment.authorized", status="AUTHORIZED")
    over_http.payment_id = (event or {}).get("payload", {}).get("payment_id")
    if over_http.payment_id:
        release_path = f"/payment/{over_http.payment_id}/release"
        runner_body = {"runner_id": runner, "runner_connect_account_id": runner_account}
        after = saga.seen(over_http.order_id)
        answer = saga.http_expect("POST", release_path, runner_body, 202, success=True, queued=True)
        saga.expect(
            over_http.order_id,
            "payment.released",
            after=after,
            correlation_id=answer.get("correlation_id", "?"),
            status="SUCCEEDED",
            runner_id=runner,
            amount=18.5,
        )
        pi = saga.show_intent(customer, over_http.order_id, "succeeded")
        saga.api_status(over_http.order_id, "SUCCEEDED")
        t.say(
            "  ", "the saga retries the same request: answered at once, nothing queued, nothing re-announced"
        )
        saga.http_expect("POST", release_path, runner_body, 200, queued=False, status="SUCCEEDED")
        saga.settle(2.0)
        released = [
            e
            for e in saga.events[over_http.order_id]
            if e.get("type") == "payment.released" and (e.get("payload") or {}).get("status") == "SUCCEEDED"
        ]
        t.check(
            len({e.get("event_id") for e in released}) == 1,
            f"one payment.released SUCCEEDED ({len(released)} received, one event_id)",
            f"{len({e.get('event_id') for e in released})} different SUCCEEDED event ids",
        )

        t.step(
            "8. revert over HTTP after the release (the saga's compensation) -> refund, payment.released REVERTED"
        )
        after = saga.seen(over_http.order_id)
        revert_path = f"/payment/{over_http.payment_id}/revert"
        answer = saga.http_expect("POST", revert_path, {"reason": "customer complaint"}, 202, queued=True)
        saga.expect(
            over_http.order_id,
            "payment.released",
            after=after,
            correlation_id=answer.get("correlation_id", "?"),
            status="REVERTED",
            message="customer complaint",
        )
        if pi is not None:
            refunded = saga.charge(pi.id)["amount_refunded"]
            t.say("  $", f"Stripe charge of {pi.id}: amount_refunded={refunded}")
            t.check(
                refunded == 1850,
                "the capture was refunded in full",
                f"amount_refunded={refunded}, expected 1850",
            )
        saga.api_status(over_http.order_id, "REVERTED")
        saga.http_expect("POST", revert_path, None, 200, queued=False, status="REVERTED")
        saga.http_expect(
            "POST", release_path, runner_body, 409, error="PAYMENT_NOT_RELEASABLE", status="REVERTED"
        )
    else:
        t.deviation("no payment_id for the HTTP order: release and revert not sent")

    t.step("9. what the HTTP routes refuse at once (nothing queued, nothing changed)")
    some_payment = ok.payment_id or str(uuid.uuid4())
    before = {order.order_id: saga.seen(order.order_id) for order in (ok, declined)}
    saga.http_expect("POST", f"/payment/{some_payment}/release", None, 400, error="BAD_REQUEST")
    saga.http_expect(
        "POST", f"/payment/{uuid.uuid4()}/release", runner_body_for(runner), 404, error="NOT_FOUND"
    )
    saga.http_expect("POST", f"/payment/{uuid.uuid4()}/revert", None, 404, error="NOT_FOUND")
    declined_payment = saga.api_payment(declined.order_id).get("paymentId")
    if declined_payment:
        saga.http_expect(
            "POST",
            f"/payment/{declined_payment}/release",
            runner_body_for(runner),
            409,
            error="PAYMENT_NOT_RELEASABLE",
            status="FAILED",
        )
        saga.http_expect(
            "POST", f"/payment/{declined_payment}/revert", None, 200, queued=False, status="FAILED"
        )
    else:
        t.deviation("no payment id for the declined order from the API")
    saga.settle(1.5)
    late_events = {o: [e.get("type") for e in saga.events[o][n:]] for o, n in before.items()}
    t.check(
        not any(late_events.values()),
        "no event for any refused request",
        f"refused requests were followed by events: {late_events}",
    )

    t.step(
        "10. a revert that overtakes its own authorize -> payment.released REVERTED; the late authorize holds nothing"
    )
    customer, method = saga.new_card(CARD_OK)
    early = f"demo-{run}-revert-first"
    revert = command("revert_payment", order_id=early, reason="order cancelled before payment")
    saga.send(revert)
    event = saga.expect(early, "payment.released", correlation_id=revert["correlation_id"], status="REVERTED")
    if event is not None:
        t.check(
            "payment_id" not in event.get("payload", {}),
            "no payment_id: nothing was ever held",
            f"unexpected payment_id {event['payload'].get('payment_id')}",
        )
    late = authorize(early, customer, method, user=user)
    after = saga.seen(early)
    saga.send(late)
    saga.expect(
        early, "payment.failed", after=after, correlation_id=late["correlation_id"], error="ORDER_REVERTED"
    )
    saga.show_intent(customer, early, None)
    saga.http_expect("GET", f"/payment/{early}/status", None, 404, error="NOT_FOUND")

    t.step("11. the frontend's profile page: GET /history for the customer and the runner")
    # Customer: spent = AUTHORIZED or SUCCEEDED as customer: order 1 (12.99, released) and the
    # 3-D Secure hold (24.50); the declined (FAILED) and the reverted orders do not count.
    saga.http_expect(
        "GET",
        f"/history/{user}",
        None,
        200,
        userId=user,
        totalSpent=37.49,
        spentCount=2,
        totalEarned=0,
        earnedCount=0,
    )
    # Runner: earned = SUCCEEDED as runner: order 1 only; the HTTP release was reverted.
    saga.http_expect(
        "GET",
        f"/history/{runner}",
        None,
        200,
        userId=runner,
        totalEarned=12.99,
        earnedCount=1,
        totalSpent=0,
        spentCount=0,
    )

    t.step("12. final status of every order, from the API")
    for order in orders:
        saga.api_status(order.order_id, order.expected_status)
    return orders


def runner_body_for(runner: str) -> dict[str, str]:
    return {"runner_id": runner, "runner_connect_account_id": "acct_demo_runner"}


def preflight(t: Timeline) -> bool:
    down = [name for name in NEEDED if not stack.is_running(name)]
    if down:
        print(
            f"demo: the local stack is not fully running ({', '.join(down)} down).\n"
            "      Start it with `make local-up` (or run `make demo`, which does), and see "
            "`make local-status` and .local/logs/ if a component does not come up.",
            file=sys.stderr,
        )
        return False
    return True


def main() -> int:
    os.environ.update(client_env())
    t = Timeline()
    if not preflight(t):
        return 2
    print("campusG payment conversation against the local stack (Kafka + HTTP only, as the orchestrator)")
    print(
        f"  commands -> {PAYMENT_COMMANDS_TOPIC}   events <- {PAYMENT_EVENTS_TOPIC}   API {os.environ['API_URL']}"
    )
    saga = Saga(t)
    try:
        play(saga, t)
    except Exception as exc:  # any crash of the demo itself is a deviation, reported plainly
        t.deviation(f"demo stopped: {type(exc).__name__}: {exc}")
    finally:
        saga.close()
    elapsed = time.monotonic() - t.started
    print()
    if t.deviations:
        print(f"VERDICT: FAIL - {len(t.deviations)} deviation(s) in {elapsed:.1f}s: {t.deviations[0]}")
    else:
        print(
            f"VERDICT: OK - every step of the payment conversation behaved as the contract says ({elapsed:.1f}s)"
        )
    print("The local stack is still running: `make local-down` stops it (`make local-status` shows it).")
    return 1 if t.deviations else 0


if __name__ == "__main__":
    sys.exit(main())
