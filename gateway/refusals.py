"""HTTP refusals: the one JSON error body every endpoint sends, counted and logged without amplification.

The body is ``{"error": CODE, "message": TEXT}`` (``docs/protocol.md``).
:func:`refuse` also counts the refusal in ``dronedepth_http_refusals_total
{endpoint, reason}`` (when the app holds a gateway) and logs it as a WARNING
at most once per remote address and endpoint every 10 s, with the count held
back (:class:`~dronedepth.gateway.logthrottle.LogThrottle`): a flood of bad
requests costs a few log lines.
"""

from __future__ import annotations

import logging

from aiohttp import web

from dronedepth.gateway.app_keys import GATEWAY
from dronedepth.gateway.logthrottle import LogThrottle
from dronedepth.gateway.responses import json_error

__all__ = ["refusal_log", "refuse"]

log = logging.getLogger(__name__)

_unbound = LogThrottle(log)
"""The throttle of apps without a gateway (a bare ``/stream`` app); a gateway has its own."""


def refusal_log() -> LogThrottle:
    """A new throttle for one gateway's refusal lines (its :attr:`~dronedepth.gateway.server.Gateway.refusal_log`)."""
    return LogThrottle(log)


def refuse(
    request: web.Request,
    endpoint: str,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """:func:`json_error`, counted under ``endpoint`` (a route name, not the path) and logged throttled."""
    gateway = request.app.get(GATEWAY)
    throttle = _unbound
    if gateway is not None:
        gateway.metrics.http_refusals.inc(endpoint=endpoint, reason=code)
        throttle = gateway.refusal_log
    remote = request.remote or "?"
    throttle.log(
        logging.WARNING, (remote, endpoint), "refused %s from %s: %s (%d %s)", endpoint, remote, message, status, code
    )
    return json_error(status, code, message, headers)
