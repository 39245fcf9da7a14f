"""The gateway's credentials and the one token check every HTTP endpoint uses.

Two kinds of credential:

- the **operator token** (``GatewayConfig.token``): the web pages, the JSON
  API, ``/stream/<drone>``, the detail of ``/ready`` and ``/metrics``. Without
  per-drone tokens it is also the **fleet token** drones present on ``POST
  /offer`` (small setups): its holder may then connect under any drone id,
  replacing that drone's session.
- **per-drone tokens** (``GatewayConfig.drone_tokens``: drone id → SHA-256 hex
  of the token, so the file holds no secret): once given, ``POST /offer``
  accepts only these, and a drone token opens or replaces only its own drone's
  session. It opens no operator endpoint.

A token travels in ``Authorization: Bearer <token>``; the web pages and the
stream also take ``?token=<token>``, because a browser cannot set a header
when it loads a page or opens a WebSocket. Tokens are compared in constant time
(or as SHA-256 digests), never logged or echoed back; header bytes that are
not ASCII are a wrong token, not an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web

__all__ = [
    "CHALLENGE",
    "OfferGrant",
    "authorize_offer",
    "presented_token",
    "token_digest",
    "token_matches",
]

CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="dronedepth"'}
"""The header every 401 carries (RFC 6750)."""
TOKEN_QUERY: Final = "token"


def _raw(text: str) -> bytes:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: give back the bytes that were sent.
    return text.encode("utf-8", "surrogateescape")


def token_digest(token: str) -> str:
    """The SHA-256 hex digest of ``token``: what a per-drone tokens file holds."""
    return hashlib.sha256(_raw(token)).hexdigest()


def _bearer(request: web.Request) -> str | None:
    """The token of a well-formed ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def presented_token(request: web.Request, *, allow_query: bool) -> str | None:
    """The token the request presents: the bearer header first, then ``?token=`` if ``allow_query``."""
    token = _bearer(request)
    if token is None and allow_query:
        return request.query.get(TOKEN_QUERY)
    return token


def token_matches(presented: str | None, expected: str | None) -> bool:
    """True when no token is expected, or ``presented`` is it."""
    if expected is None:
        return True
    # compare_digest: the time taken must not reveal how much of the token matched.
    return presented is not None and hmac.compare_digest(_raw(presented), _raw(expected))


@dataclass(frozen=True)
class OfferGrant:
    """Who may open a session: ``drone_id`` bound to a per-drone token, or None for any id (fleet token)."""

    drone_id: str | None


def authorize_offer(
    request: web.Request, operator_token: str | None, drone_tokens: Mapping[str, str] | None
) -> OfferGrant | str:
    """The grant of ``POST /offer``'s bearer header, or why it is refused (never echoing what was sent).

    ``drone_tokens`` maps SHA-256 hex digests of tokens to their drone ids; when given,
    only those tokens open sessions. A drone is a program, so the refusal says precisely
    what is missing.
    """
    if operator_token is None and not drone_tokens:
        return OfferGrant(None)
    if not request.headers.get("Authorization", ""):
        return "missing Authorization header"
    given = _bearer(request)
    if given is None:
        return "the Authorization header must be 'Bearer <token>'"
    if drone_tokens:
        # A dict lookup by digest: its timing tells about the digest, never about the token.
        drone_id = drone_tokens.get(token_digest(given))
        return "wrong token" if drone_id is None else OfferGrant(drone_id)
    return OfferGrant(None) if token_matches(given, operator_token) else "wrong token"
