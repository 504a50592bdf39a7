"""Where each local component writes its log, and the tail of one: ``make local-logs [C=…]``.

A Lambda emulator's log holds the Powertools JSON lines of the functions it runs, so a
function's name (``C=authorize_payment``) finds its emulator's log as well as a component's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from local.stack import settings as cfg
from local.stack.components import components
from local.stack.processes import Component, rel, say

# What each emulator runs (functions/<name>/app.py). In AWS the webhook route has a function of
# its own (stripe_webhook); locally payment_api serves it, so its lines are in api-gateway.log.
EMULATED_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "event-source": ("authorize_payment",),
    "api-gateway": ("payment_api",),
    "public-api": ("public_history",),
    "scheduler": ("outbox_relay", "reconcile_payments", "retain_data"),
}


def find(name: str, comps: Sequence[Component] | None = None) -> Component:
    """The component called ``name``, or the emulator that runs the function ``name``;
    ValueError (the CLI's one-line error) naming the choices otherwise."""
    comps = list(comps if comps is not None else components(cfg.load()))
    for comp in comps:
        if comp.name == name or name in EMULATED_FUNCTIONS.get(comp.name, ()):
            return comp
    names = [c.name for c in comps] + [f for fs in EMULATED_FUNCTIONS.values() for f in fs]
    raise ValueError(f"no component or function named {name!r}; use one of: {', '.join(names)}")


def table(comps: Sequence[Component] | None = None) -> None:
    """One line per component: its log file, its size, and the functions whose lines it holds."""
    for comp in comps if comps is not None else components(cfg.load()):
        size = comp.log.stat().st_size if comp.log.is_file() else None
        shown = f"{size / 1024:8.1f} KiB" if size is not None else "  (none yet)"
        runs = ", ".join(EMULATED_FUNCTIONS.get(comp.name, ()))
        say(f"{comp.name:<14}{rel(comp.log):<40}{shown}  {runs}")


def tail(name: str, lines: int = 100, follow: bool = False) -> None:
    """Print the last ``lines`` lines of the log of ``name`` (component or function); with
    ``follow``, keep printing what is appended (``tail -f``) until interrupted."""
    comp = find(name)
    if not comp.log.is_file():
        raise ValueError(f"{comp.name} has no log yet ({rel(comp.log)}): run `make local-up`")
    with comp.log.open("rb") as f:
        for line in f.read().splitlines()[-lines:] if lines > 0 else []:
            print(line.decode("utf-8", "replace"), flush=True)
        while follow:  # until Ctrl-C; a restarted component appends to the same file
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.5)
