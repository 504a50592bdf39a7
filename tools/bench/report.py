"""The benchmark's rows, the table `make bench` prints, and the helpers that compute them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    key: str
    label: str
    value: float | str | None
    unit: str = ""
    target: str = ""
    within: bool | None = None  # None: no target, or not measured
    note: str = ""
    figures: dict[str, Any] | None = None  # the numbers behind a composite value, for results.json

    def shown(self) -> str:
        if self.value is None:
            return "skipped"
        if isinstance(self.value, str):
            return self.value
        if self.unit == "ms":
            return f"{self.value:.2f} ms"
        if self.unit == "s":
            return f"{self.value:.3f} s"
        if self.unit == "MB":
            return f"{self.value:.1f} MB"
        if self.unit == "/s":
            return f"{self.value:,.0f} /s"
        return f"{self.value} {self.unit}".strip()


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.label}: {row.shown()}" + (f"  ({row.note})" if row.note else ""), file=sys.stderr)

    def table(self) -> str:
        headers = ("measurement", "value", "target", "status")
        body = [
            (
                r.label,
                r.shown(),
                r.target,
                "" if r.within is None else ("ok" if r.within else "OVER"),
            )
            for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
        line = "-+-".join("-" * w for w in widths)
        out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
        out += [" | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
        notes = [f"  - {r.label}: {r.note}" for r in self.rows if r.note]
        return "\n".join(out + (["", "notes:", *notes] if notes else []))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); with few samples p99 is the maximum."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return seconds * 1000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
