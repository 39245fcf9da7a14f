"""Signalling: one ``POST {gateway}/offer`` carrying the SDP offer, the answer in the reply.

HTTP outcomes become the project's errors, split by what the client should do:

- retry later (:class:`~dronedepth.errors.InferenceUnavailable`): the gateway
  is unreachable, timed out, full (503) or failing (5xx, 429);
- give up (:class:`~dronedepth.errors.ConfigError`): the token is refused
  (401/403) or there is no ``/offer`` at that address (404/405);
- give up (:class:`~dronedepth.errors.ProtocolError`): the gateway rejected the
  offer as malformed or too big (400, 413, other 4xx) or sent a bad answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from dronedepth.errors import ConfigError, InferenceUnavailable, ProtocolError
from dronedepth.protocol import DRONE_ID_HEADER, DRONE_ID_PATTERN, INVALID_MESSAGE, SessionDescription

__all__ = ["DRONE_ID_PATTERN", "Answer", "offer_url", "post_offer"]

_BODY_EXCERPT: Final = 300


@dataclass(frozen=True, slots=True)
class Answer:
    """The gateway's reply to an offer."""

    description: SessionDescription
    drone_id: str | None


def offer_url(gateway: str) -> str:
    """``http://host:port`` (scheme optional) → ``http://host:port/offer``; a URL ending in ``/offer`` is kept."""
    text = gateway.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--gateway must be an http(s) URL such as http://192.168.1.10:8080, got {gateway!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/offer"):
        path += "/offer"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _excerpt(body: str) -> str:
    body = " ".join(body.split())
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        body = str(payload.get("message") or payload.get("error") or body)
    return body[:_BODY_EXCERPT] or "(empty body)"


async def post_offer(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    offer: SessionDescription,
    *,
    drone_id: str | None = None,
    timeout: float = 10.0,
) -> Answer:
    """Send ``offer`` to ``url`` (see :func:`offer_url`) and return the answer; errors as in the module doc."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if drone_id is not None:
        headers[DRONE_ID_HEADER] = drone_id
    try:
        async with http.post(
            url, data=offer.to_json(), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            status = response.status
            body = await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InferenceUnavailable(f"gateway {url} is unreachable: {reason}") from exc

    if status in (401, 403):
        raise ConfigError(
            f"the gateway refused the token (HTTP {status}: {_excerpt(body)}); "
            "check --token, --token-file or DRONEDEPTH_TOKEN"
        )
    if status in (404, 405):
        raise ConfigError(f"no dronedepth gateway answers POST {url} (HTTP {status}); check --gateway")
    if status == 429 or status >= 500:
        raise InferenceUnavailable(f"gateway {url} is busy or failing (HTTP {status}: {_excerpt(body)})")
    if status != 200:
        raise ProtocolError(INVALID_MESSAGE, f"the gateway rejected the offer (HTTP {status}: {_excerpt(body)})")

    answer = SessionDescription.from_json(body)
    if answer.type != "answer":
        raise ProtocolError(INVALID_MESSAGE, f"the gateway replied with type {answer.type!r} instead of 'answer'")
    payload = json.loads(body)
    assigned = payload.get("drone_id")
    return Answer(answer, assigned if isinstance(assigned, str) else None)
