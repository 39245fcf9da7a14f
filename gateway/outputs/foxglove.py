"""Live Foxglove WebSocket server publishing each drone's topics as they are computed.

The topics, types and bytes are those of the rosbag2 recording
(:mod:`gateway.rosbag`): ROS 2 messages, CDR-encoded, with ``ros2msg``
schemas, so Foxglove shows a live drone and its recorded bag the same way
(``/tf`` and ``/tf_static`` are shared by every drone; ``/tf_static`` is sent
with every frame, as the server has no latching, so a client that connects
late still places the camera). The world map's ``/map`` (``/map_odom``)
comes from :mod:`~dronedepth.gateway.outputs.map_topic` through
:meth:`FoxgloveSink.write_map`. A
topic is serialised only while a client subscribes to it (``has_sinks``), so
an idle server costs nothing per frame.

The foxglove-sdk server speaks the ``foxglove.sdk.v1`` WebSocket subprotocol
(current Foxglove app; older clients offering only ``foxglove.websocket.v1``
are refused at the handshake). It binds 127.0.0.1 unless told otherwise: it
has no authentication.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

import foxglove
from dronedepth.gateway.outputs.rosbag import GLOBAL_TOPICS, TF_STATIC, RosEncoder, RosMessage
from dronedepth.gateway.outputs.sinks import FrameRecord

from dronedepth.errors import ConfigError

__all__ = ["DEFAULT_PORT", "FoxgloveSink"]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8765
"""Foxglove's usual WebSocket port."""


class FoxgloveSink:
    """A Foxglove WebSocket server as a :class:`~gateway.sinks.ResultSink`.

    ``port=0`` binds a free port (read :attr:`port`). Each sink has its own
    ``foxglove.Context``, so several can run in one process (tests) without
    sharing channels. Channels are advertised on a drone's first frame and
    withdrawn by :meth:`close_drone`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        encoder: RosEncoder | None = None,
        name: str = "dronedepth",
    ) -> None:
        self.encoder = encoder or RosEncoder()
        self._context = foxglove.Context()
        try:
            self._server = foxglove.start_server(name=name, host=host, port=port, context=self._context)
        except Exception as exc:  # the SDK raises RuntimeError with the OS reason
            raise ConfigError(f"cannot start the Foxglove server on {host}:{port}: {exc}") from exc
        self.host = host
        self.port: int = self._server.port
        self._channels: dict[str, dict[str, foxglove.Channel]] = {}
        """Per drone id its topics' channels; the shared topics (:data:`GLOBAL_TOPICS`) under ``""``."""
        self._lock = threading.Lock()
        self._closed = False
        log.info("Foxglove live server on ws://%s:%d (open it in Foxglove: Open connection)", host, self.port)

    def _channel(self, drone_id: str, topic: str, msgtype: str) -> foxglove.Channel:
        with self._lock:
            channels = self._channels.setdefault("" if topic in GLOBAL_TOPICS else drone_id, {})
            channel = channels.get(topic)
            if channel is None:
                text, _ = self.encoder.definition(msgtype)
                channel = channels[topic] = foxglove.Channel(
                    topic,
                    schema=foxglove.Schema(name=msgtype, encoding="ros2msg", data=text.encode()),
                    message_encoding="cdr",
                    context=self._context,
                )
            return channel

    def write(self, record: FrameRecord) -> None:
        if self._closed:
            return
        for kind in (TF_STATIC, *self.encoder.kinds(record)):
            channel = self._channel(record.drone_id, self.encoder.topic(record, kind), self.encoder.msgtype(kind))
            if not channel.has_sinks():
                continue  # nobody subscribed: skip the encoding
            message = self.encoder.encode(record, kind)
            # The SDK takes bytes only (not a memoryview): one copy per subscribed topic.
            data = message.data if isinstance(message.data, bytes) else bytes(message.data)
            channel.log(data, log_time=record.stamp_ns)

    repeat_map: Final = True
    """The map is sent every period even unchanged: the server has no latching, a late client gets it so."""

    def write_map(self, message: RosMessage, stamp_ns: int) -> None:
        """Publish one world-map message (a topic of no drone) to the clients subscribed to it."""
        if self._closed:
            return
        channel = self._channel("", message.topic, message.msgtype)
        if channel.has_sinks():
            channel.log(message.data if isinstance(message.data, bytes) else bytes(message.data), log_time=stamp_ns)

    def close_drone(self, drone_id: str) -> None:
        with self._lock:
            channels = self._channels.pop(drone_id, {})
        for channel in channels.values():
            channel.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = [c for per_drone in self._channels.values() for c in per_drone.values()]
            self._channels = {}
        for channel in channels:
            channel.close()
        self._server.stop()
