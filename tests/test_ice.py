"""Media ports and the advertised address (``--rtc-ports``, ``--public-ip``) with real aiortc peers on this host.

The gateway's host sockets must bind in the range (one port per drone, the same on every host address),
a drone arriving when the range is full is refused with 503 while the others keep their results, and
``--public-ip`` must be the only address the answers carry while media still flows.
"""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from gateway_fixtures import TOKEN, OfferRefused, TestDrone, camera_for, drones, photo, running_gateway, wait_until
from ice_fixtures import free_udp_range, sdp_candidates, selected_pair

from dronedepth import cli
from dronedepth.errors import ConfigError
from dronedepth.gateway import launch
from dronedepth.gateway.ice import HostCandidatePolicy, MediaPorts


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return cli.build_parser(load=["gateway"]).parse_args(["gateway", "--triton-url", "h:1", *argv])


async def test_media_binds_in_the_range_and_a_full_range_refuses_only_the_extra_drone() -> None:
    ports = free_udp_range(1)
    rgb, camera = photo(), camera_for()
    async with running_gateway(rtc_ports=ports) as gateway, drones(3, rgb) as (first, extra, later):
        await first.connect(gateway.url, camera=camera)
        await first.wait_for(lambda d: len(d.keypoints) >= 2, what="keypoints")
        session = gateway.sessions[first.drone_id]
        assert selected_pair(session.pc).local_candidate.port == ports.low
        answer_ports = {port for _, port, _ in sdp_candidates(first.pc.remoteDescription.sdp)}
        assert answer_ports == {ports.low}, "every host address uses the drone's one port"

        with pytest.raises(OfferRefused) as refused:
            await extra.connect(gateway.url, camera=camera)
        assert refused.value.status == 503
        assert f"--rtc-ports {ports}" in refused.value.body["message"]
        assert "dronedepth_media_ports_exhausted_total 1.0" in gateway.metrics.render()
        assert list(gateway.sessions) == [first.drone_id]

        received = len(first.keypoints)
        await first.wait_for(lambda d: len(d.keypoints) > received + 2, what="more keypoints after the refusal")
        assert first.error_codes() == []

        await first.close()  # its port goes back to the range
        await wait_until(lambda: not gateway.sessions, what="the first session to close")
        await later.connect(gateway.url, camera=camera)
        await later.wait_for(lambda d: len(d.keypoints) >= 1, what="keypoints on the freed port")


async def test_each_drone_gets_its_own_port_of_the_range() -> None:
    ports = free_udp_range(3)
    async with running_gateway(rtc_ports=ports) as gateway, drones(2, photo()) as fleet:
        for drone in fleet:
            await drone.connect(gateway.url, camera=camera_for())
        for drone in fleet:
            await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="keypoints")
        used = [selected_pair(gateway.sessions[d.drone_id].pc).local_candidate.port for d in fleet]
        assert len(set(used)) == 2 and all(ports.low <= port <= ports.high for port in used)


async def test_the_answer_advertises_only_the_public_address_and_media_flows() -> None:
    ports = free_udp_range(2)
    async with (
        running_gateway(rtc_ports=ports, public_ip="127.0.0.2") as gateway,
        drones(1, photo()) as (drone,),
    ):
        await drone.connect(gateway.url, camera=camera_for())
        await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="keypoints through 127.0.0.2")
        candidates = sdp_candidates(drone.pc.remoteDescription.sdp)
        assert candidates and all(host == "127.0.0.2" and kind == "host" for host, _, kind in candidates)
        assert all(ports.low <= port <= ports.high for _, port, _ in candidates)
        remote = selected_pair(drone.pc).remote_candidate
        assert remote.host == "127.0.0.2" and ports.low <= remote.port <= ports.high


async def test_a_public_address_of_another_machine_binds_every_local_address() -> None:
    """Behind a port-forwarding NAT (Docker's published ports) the advertised address is not ours: bind 0.0.0.0."""
    ports = free_udp_range(1)
    drone = TestDrone(photo())
    gateway_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await gateway_pc.setRemoteDescription(RTCSessionDescription(sdp=await drone.offer(), type="offer"))
        HostCandidatePolicy(ports, "203.0.113.7").apply(gateway_pc)
        await gateway_pc.setLocalDescription(await gateway_pc.createAnswer())
        # Each media section of the bundle lists the same candidate.
        assert set(sdp_candidates(gateway_pc.localDescription.sdp)) == {("203.0.113.7", ports.low, "host")}
        transport = gateway_pc.getTransceivers()[0].receiver.transport.transport
        sockets = [p.transport.get_extra_info("sockname") for p in transport.iceGatherer._connection._protocols]
        assert sockets == [("0.0.0.0", ports.low)]
    finally:
        await gateway_pc.close()
        await drone.close()


def test_media_options_come_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    config, _ = launch.build(_args("--rtc-ports", "40000-40009", "--public-ip", "198.51.100.4"))
    assert (config.rtc_ports, config.public_ip) == (MediaPorts(40000, 40009), "198.51.100.4")
    monkeypatch.setenv("DRONEDEPTH_RTC_PORTS", "41000-41001")
    monkeypatch.setenv("DRONEDEPTH_PUBLIC_IP", "2001:db8::1")
    config, _ = launch.build(_args())
    assert (config.rtc_ports, config.public_ip) == (MediaPorts(41000, 41001), "2001:db8::1")
    monkeypatch.setenv("DRONEDEPTH_PUBLIC_IP", "")  # compose passes an empty value when it is not set
    monkeypatch.delenv("DRONEDEPTH_RTC_PORTS")
    config, _ = launch.build(_args())
    assert (config.rtc_ports, config.public_ip) == (None, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--rtc-ports", "40000-3999"), "LO <= HI"),
        (("--rtc-ports", "many"), "LO-HI such as 40000-40099"),
        (("--rtc-ports", "0-10"), "1 <= LO"),
        (("--public-ip", "gateway.example.org"), "must be an IPv4 or IPv6 address"),
    ],
)
def test_bad_media_options_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], message: str
) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match=message):
        launch.build(_args(*argv))


def test_the_help_says_the_range_bounds_the_drones() -> None:
    text = cli.build_parser(load=["gateway"])._subparsers._group_actions[0].choices["gateway"].format_help()
    assert "--rtc-ports LO-HI" in text and "each connected drone takes one port" in text.replace("\n", " ")
