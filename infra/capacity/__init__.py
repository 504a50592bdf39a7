"""The capacity model: what a stage's target rate (``capacity.orders_per_second``) needs, with
each figure's formula and the published limit it respects. The CDK app sizes the stack from it
(``plan``), ``make capacity`` prints it (report.py).

- api_limits.py: the API's throttles, the WAF's per-IP limit, the API function's reservation;
- sizing.py: partitions, pollers, reserved concurrency, the database class and its connection
  budget, the RDS Proxy's settings, the Stripe rate limits to request;
- cost.py: the monthly bill at the rate, with the prices used;
- published.py: the published limits (AWS, Stripe) and the database classes.
"""

from infra.capacity.api_limits import Limits, limits
from infra.capacity.sizing import Sizing
from infra.capacity.sizing import size as plan

__all__ = ["Limits", "Sizing", "limits", "plan"]
