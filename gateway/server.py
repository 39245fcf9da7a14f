"""The gateway: an HTTP signalling server plus one :class:`DroneSession` per drone.

    gateway = Gateway(GatewayConfig(token="s3cret", port=0), TritonDepthClient("localhost:8001"))
    await gateway.start()          # listening on gateway.port
    ...
    await gateway.stop()           # closes peers, flushes recordings

:class:`Gateway` owns what the sessions share: the thread pool for frame
conversion and processing, the :class:`~gateway.inference.DepthService`
around the depth client, the metrics, the session table with its limits, and
the result sinks every processed frame goes to (:mod:`gateway.sinks`): the
``/stream`` hub, the web pages' previews and, as configured, the recordings,
rosbags and the Foxglove server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import cv2
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dronedepth import protocol
from dronedepth.errors import ConfigError, GatewayBusy, GatewayFull, ProtocolError
from dronedepth.gateway.app import create_app
from dronedepth.gateway.config import GatewayConfig
from dronedepth.gateway.frame_rate import FleetShare
from dronedepth.gateway.http_guard import ConnectionGuard, GuardedTCPSite
from dronedepth.gateway.ice import HostCandidatePolicy
from dronedepth.gateway.inference import DepthClient, DepthService
from dronedepth.gateway.metrics import GatewayMetrics
from dronedepth.gateway.outputs.previews import PreviewHub
from dronedepth.gateway.outputs.recording import RecordingLimits
from dronedepth.gateway.outputs.sinks import SinkSet
from dronedepth.gateway.outputs.stream import StreamHub
from dronedepth.gateway.pipeline import FrameProcessor, ProcessingConfig
from dronedepth.gateway.refusals import refusal_log
from dronedepth.gateway.session import DroneSession, SessionContext

if TYPE_CHECKING:
    from dronedepth.gateway.mapping import MapService
    from dronedepth.gateway.outputs.map_topic import MapPublisher
    from dronedepth.gateway.outputs.sinks import ResultSink

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    """Receive drone video over WebRTC, get depth, send back 3D keypoints.

    ``depth_client`` is any :class:`~gateway.inference.DepthClient`; the
    gateway closes it in :meth:`stop`. Every processed frame goes, from a
    worker thread, to the gateway's :class:`~gateway.sinks.SinkSet` (``sinks``),
    made in :meth:`start` from the config: always :attr:`stream_hub` (``GET
    /stream/<drone>``) and :attr:`preview_hub` (the operator page's previews),
    then a :class:`~gateway.sinks.RecorderSink` (``record_dir``), a
    :class:`~gateway.rosbag.BagSink` (``record_bag_dir``) and a
    :class:`~gateway.foxglove_live.FoxgloveSink` (``foxglove_port``), and
    last the caller's own ``sink`` (a :class:`~gateway.sinks.ResultSink`), if
    any. :meth:`stop` closes them all once the sessions are closed. Usable as
    ``async with``.
    """

    def __init__(
        self,
        config: GatewayConfig,
        depth_client: DepthClient,
        *,
        metrics: GatewayMetrics | None = None,
        sink: ResultSink | None = None,
    ) -> None:
        self.config = config
        self.extra_sink = sink
        """The caller's sink, last in :attr:`sinks`."""
        self.stream_hub = StreamHub()
        """``GET /stream/<drone>``'s subscribers; frames of drones nobody watches cost nothing."""
        self.preview_hub: PreviewHub | None = PreviewHub()
        """The web pages' depth previews and result rates; set to None before :meth:`start` for none."""
        self.sinks: SinkSet | None = None
        """Every output of processed frames; made by :meth:`start`."""
        self.world_map: MapService | None = None
        """The world maps and their fusion thread (``config.world_map``); made by :meth:`start`."""
        self.map_publisher: MapPublisher | None = None
        """The map on ``/map`` in the bag and Foxglove outputs, when there are both a map and such an output."""
        self.metrics = metrics or GatewayMetrics()
        # No success for a whole timeout period while the server is busy: tell the drones it is an outage.
        self.depth = DepthService(
            depth_client,
            timeout=config.inference_timeout,
            outage_after=config.inference_timeout,
            max_in_flight=config.max_in_flight,
            on_error=self._on_inference_error,
        )
        self.sessions: dict[str, DroneSession] = {}
        """Every session, connected or still connecting."""
        self.host_candidates = HostCandidatePolicy(
            config.rtc_ports, config.public_ip, on_exhausted=self.metrics.media_ports_exhausted.inc
        )
        """Where media sockets bind (``rtc_ports``) and the address answers advertise (``public_ip``)."""
        self._pending: set[str] = set()
        # Sessions answered but not yet connected (ICE/DTLS): drone id -> remote address.
        self._connecting: dict[str, str] = {}
        self.drone_ids_by_token_digest = config.drone_ids_by_token_digest()
        """Per-drone credentials (SHA-256 hex of the token → drone id), or None: the fleet token."""
        self.guard = ConnectionGuard(
            header_timeout=config.header_timeout,
            max_waiting=config.max_waiting_connections,
            on_drop=lambda reason: self.metrics.connections_dropped.inc(reason=reason),
        )
        """Header deadline and cap of the HTTP connections (:mod:`~dronedepth.gateway.http_guard`)."""
        self.refusal_log = refusal_log()
        """One WARNING per remote address and endpoint every 10 s for refused requests, with the count."""
        self.fleet_share = FleetShare()
        """The drones' rates processed, for their frame-rate advice's fair share."""
        self._executor: ThreadPoolExecutor | None = None
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port: int | None = None
        self._stopping = False
        self._started_at = 0.0
        self.metrics.add_collector(self._collect, detail=True)
        self.metrics.inference_available.set_function(lambda: 1.0 if self.depth.available else 0.0)
        self.metrics.uptime.set_function(lambda: time.monotonic() - self._started_at if self._started_at else 0.0)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the started gateway (127.0.0.1 when it listens on every address)."""
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def app(self) -> web.Application:
        """The aiohttp app (the routes of :func:`~dronedepth.gateway.app.create_app`); add more before :meth:`start`."""
        if self._app is None:
            self._app = create_app(self)
        return self._app

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            raise RuntimeError("the gateway is not started")
        return self._executor

    async def start(self) -> None:
        """Open the outputs and bind the HTTP server; the depth server may come up later (``/ready`` tells).

        Raises :class:`~dronedepth.errors.ConfigError` (and leaves nothing
        open) when the port is taken, the TLS files are unusable or an output
        cannot be opened.
        """
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        ssl_context = self.config.ssl_context()
        self._executor = ThreadPoolExecutor(self.config.worker_count, thread_name_prefix="gateway-worker")
        # One OpenCV thread per call: the workers already process many frames at once, and OpenCV's own threads
        # cost more CPU than they save on one 640×480 frame (ORB: 8.7 CPU ms on 2 threads, 5.6 on one, no faster).
        cv2.setNumThreads(1)
        loop = asyncio.get_running_loop()
        try:
            # In a worker: the outputs import Open3D, rosbags or foxglove and open files and ports.
            self.sinks = await loop.run_in_executor(self._executor, self._open_sinks)
            self.world_map = await loop.run_in_executor(self._executor, self._open_map)
            self._runner = web.AppRunner(
                self.app,
                access_log=None,
                shutdown_timeout=self.config.shutdown_timeout,
                keepalive_timeout=self.config.header_timeout,
            )
            await self._runner.setup()
            self._site = GuardedTCPSite(
                self._runner, self.config.host, self.config.port, guard=self.guard, ssl_context=ssl_context
            )
            try:
                await self._site.start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}; choose another --port"
                ) from exc
        except BaseException:
            await self._abort_start()
            raise
        addresses = self._runner.addresses
        self._port = int(addresses[0][1]) if addresses else self.config.port
        self._started_at = time.monotonic()
        ready = await self.depth.ready()
        log.info(
            "gateway listening on %s:%d (%s, auth %s, max %d drones, %d workers, outputs: %s); depth server %s",
            self.config.host,
            self._port,
            "HTTPS" if ssl_context is not None else "HTTP",
            "on" if self.config.token is not None else "OFF",
            self.config.max_drones,
            self.config.worker_count,
            ", ".join(type(sink).__name__ for sink in self.sinks.sinks),
            f"ready ({self.depth.client}, {self.depth.depth_kind} depth)"
            if ready
            else f"NOT ready ({self.depth.client}); frames are dropped until it is",
        )

    async def stop(self) -> None:
        """Stop accepting drones, close every session (flushing recordings), release the depth client."""
        if self._stopping:
            return
        self._stopping = True
        timeout = self.config.shutdown_timeout
        if self._site is not None:
            await self._site.stop()
        sessions = list(self.sessions.values())
        if sessions:
            log.info("closing %d drone session(s)", len(sessions))
            closing = [asyncio.create_task(s.close("gateway stopping")) for s in sessions]
            _, pending = await asyncio.wait(closing, timeout=2 * timeout)
            if pending:
                log.warning("%d session(s) did not close within %.0f s; abandoning them", len(pending), 2 * timeout)
                for task in pending:
                    task.cancel()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), timeout)
            except TimeoutError:
                log.warning("HTTP server did not stop within %.0f s", timeout)
            self._runner = None
        await self.depth.close()
        if self.world_map is not None:
            await self._close_map(timeout)
        if self.sinks is not None:
            # After the sessions: their drones' recordings and bags are finished by now; this flushes the rest.
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(self._executor, self.sinks.close), 2 * timeout
                )
            except Exception as exc:
                log.error("closing the outputs failed: %r", exc)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("gateway stopped")

    def _open_sinks(self) -> SinkSet:
        """The outputs of :attr:`config` (worker thread); closes what it opened if one fails."""
        config = self.config
        sinks: list[ResultSink] = [self.stream_hub]
        if self.preview_hub is not None:
            sinks.append(self.preview_hub)
        limits = RecordingLimits(max_bytes=config.record_max_bytes, min_free_bytes=config.record_min_free)
        try:
            if config.record_dir is not None:
                from dronedepth.gateway.outputs.sinks import RecorderSink

                sinks.append(
                    RecorderSink(
                        config.record_dir, config.record_every, limits=limits, on_fault=self._recording_stopped
                    )
                )
            if config.record_bag_dir is not None or config.foxglove_port is not None:
                from dronedepth.gateway.outputs.rosbag import BagSink, RosEncoder

                encoder = RosEncoder()  # one for both: a frame is serialised once for the bag and Foxglove
                if config.record_bag_dir is not None:
                    sinks.append(
                        BagSink(config.record_bag_dir, encoder=encoder, limits=limits, on_fault=self._recording_stopped)
                    )
                if config.foxglove_port is not None:
                    from dronedepth.gateway.outputs.foxglove import FoxgloveSink

                    sinks.append(FoxgloveSink(config.foxglove_host, config.foxglove_port, encoder=encoder))
        except BaseException:
            SinkSet(sinks).close()
            raise
        if self.extra_sink is not None:
            sinks.append(self.extra_sink)
        return SinkSet(sinks)

    def _open_map(self) -> MapService | None:
        """The started world-map service of ``config.world_map``, or None (worker thread: imports Open3D)."""
        settings = self.config.world_map
        if settings is None:
            return None
        from dronedepth.gateway.mapping import MapService
        from dronedepth.gateway.outputs.map_topic import MapPublisher

        service = MapService(settings)
        service.start()
        self.metrics.add_collector(service.collect)
        targets = MapPublisher.targets_in(self.sinks.sinks if self.sinks is not None else ())
        if targets:
            self.map_publisher = MapPublisher(service, targets)
            self.map_publisher.start()
        return service

    def _close_map_publisher(self) -> None:
        """Publish the final map and stop (worker thread; before the outputs close)."""
        publisher, self.map_publisher = self.map_publisher, None
        if publisher is not None:
            publisher.close(self.config.shutdown_timeout)

    async def _close_map(self, timeout: float) -> None:
        """Stop fusing, then save each map as ``record_dir/map_<frame>.ply`` when recording."""
        world_map, self.world_map = self.world_map, None
        assert world_map is not None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, world_map.close, timeout), 2 * timeout)
            await asyncio.wait_for(loop.run_in_executor(self._executor, self._close_map_publisher), 2 * timeout)
            if self.config.record_dir is not None:
                work = loop.run_in_executor(self._executor, world_map.save, self.config.record_dir)
                saved = await asyncio.wait_for(work, 2 * timeout)
                log.info("world map saved: %s", ", ".join(str(path) for path in saved) or "empty, nothing written")
        except Exception as exc:
            log.error("closing the world map failed: %r", exc)

    def _recording_stopped(self, drone_id: str, reason: str) -> None:
        """A sink stopped recording a drone session (``write_failed``, ``low_disk``, ``size_limit``); any thread."""
        self.metrics.recordings_stopped.inc(reason=reason)

    async def _abort_start(self) -> None:
        """Undo a failed :meth:`start`."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_map_publisher)
        if self.sinks is not None:
            sinks, self.sinks = self.sinks, None
            await asyncio.get_running_loop().run_in_executor(self._executor, sinks.close)
        if self.world_map is not None:
            world_map, self.world_map = self.world_map, None
            await asyncio.get_running_loop().run_in_executor(self._executor, world_map.close, 1.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ sessions

    def new_drone_id(self) -> str:
        while True:
            drone_id = f"drone-{secrets.token_hex(4)}"
            if drone_id not in self.sessions and drone_id not in self._pending:
                return drone_id

    @property
    def connected_count(self) -> int:
        """Sessions whose ICE/DTLS has completed: what ``max_drones`` bounds."""
        return len(self.sessions) - len(self._connecting)

    def _check_capacity(self, drone_id: str, remote: str) -> None:
        """Raise :class:`GatewayFull` when a new session for ``drone_id`` from ``remote`` does not fit.

        Connected drones are bounded by ``max_drones``; offers still connecting by the smaller budgets
        ``max_pending_offers`` (all) and ``max_pending_per_remote``, so half-open offers cannot lock real drones
        out. A drone's own session, which the new one replaces, does not count.
        """
        config = self.config
        replaced = drone_id in self.sessions
        connected = self.connected_count - (replaced and drone_id not in self._connecting)
        if connected >= config.max_drones:
            raise GatewayFull(f"the gateway serves its maximum of {config.max_drones} drones")
        connecting = [r for d, r in self._connecting.items() if d != drone_id]
        if len(connecting) + len(self._pending) - 1 >= config.max_pending_offers:
            raise GatewayFull(f"{config.max_pending_offers} drones are connecting already; retry in a few seconds")
        if connecting.count(remote) >= config.max_pending_per_remote:
            raise GatewayFull(f"{config.max_pending_per_remote} drones from {remote} are connecting already")

    async def open_session(self, offer: protocol.SessionDescription, drone_id: str, *, remote: str = "?") -> str:
        """Answer ``offer`` with a new session for ``drone_id``; returns the answer SDP.

        A drone that offers again under its id replaces its old session, but only once the new offer has
        been applied: a refused offer leaves the old session as it was. The new session counts as
        connecting until its ICE/DTLS completes, and is closed if that takes over ``pending_timeout``.
        Raises :class:`~dronedepth.errors.GatewayFull`, :class:`~dronedepth.errors.GatewayBusy` or
        :class:`~dronedepth.errors.ProtocolError` (the offer cannot be applied);
        nothing is left behind and no session changes when it raises.
        """
        if self._stopping:
            raise GatewayFull("the gateway is shutting down")
        if drone_id in self._pending:
            raise GatewayBusy(f"an offer for drone {drone_id!r} is already being answered")
        self._pending.add(drone_id)
        try:
            self._check_capacity(drone_id, remote)
            pc = RTCPeerConnection(self.config.rtc_configuration())
            self.metrics.peer_connections.inc()
            session = DroneSession(drone_id, pc, self._context(), remote=remote)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
                self.host_candidates.apply(pc)
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except GatewayFull:  # no free media port: the drone may retry, nothing is wrong with its offer
                await session.close("no media port")
                raise
            except Exception as exc:
                await session.close("offer refused")
                raise ProtocolError(protocol.INVALID_MESSAGE, f"the offer cannot be applied: {exc}") from exc
            old = self.sessions.get(drone_id)
            if old is not None:
                log.info("drone %s offers again: replacing its session", drone_id)
                await old.close("replaced by a new offer")
            if self._stopping:
                await session.close("gateway stopping")
                raise GatewayFull("the gateway is shutting down")
            self.sessions[drone_id] = session
            self._connecting[drone_id] = remote
            self._watch_connection(session)
            self.metrics.sessions_active.set(len(self.sessions))
            session.start()
            log.info(
                "drone %s: offer accepted from %s (%d/%d drones connected, %d connecting)",
                drone_id,
                remote,
                self.connected_count,
                self.config.max_drones,
                len(self._connecting),
            )
            return pc.localDescription.sdp
        finally:
            self._pending.discard(drone_id)

    def _watch_connection(self, session: DroneSession) -> None:
        """Count ``session`` as connecting until ICE/DTLS completes; close it after ``pending_timeout``."""
        timeout = self.config.pending_timeout

        def expire() -> None:
            if self._connecting.get(session.drone_id) is not None and self.sessions.get(session.drone_id) is session:
                self.metrics.pending_offers_expired.inc()
                session.schedule_close(f"pending: ICE/DTLS did not complete within {timeout:g} s")

        timer = asyncio.get_running_loop().call_later(timeout, expire)

        def on_state() -> None:
            state = session.pc.connectionState
            if state == "connected" and self.sessions.get(session.drone_id) is session:
                timer.cancel()
                self._connecting.pop(session.drone_id, None)
                if self.connected_count > self.config.max_drones:  # others connected first
                    session.schedule_close("gateway full")
            elif state in ("failed", "closed"):
                timer.cancel()

        session.pc.on("connectionstatechange", on_state)

    def _context(self) -> SessionContext:
        return SessionContext(
            config=self.config,
            depth=self.depth,
            executor=self.executor,
            metrics=self.metrics,
            make_processor=self._make_processor,
            on_closed=self._session_closed,
            sink=self.sinks,
            world_map=self.world_map,
            fleet_share=self.fleet_share,
        )

    def _make_processor(self, depth_kind: str) -> FrameProcessor:
        # The recorder builds the clouds it writes from points and colours, and no other output reads
        # `FrameResult.cloud`: no cloud per frame unless the processing config asks for one.
        config = self.config.processing or ProcessingConfig(build_cloud=False)
        return FrameProcessor(config, depth_kind)  # type: ignore[arg-type]

    def _session_closed(self, session: DroneSession) -> None:
        if self.sessions.get(session.drone_id) is session:
            del self.sessions[session.drone_id]
            self._connecting.pop(session.drone_id, None)
        self.metrics.sessions_active.set(len(self.sessions))

    def _on_inference_error(self, reason: str) -> None:
        if reason != "backoff":
            self.metrics.triton_errors.inc(reason=reason)

    # ------------------------------------------------------------------ metrics

    def _collect(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        """Per-drone series of the live sessions (they go away with the session)."""
        frames = CounterMetricFamily(
            "dronedepth_drone_frames", "Frames of each connected drone, by outcome.", labels=["drone", "outcome"]
        )
        latency = GaugeMetricFamily(
            "dronedepth_drone_last_latency_seconds",
            "Receive-to-send time of each connected drone's latest result.",
            labels=["drone"],
        )
        scale_ratio = GaugeMetricFamily(
            "dronedepth_drone_scale_ratio",
            "Metric models: anchors' depth / the model's depth on each drone's latest check (1 = right).",
            labels=["drone"],
        )
        scale_confidence = GaugeMetricFamily(
            "dronedepth_drone_scale_confidence",
            "Confidence (0..1) of the scale of each drone's latest result; 0 = the model's own scale.",
            labels=["drone", "source"],
        )
        advised = GaugeMetricFamily(
            "dronedepth_drone_advised_fps",
            "The frame rate each drone was last asked not to exceed ('frame_rate' advice); absent: no limit.",
            labels=["drone"],
        )
        for drone_id, session in sorted(self.sessions.items()):
            snapshot = session.snapshot()
            scale = snapshot["scale"]
            if snapshot["advised_fps"] is not None:
                advised.add_metric([drone_id], snapshot["advised_fps"])
            if scale["check"] is not None:
                scale_ratio.add_metric([drone_id], scale["check"]["ratio"])
            if scale["scale"] is not None:
                scale_confidence.add_metric([drone_id, scale["scale"]["source"]], scale["scale"]["confidence"])
            frames.add_metric([drone_id, "received"], session.frames_received)
            frames.add_metric([drone_id, "processed"], session.frames_processed)
            frames.add_metric([drone_id, "dropped"], sum(session.dropped.values()))
            if "total" in session.last_timing:
                latency.add_metric([drone_id], session.last_timing["total"] / 1e3)
        return [frames, latency, scale_ratio, scale_confidence, advised]
