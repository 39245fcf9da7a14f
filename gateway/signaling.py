"""``POST /offer``: WebRTC signalling, a drone's SDP offer in, the gateway's answer out.

A drone's offer (JSON ``{"sdp", "type": "offer"}``, ``Authorization: Bearer
<token>``) → the answer (JSON ``{"sdp", "type": "answer", "drone_id"}``).
Refusals are JSON ``{"error": CODE, "message": TEXT}``
(:func:`~dronedepth.gateway.refusals.refuse`) with 400, 401, 408, 409, 413 or
503, and change no session: the offer is checked completely (credential, body,
SDP, limits, and applied to a new peer connection) before a session of the
same drone id is replaced. The credential check is
:mod:`dronedepth.gateway.auth`'s: a per-drone token opens only its own drone's
session. ``docs/protocol.md`` describes the signalling in prose.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from dronedepth import protocol
from dronedepth.errors import GatewayBusy, GatewayFull, ProtocolError
from dronedepth.gateway.app_keys import GATEWAY
from dronedepth.gateway.auth import CHALLENGE, OfferGrant, authorize_offer
from dronedepth.gateway.refusals import refuse
from dronedepth.protocol import (
    BODY_TIMEOUT,
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

__all__ = ["MAX_MEDIA_SECTIONS", "check_offer_sdp", "drone_id_from", "offer"]

DRONE_ID_QUERY: Final = "drone"
MAX_MEDIA_SECTIONS: Final = 4
"""A drone needs two (video, data channel); offers with more ``m=`` lines are refused before any parsing."""

_RETRY_AFTER_S: Final = "5"
_ENDPOINT: Final = "offer"
_RETRANSMISSION: Final = "video/rtx"  # a repair stream, not a codec: it decodes nothing by itself


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

    It must have at most :data:`MAX_MEDIA_SECTIONS` media sections (counted
    before aiortc parses anything: parsing hundreds costs the event loop
    seconds), parse, carry ICE credentials, and have a video section with a
    codec aiortc decodes (``rtx`` alone is none) plus an ``application``
    section (the data channel).
    """
    sections = sdp.count("\nm=") + sdp.startswith("m=")
    if sections > MAX_MEDIA_SECTIONS:
        raise ProtocolError(
            INVALID_SDP, f"the offer has {sections} media sections; a drone needs at most {MAX_MEDIA_SECTIONS}"
        )
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
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise ProtocolError(INVALID_SDP, f"the {media.kind} section lacks ICE credentials (ice-ufrag/ice-pwd)")
        if not media.dtls or not media.dtls.fingerprints:
            raise ProtocolError(INVALID_SDP, f"the {media.kind} section lacks a DTLS fingerprint")
    supported = {codec.mimeType.lower() for codec in CODECS["video"] if isinstance(codec, RTCRtpCodecParameters)} - {
        _RETRANSMISSION
    }
    for media in description.media:
        if media.kind == "video" and not {c.mimeType.lower() for c in media.rtp.codecs} & supported:
            offered = ", ".join(sorted({c.mimeType for c in media.rtp.codecs})) or "none"
            raise ProtocolError(INVALID_SDP, f"no common video codec: offered {offered}, supported VP8/H264")


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes | web.Response:
    """The body of ``request``, or the refusal: too large (413) or not delivered within ``timeout`` (408)."""
    if request.content_length is not None and request.content_length > limit:
        return refuse(
            request, _ENDPOINT, 413, BODY_TOO_LARGE, f"the body of {request.content_length} bytes exceeds {limit} bytes"
        )
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except web.HTTPRequestEntityTooLarge:
        return refuse(request, _ENDPOINT, 413, BODY_TOO_LARGE, f"the body exceeds {limit} bytes")
    except TimeoutError:
        return refuse(request, _ENDPOINT, 408, BODY_TIMEOUT, f"the body did not arrive within {timeout:g} s")


def _requested_drone_id(request: web.Request, grant: OfferGrant) -> str | None:
    """The drone id the offer asks for, checked against the credential; None: the gateway picks one.

    Raises :class:`ProtocolError`: ``invalid_drone_id`` (malformed) or ``unauthorized`` (another drone's id).
    """
    asked = drone_id_from(request)
    if grant.drone_id is None:
        return asked
    if asked is not None and asked != grant.drone_id:
        raise ProtocolError(UNAUTHORIZED, f"this token is not drone {asked!r}'s")
    return grant.drone_id


async def offer(request: web.Request) -> web.Response:
    """``POST /offer``: answer a drone's SDP offer with a new session, or refuse it (JSON error)."""
    gateway = request.app[GATEWAY]
    config = gateway.config
    remote = request.remote or "?"

    def refused(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        gateway.metrics.offers.inc(outcome=code)
        return refuse(request, _ENDPOINT, status, code, message, headers)

    grant = authorize_offer(request, config.token, gateway.drone_ids_by_token_digest)
    if isinstance(grant, str):
        return refused(401, UNAUTHORIZED, grant, CHALLENGE)
    body = await _read_body(request, config.max_body_bytes, config.body_timeout)
    if isinstance(body, web.Response):
        gateway.metrics.offers.inc(outcome=BODY_TOO_LARGE if body.status == 413 else BODY_TIMEOUT)
        return body
    try:
        description = protocol.SessionDescription.from_json(body)
        if description.type != "offer":
            raise ProtocolError(protocol.INVALID_MESSAGE, f"'type' must be 'offer', got {description.type!r}")
        drone_id = _requested_drone_id(request, grant)
        check_offer_sdp(description.sdp)
    except ProtocolError as exc:
        if exc.code == UNAUTHORIZED:
            return refused(401, UNAUTHORIZED, exc.message, CHALLENGE)
        status = 413 if exc.code == protocol.MESSAGE_TOO_LARGE else 400
        return refused(status, exc.code, exc.message)
    drone_id = drone_id or gateway.new_drone_id()
    try:
        answer_sdp = await gateway.open_session(description, drone_id, remote=remote)
    except GatewayFull as exc:
        return refused(503, GATEWAY_FULL, str(exc), {"Retry-After": _RETRY_AFTER_S})
    except GatewayBusy as exc:
        return refused(409, DRONE_BUSY, str(exc))
    except ProtocolError as exc:
        return refused(400, INVALID_SDP, exc.message)
    gateway.metrics.offers.inc(outcome="accepted")
    payload: dict[str, Any] = {"sdp": answer_sdp, "type": "answer", "drone_id": drone_id}
    return web.json_response(payload, headers={DRONE_ID_HEADER: drone_id})
