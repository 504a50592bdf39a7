"""The local MSK event source mapping's process: ``python -m local.stack.event_source``.

The stack's MSK event source mapping as a process: configured from the environment, stopped
by a signal, restarted when a Kafka poll hangs.

    python -m local.stack.event_source            (started by `make local-up`)

The mapping itself (what it reproduces of AWS's) is ``local.stack.event_source_mapping``; its
settings and pause file are ``local.stack.event_source_config``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from local.stack.event_source_config import MappingConfig, env_float
from local.stack.event_source_mapping import EventSourceMapping
from local.stack.lambda_runtime import handler_path

log = logging.getLogger("local.stack.event_source")


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOCAL_EMULATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s event-source %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = MappingConfig.from_env()
    if config.pause_file and os.path.exists(config.pause_file):
        # a procedure killed while the mapping was paused: a fresh start is enabled, as a new mapping
        log.warning("removing a stale pause file %s: the mapping starts enabled", config.pause_file)
        os.unlink(config.pause_file)
    mapping = EventSourceMapping(config)

    def on_signal(*_: Any) -> None:
        mapping.stop()
        # kafka-python can block in close() while a group join is under way: stop for good after
        # a few seconds regardless (offsets are committed only after success: nothing is lost;
        # the containers see their pipe close and exit too)
        timer = threading.Timer(env_float("LOCAL_ESM_STOP_GRACE_S", 5.0), os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ready() -> None:
        log.info(
            "READY: %s -> %s (group %s, batch %d / %d ms, max retries %d, dead letters to %s)",
            config.topic,
            handler_path(config.function),
            config.group_id,
            config.batch_size,
            config.batch_window_ms,
            config.max_retries,
            config.dead_letter_topic,
        )

    _watch_for_hung_polls(mapping, env_float("LOCAL_ESM_POLL_HANG_S", 60.0))
    mapping.run(on_ready=ready)
    log.info("stopped")
    return 0


def _watch_for_hung_polls(mapping: EventSourceMapping, limit_s: float) -> None:
    """kafka-python 3.0 has been seen to block forever inside KafkaConsumer.poll (in its fetcher,
    after pausing and resuming partitions around a broker restart). Offsets are committed only
    after the handler succeeds, so starting afresh loses nothing: re-execute this process (same
    pid, so the stack still knows it) when a poll outlives ``limit_s``."""

    def watch() -> None:
        while not mapping.stop_event.wait(5):
            since = mapping.polling_since
            if since is not None and time.monotonic() - since > limit_s:
                log.error("a Kafka poll has been blocked for %.0f s: restarting the mapping", limit_s)
                logging.shutdown()
                argv = [sys.executable, "-u", "-m", "local.stack.event_source", *sys.argv[1:]]
                os.execv(sys.executable, argv)  # noqa: S606 - re-executes itself

    threading.Thread(target=watch, name="poll-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
