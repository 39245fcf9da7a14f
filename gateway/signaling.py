"""``POST /offer``: WebRTC signalling, a drone's SDP offer in, the gateway's answer out.

A drone's offer (JSON ``{"sdp", "type": "offer"}``, ``Authorization: Bearer
<token>``) → the answer (JSON ``{"sdp", "type": "answer", "drone_id"}``).
Refusals are JSON ``{"error": CODE, "message": TEXT}`` with 400, 401, 409, 413
or 503, and create no peer connection. The token check is
:mod:`dronedepth.gateway.auth`'s; the gateway comes from ``request.app``
(:data:`~dronedepth.gateway.app_keys.GATEWAY`). ``docs/protocol.md``
describes the signalling in prose.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from dronedepth.gateway.app_keys import ACCESS_TOKEN, GATEWAY
from dronedepth.gateway.auth import CHALLENGE, authorization_problem

from dronedepth import protocol
from dronedepth.errors import GatewayBusy, GatewayFull, ProtocolError
from dronedepth.protocol import (
    BODY_TOO_LARGE,
    DRONE_BUSY,
    DRONE_ID_HEADER,
    DRONE_ID_PATTERN,
    DRONE_ID_RULE,
    GATEWAY_FULL,
    INVALID_DRONE_ID,
    INVALID_SDP,
    UNAUTHORIZED,
)

__all__ = ["check_offer_sdp", "drone_id_from", "offer"]

log = logging.getLogger(__name__)

DRONE_ID_QUERY: Final = "drone"

_RETRY_AFTER_S: Final = "5"


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def drone_id_from(request: web.Request) -> str | None:
    """The drone id asked for in the ``X-Drone-Id`` header or ``?drone=``; None if neither.

    Raises :class:`ProtocolError` (code ``invalid_drone_id``) when malformed or when both differ.
    """
    header = request.headers.get(DRONE_ID_HEADER)
    query = request.query.get(DRONE_ID_QUERY)
    if header is not None and query is not None and header != query:
        raise ProtocolError(INVALID_DRONE_ID, f"the {DRONE_ID_HEADER} header and ?{DRONE_ID_QUERY}= differ")
    drone_id = header if header is not None else query
    if drone_id is not None and not DRONE_ID_PATTERN.fullmatch(drone_id):
        raise ProtocolError(INVALID_DRONE_ID, f"a drone id is {DRONE_ID_RULE}")
    return drone_id


def check_offer_sdp(sdp: str) -> None:
    """Refuse an offer the gateway cannot use, before any peer connection exists.

    It must parse, carry ICE credentials, and have a video section with a codec
    aiortc decodes plus an ``application`` section (the data channel).
    """
    from aiortc import sdp as aiortc_sdp
    from aiortc.codecs import CODECS
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:
        raise ProtocolError(INVALID_SDP, f"the SDP offer cannot be parsed: {exc!r}") from exc
    kinds = [m.kind for m in description.media]
    if "video" not in kinds:
        raise ProtocolError(INVALID_SDP, "the offer has no video section: add the camera track before the offer")
    if "application" not in kinds:
        raise ProtocolError(
            INVALID_SDP,
            f"the offer has no data channel: create the '{protocol.DATA_CHANNEL_LABEL}' channel before the offer",
        )
    for media in description.media:
        if not media.ice.usernameFragment or not media.ice.password:
            raise ProtocolError(INVALID_SDP, f"the {media.kind} section lacks ICE credentials (ice-ufrag/ice-pwd)")
        if not media.dtls or not media.dtls.fingerprints:
            raise ProtocolError(INVALID_SDP, f"the {media.kind} section lacks a DTLS fingerprint")
    supported = {codec.mimeType.lower() for codec in CODECS["video"] if isinstance(codec, RTCRtpCodecParameters)}
    for media in description.media:
        if media.kind == "video" and not {c.mimeType.lower() for c in media.rtp.codecs} & supported:
            offered = ", ".join(sorted({c.mimeType for c in media.rtp.codecs})) or "none"
            raise ProtocolError(INVALID_SDP, f"no common video codec: offered {offered}, supported VP8/H264")


async def offer(request: web.Request) -> web.Response:
    """``POST /offer``: answer a drone's SDP offer with a new session, or refuse it (JSON error)."""
    gateway = request.app[GATEWAY]
    metrics = gateway.metrics
    remote = request.remote or "?"

    def refuse(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        metrics.offers.inc(outcome=code)
        log.warning("refused an offer from %s: %s (%d %s)", remote, message, status, code)
        return _json_error(status, code, message, headers)

    problem = authorization_problem(request, request.app[ACCESS_TOKEN])
    if problem is not None:
        return refuse(401, UNAUTHORIZED, problem, CHALLENGE)
    limit = gateway.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return refuse(413, BODY_TOO_LARGE, f"the body of {request.content_length} bytes exceeds {limit} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return refuse(413, BODY_TOO_LARGE, f"the body exceeds {limit} bytes")
    try:
        description = protocol.SessionDescription.from_json(body)
        if description.type != "offer":
            raise ProtocolError(protocol.INVALID_MESSAGE, f"'type' must be 'offer', got {description.type!r}")
        check_offer_sdp(description.sdp)
        drone_id = drone_id_from(request) or gateway.new_drone_id()
    except ProtocolError as exc:
        status = 413 if exc.code == protocol.MESSAGE_TOO_LARGE else 400
        return refuse(status, exc.code, exc.message)
    try:
        answer_sdp = await gateway.open_session(description, drone_id, remote=remote)
    except GatewayFull as exc:
        return refuse(503, GATEWAY_FULL, str(exc), {"Retry-After": _RETRY_AFTER_S})
    except GatewayBusy as exc:
        return refuse(409, DRONE_BUSY, str(exc))
    except ProtocolError as exc:
        return refuse(400, INVALID_SDP, exc.message)
    metrics.offers.inc(outcome="accepted")
    payload: dict[str, Any] = {"sdp": answer_sdp, "type": "answer", "drone_id": drone_id}
    return web.json_response(payload, headers={DRONE_ID_HEADER: drone_id})
