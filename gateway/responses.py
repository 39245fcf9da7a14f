"""The one JSON error body every HTTP endpoint sends: ``{"error": CODE, "message": TEXT}`` (``docs/protocol.md``).

A leaf module (aiohttp only), so the stream hub among the outputs can answer with it without
depending on the routes; :func:`dronedepth.gateway.refusals.refuse` adds counting and logging.
"""

from __future__ import annotations

import json

from aiohttp import web

__all__ = ["json_error"]


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A ``status`` response with the JSON error body ``{"error": code, "message": message}``."""
    return web.Response(
        text=json.dumps({"error": code, "message": message}, allow_nan=False),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})},
    )
