"""The runners the local user service and localstripe know from the start of every stack.

The users campusG's user service knows at the start of every local stack: runners with a
Connect account, as the demo, the tests and the README's examples release to them.

Both stand-ins start from this list: ``local.stack.user_service`` (who a runner is, which account is
theirs) and ``local.stack._localstripe`` (the accounts themselves, connected to the platform, with
the transfers capability active). Anything else is registered at run time
(``PUT /api/user/{id}/connect-account`` on the user service, ``POST /v1/accounts`` at Stripe).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedUser:
    user_id: str  # the Clerk user id
    stripe_connect_account_id: str | None = None
    stripe_customer_id: str | None = None


SEED_USERS: tuple[SeedUser, ...] = (
    SeedUser("user_runner", "acct_runner1", "cus_runner_seed"),
    SeedUser("user_r", "acct_1Qr"),
    SeedUser("user_runner_http", "acct_1QrunnerHttp"),
    # the crash drill's fifty runners (tests/integration/crash_drill_harness.py)
    *(SeedUser(f"user_runner{n}", f"acct_runner{n:04d}") for n in range(50)),
)

# Connect accounts that exist at the local Stripe besides the seeded runners' own: one that
# belongs to no seeded runner (a release naming it for user_runner is refused by the
# user-service check, not by Stripe), and the demo's runner account (the demo registers its
# fresh runner with it on the user service).
EXTRA_ACCOUNTS: tuple[str, ...] = ("acct_runner2", "acct_demo_runner")


def seed_accounts() -> list[str]:
    accounts = [u.stripe_connect_account_id for u in SEED_USERS if u.stripe_connect_account_id]
    return [*accounts, *EXTRA_ACCOUNTS]
