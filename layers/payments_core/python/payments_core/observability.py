"""Powertools Logger, Metrics and Tracer, one of each for the whole service.
Service name and namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from payments_core.config import get_settings

logger = Logger(service="payment-service")
metrics = Metrics(namespace=get_settings().metrics_namespace, service="payment-service")
tracer = Tracer(service="payment-service")


def count(name: str, value: float = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
