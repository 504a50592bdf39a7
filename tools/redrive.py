"""List the dead letters of payment_commands and re-queue the chosen ones (``make redrive``).

    python -m tools.redrive                 # list: id, reason, origin, then each command
    python -m tools.redrive 0:12 0:13       # re-queue those (ids from the list)
    python -m tools.redrive --all           # re-queue every redrivable one

Locally it reads the dead-letter topic of the local stack (its client environment, unless
KAFKA_BOOTSTRAP_SERVERS / DEAD_LETTER_TOPIC are set). Nothing from the environment is printed;
commands carry no card numbers. The logic is ``payments_core.usecases.redrive``; in AWS the
``redrive_commands`` function runs it (``make redrive STAGE=…``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from payments_core.usecases.redrive import DeadLetter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make redrive", description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="dead letter ids to re-queue (as listed)")
    parser.add_argument("--all", action="store_true", help="re-queue every redrivable dead letter")
    parser.add_argument("--list", action="store_true", help="only list (the default without ids)")
    args = parser.parse_args(argv)
    ids = [i for part in args.ids for i in part.replace(",", " ").split()]

    from local.stack.settings import client_env

    for name, value in client_env().items():
        os.environ.setdefault(name, value)
    # The service's JSON logs are for CloudWatch; here the printed lines are the answer.
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    from payments_core.usecases.redrive import RedriveError, read_dead_letters, requeue, select

    try:
        letters = read_dead_letters()
        if args.list or (not ids and not args.all):
            _print_list(letters)
            return 0
        chosen = select(letters, ids, args.all)
        results = requeue(chosen)
    except RedriveError as exc:
        print(f"redrive: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r["requeued"]]
    for r in results:
        state = "re-queued" if r["requeued"] else f"NOT re-queued ({r['error']})"
        print(f"{r['id']}  order {r['order_id']}  {state}")
    if failed:
        print(
            "redrive: error: some commands were not re-queued: check the broker and run it again",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_list(letters: list[DeadLetter]) -> None:
    if not letters:
        print("no dead letters")
        return
    print(f"{len(letters)} dead letter(s):")
    for letter in letters:
        s = letter.summary()
        flag = "" if s["redrivable"] else f"  [not redrivable: {s['not_redrivable']}]"
        print(
            f"\n== {s['id']}  {s['type'] or '?'}  order {s['order_id'] or '-'}  from {s['origin'] or '?'}{flag}"
        )
        print(f"   reason: {s['reason']}")
        print("\n".join("   " + line for line in letter.pretty().splitlines()))
    print('\nre-queue: make redrive IDS="<id> ..."  or  make redrive ALL=1')


if __name__ == "__main__":
    sys.exit(main())
