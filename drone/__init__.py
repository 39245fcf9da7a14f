"""The drone side of dronedepth: stream frames to a gateway over WebRTC, receive sparse 3D keypoints.

Light enough for an onboard computer: aiortc, aiohttp, OpenCV, numpy, PyYAML
and :mod:`dronedepth.protocol` only (no torch, Open3D or Triton client).

    from dronedepth.drone import DroneClient, DroneConfig
    summary = await DroneClient(DroneConfig(gateway="http://gw:8080", token="...", source="synthetic")).run()

``docs/drone.md`` describes the command line, the results file and the waypoints.
"""

from dronedepth.drone.client import DroneClient, DroneConfig, DroneSummary, ResultCallback
from dronedepth.drone.intrinsics import intrinsics_from_values, load_intrinsics
from dronedepth.drone.sources import (
    CameraSource,
    CapturedFrame,
    FrameSource,
    ImageFolderSource,
    SyntheticSource,
    VideoFileSource,
    open_source,
)
from dronedepth.drone.track import SourceTrack
from dronedepth.drone.waypoints import FreeDirection, Obstacle, Waypoints, plan_waypoints

__all__ = [
    "CameraSource",
    "CapturedFrame",
    "DroneClient",
    "DroneConfig",
    "DroneSummary",
    "FrameSource",
    "FreeDirection",
    "ImageFolderSource",
    "Obstacle",
    "ResultCallback",
    "SourceTrack",
    "SyntheticSource",
    "VideoFileSource",
    "Waypoints",
    "intrinsics_from_values",
    "load_intrinsics",
    "open_source",
    "plan_waypoints",
]
