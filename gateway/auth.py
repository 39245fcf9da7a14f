"""The gateway's bearer-token check, the one every HTTP endpoint uses.

A gateway started with a token wants ``Authorization: Bearer <token>`` on
``POST /offer``, the JSON API and ``GET /stream/<drone>``; the web pages and
the stream also take ``?token=<token>``, because a browser cannot set a header
when it loads a page or opens a WebSocket. The token is compared in constant
time and never logged or echoed back.
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import web

__all__ = ["CHALLENGE", "authorization_problem", "presented_token", "token_matches"]

CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="dronedepth"'}
"""The header every 401 carries (RFC 6750)."""
TOKEN_QUERY: Final = "token"


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
    return presented is not None and hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def authorization_problem(request: web.Request, expected: str | None) -> str | None:
    """None when the bearer header (only) carries ``expected``, else why not, without echoing what was sent.

    ``POST /offer`` uses it: a drone is a program, so its refusal says precisely what is missing.
    """
    if expected is None:
        return None
    header = request.headers.get("Authorization", "")
    if not header:
        return "missing Authorization header"
    given = _bearer(request)
    if given is None:
        return "the Authorization header must be 'Bearer <token>'"
    if not token_matches(given, expected):
        return "wrong token"
    return None
