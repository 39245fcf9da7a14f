"""``gateway/auth.py``: the one bearer-token check of /offer, /stream, the web pages and the API."""

from __future__ import annotations

import subprocess
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dronedepth.gateway.auth import OfferGrant, authorize_offer, presented_token, token_digest, token_matches


def request(authorization: str | None = None, query: str = "") -> web.Request:
    headers = {} if authorization is None else {"Authorization": authorization}
    return make_mocked_request("GET", "/x" + query, headers=headers)


def test_the_header_comes_first_and_the_query_only_where_allowed() -> None:
    assert presented_token(request("Bearer  s3cret "), allow_query=False) == "s3cret"
    assert presented_token(request("bearer a", "?token=b"), allow_query=True) == "a"
    assert presented_token(request(None, "?token=b"), allow_query=True) == "b"
    assert presented_token(request(None, "?token=b"), allow_query=False) is None
    assert presented_token(request("Basic abc"), allow_query=False) is None


@pytest.mark.parametrize(
    ("presented", "expected", "ok"),
    [
        (None, None, True),
        ("x", None, True),
        (None, "t", False),
        ("t", "t", True),
        ("T", "t", False),
        ("té", "té", True),
    ],
)
def test_token_matches(presented: str | None, expected: str | None, ok: bool) -> None:
    assert token_matches(presented, expected) is ok


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (None, "missing Authorization header"),
        ("Basic abc", "the Authorization header must be 'Bearer <token>'"),
        ("Bearer ", "the Authorization header must be 'Bearer <token>'"),
        ("Bearer nope", "wrong token"),
        ("Bearer s3cret", None),
    ],
)
def test_offer_refusals_say_what_is_wrong_without_echoing_the_token(authorization: str | None, problem: str) -> None:
    expected = OfferGrant(None) if problem is None else problem
    assert authorize_offer(request(authorization), "s3cret", None) == expected
    assert authorize_offer(request(authorization), None, None) == OfferGrant(None)


def test_a_drone_token_grants_its_own_drone_only_and_the_fleet_token_no_longer_opens_offers() -> None:
    drones = {token_digest("alpha-secret"): "alpha", token_digest("beta-secret"): "beta"}
    assert authorize_offer(request("Bearer alpha-secret"), "operator", drones) == OfferGrant("alpha")
    assert authorize_offer(request("Bearer beta-secret"), "operator", drones) == OfferGrant("beta")
    assert authorize_offer(request("Bearer operator"), "operator", drones) == "wrong token"
    # What `printf %s alpha-secret | sha256sum` prints: the tokens file's one-liner agrees.
    assert token_digest("alpha-secret") == "3f8ad42d6dc52445378196cb2e49281f812253eaea7830fe46f4756f2ca0a3d4"


def test_non_ascii_header_bytes_are_a_wrong_token_not_an_error() -> None:
    garbled = "\udcff\udcfe"  # how aiohttp hands over the header bytes 0xff 0xfe (surrogateescape)
    assert token_matches(garbled, "s3cret") is False
    assert len(token_digest(garbled)) == 64


def test_route_modules_do_not_import_the_server() -> None:
    code = (
        "import sys; import dronedepth.gateway.app, dronedepth.gateway.signaling, dronedepth.gateway.web; "
        "print('dronedepth.gateway.server' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
