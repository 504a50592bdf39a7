"""Powertools Logger, Metrics and Tracer, one of each for the whole service.
Service name and namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE.

The command pool records from several threads: metrics are added under a lock (Powertools
flushes a metric set from inside ``add_metric`` once it holds 100 values).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from payments_core.config import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer


class LazyTracer:
    """Powertools' Tracer, built on the first invocation instead of at import: building it
    imports the X-Ray SDK (and patches boto3, requests, ...), which would otherwise be most of
    a handler's import time. Tracing in AWS is unchanged: the handler is wrapped by the real
    ``capture_lambda_handler`` before its first invocation runs."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._tracer: Tracer | None = None
        self._lock = threading.Lock()

    @property
    def real(self) -> Tracer:
        with self._lock:
            if self._tracer is None:
                from aws_lambda_powertools import Tracer

                self._tracer = Tracer(**self._options)
            return self._tracer

    def capture_lambda_handler(
        self,
        lambda_handler: Callable[..., Any] | None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Any:
        def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
            traced: Callable[..., Any] | None = None

            @functools.wraps(handler)
            def run(event: Any, context: Any) -> Any:
                nonlocal traced
                if traced is None:
                    traced = self.real.capture_lambda_handler(
                        handler, capture_response=capture_response, capture_error=capture_error
                    )
                return traced(event, context)

            return run

        return decorate(lambda_handler) if lambda_handler is not None else decorate

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


# Powertools reads POWERTOOLS_SERVICE_NAME itself when no service is given; this is only the
# fallback for a process that does not set it (a test, a tool).
SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME") or "payment-service"
logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=get_settings().metrics_namespace, service=SERVICE_NAME)
# X-Ray's SDK costs about as much to import as boto3: it is loaded on the first invocation
tracer = LazyTracer(service=SERVICE_NAME)

_metrics_lock = threading.Lock()


def count(name: str, value: float = 1) -> None:
    add_metric(name, MetricUnit.Count, value)


def add_metric(name: str, unit: MetricUnit, value: float) -> None:
    with _metrics_lock:
        metrics.add_metric(name=name, unit=unit, value=value)
