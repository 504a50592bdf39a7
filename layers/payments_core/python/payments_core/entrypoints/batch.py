"""One MSK batch: its records where the mapping put them, what became of each, and the partial
batch response that has the mapping deliver the failed ones again.

Records of different orders run concurrently (``worker_pool``, the threads) in the order the
event source mapping's rules allow (``batch_schedule``); both speak of the records in the terms
defined here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Item:
    """One record of the batch, where the mapping put it."""

    partition: str  # the event's key for the partition: "<topic>-<partition>"
    offset: int
    record: Any


@dataclass(frozen=True)
class Finished:
    item: Item
    ok: bool
    result: Any = None
    error: BaseException | None = None
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    worker: int = 0


@dataclass
class BatchOutcome:
    reported: list[Item]  # the batch item failures, in event order
    finished: list[Finished]  # every record that ran, in completion order
    not_started: int = 0  # skipped after a failure in their partition, or for lack of time
    out_of_time: bool = False
    most_in_flight: int = 0

    def batch_item_failures(self) -> dict[str, Any]:
        """The partial batch response for a Kafka event source, as Powertools'
        ``BatchProcessor(EventType.Kafka)`` builds it."""
        return {
            "batchItemFailures": [
                {"itemIdentifier": {"partition": item.partition, "offset": item.offset}}
                for item in self.reported
            ]
        }


def items_of(event: dict[str, Any], wrap: Callable[[dict[str, Any]], Any] = lambda r: r) -> list[Item]:
    """The records of an MSK event in event order (partition by partition, as the mapping
    lists them), each wrapped by ``wrap``."""
    items: list[Item] = []
    for key, records in (event.get("records") or {}).items():
        for record in records or []:
            items.append(Item(partition=str(key), offset=int(record["offset"]), record=wrap(record)))
    return items


def to_report(items: list[Item], finished_ok: set[int]) -> list[Item]:
    """Per partition: the lowest offset that did not finish, and every record after it.
    ``finished_ok`` holds the indexes (in ``items``) of records that finished."""
    lowest: dict[str, int] = {}
    for index, item in enumerate(items):
        if index not in finished_ok:
            lowest[item.partition] = min(item.offset, lowest.get(item.partition, item.offset))
    return [item for item in items if item.partition in lowest and item.offset >= lowest[item.partition]]


def overlapping(finished: Iterable[Finished]) -> int:
    """How many records ran at the same moment, at most (for metrics and tests)."""
    edges = sorted([(f.started, 1) for f in finished] + [(f.ended, -1) for f in finished])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most
