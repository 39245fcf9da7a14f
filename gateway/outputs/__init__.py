"""Where results go: one interface (:class:`ResultSink`) and one sink per output.

- :mod:`.sinks`: the frame record every sink receives and the fan-out set,
- :mod:`.recording`: PLY clouds and keypoints JSONL,
- :mod:`.rosbag`: rosbag2 / MCAP,
- :mod:`.foxglove`: the live Foxglove WebSocket server,
- :mod:`.stream`: the binary ``/stream/<drone>`` hub,
- :mod:`.render`: depth previews and point-cloud renders (pictures for people).

Sinks that need heavy libraries (Open3D, rosbags, foxglove-sdk) import them only
when they are opened.
"""

from dronedepth.gateway.outputs.sinks import FrameRecord, ResultSink, SinkSet

__all__ = ["FrameRecord", "ResultSink", "SinkSet"]
