"""One drone's metric scale in the gateway: anchors matched to frames, the estimator, the per-frame decision.

A session owns one :class:`SessionScale`. On the event loop it buffers the
drone's ``anchors`` messages (:meth:`SessionScale.add_anchors`) and hands each
frame the one nearest its pts (:meth:`SessionScale.take_anchors`); in the
executor, :meth:`SessionScale.frame` turns the model's output, the frame's
pose (height above ground + attitude → ground anchors) and those anchors into
a :class:`FrameScale`: the depth to use and what the wire says about it.
Pure numpy, one frame at a time (the session never runs two of its frames at
once).

What a frame says (``--scale``, docs/scale.md):

- ``off``: nothing; no estimator runs.
- relative model, ``auto``, trusted estimate: metric depth ``1 / (a·d + b)``,
  ``depth_kind: metric``, ``scale.source`` ``ground`` or ``anchors``.
- relative model otherwise (``model``, or no trusted estimate yet / any more):
  the model's relative depth, ``depth_kind: relative``, ``scale`` =
  :meth:`Scale.unscaled` (``source: model``: the depth is the model's own and
  not metres).
- metric model: its metres, ``scale.source: model``, plus ``scale_check``
  (anchors' depth ÷ the model's) on frames with anchors; with
  ``--scale-correct`` and a trusted correction, the corrected metres and
  ``scale.source`` ``ground``/``anchors``.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from dronedepth.contract import DepthKind
from dronedepth.errors import ConfigError
from dronedepth.gateway.anchors import AnchorSamples, drone_samples, ground_from_pose, ground_grid, ground_samples
from dronedepth.gateway.config import SCALE_MODES, ScaleMode
from dronedepth.gateway.pipeline import FramePose, FrameScale, depth_grid_camera, relative_depth
from dronedepth.gateway.projection import ray_grid
from dronedepth.gateway.scale import ScaleCheck, ScaleConfig, ScaleEstimate, ScaleEstimator, check_metric_scale
from dronedepth.protocol import MAX_ANCHOR_DEPTH_M, VIDEO_CLOCK_RATE, AnchorsMessage, CameraMessage, Scale

__all__ = ["FrameScale", "SessionScale"]

MAX_BUFFERED_ANCHORS: Final = 32
"""``anchors`` messages kept per drone while they wait for their frame (a rangefinder at 20–50 Hz, video at 10+)."""


class SessionScale:
    """Per drone: the latest ``anchors`` by pts and the scale estimator of the model's output.

    ``max_gap_s``: an anchors message more than this far (seconds of the video
    clock) from a frame is not used for it. ``correct``: apply the recovered
    correction to a metric model (``--scale-correct``, ``auto`` only).
    """

    def __init__(
        self,
        mode: ScaleMode,
        *,
        correct: bool = False,
        max_gap_s: float = 0.1,
        min_disparity: float = 1e-3,
        config: ScaleConfig | None = None,
    ) -> None:
        if mode not in SCALE_MODES:
            raise ConfigError(f"scale mode must be one of {', '.join(SCALE_MODES)}, got {mode!r}")
        if correct and mode != "auto":
            raise ConfigError(f"--scale-correct needs --scale auto (got --scale {mode}): it changes the model's scale")
        self.mode: ScaleMode = mode
        self.correct = correct
        self.max_gap_s = max_gap_s
        self.min_disparity = min_disparity
        self._config = config or ScaleConfig()
        self._anchors: deque[AnchorsMessage] = deque(maxlen=MAX_BUFFERED_ANCHORS)
        self._depth_kind: DepthKind | None = None
        self._estimator: ScaleEstimator | None = None
        self.last_scale: Scale | None = None
        """The ``scale`` of the latest frame (None before any, or with ``--scale off``)."""
        self.last_check: ScaleCheck | None = None
        """The latest ``scale_check`` of a metric model (held across frames without anchors)."""

    def snapshot(self) -> dict[str, Any]:
        """The latest frame's scale and the metric model's latest check, for /metrics and the operator page."""
        return {
            "mode": self.mode,
            "correct": self.correct,
            "scale": None if self.last_scale is None else self.last_scale.to_dict(),
            "check": None if self.last_check is None else self.last_check.to_dict(),
        }

    # ---------------------------------------------------------------- event loop

    def add_anchors(self, message: AnchorsMessage) -> None:
        """Keep a (validated) anchors message for the frame at its pts; the oldest go first."""
        self._anchors.append(message)

    def take_anchors(self, pts: int) -> AnchorsMessage | None:
        """The buffered anchors nearest the frame at ``pts`` (within ``max_gap_s``); older ones are dropped."""
        t = pts / VIDEO_CLOCK_RATE
        while self._anchors and self._anchors[0].time_s < t - self.max_gap_s:
            self._anchors.popleft()
        if not self._anchors:
            return None
        nearest = min(self._anchors, key=lambda m: abs(m.time_s - t))
        return nearest if abs(nearest.time_s - t) <= self.max_gap_s else None

    # ---------------------------------------------------------------- executor

    def frame(
        self,
        output: NDArray[np.float32],
        depth_kind: DepthKind,
        camera: CameraMessage,
        pts: int,
        pose: FramePose | None,
        anchors: AnchorsMessage | None,
    ) -> FrameScale | None:
        """The scale of one frame of model ``output`` (``depth_kind``'s); None with ``--scale off``.

        ``camera`` is the frame's; ``output`` may be on a strided depth grid (see
        :func:`~gateway.pipeline.depth_grid_camera`), and ``metric_depth`` is on the same grid.
        """
        if self.mode == "off":
            return None
        if depth_kind != self._depth_kind:  # a new model: what was learnt about the old one does not apply
            self._depth_kind = depth_kind
            self._estimator = None
            self.last_check = None
        time_s = pts / VIDEO_CLOCK_RATE
        if depth_kind == "relative":
            result = self._relative(output, camera, time_s, pose, anchors)
        else:
            result = self._metric(output, camera, time_s, pose, anchors)
        self.last_scale = result.scale
        return result

    def _relative(
        self,
        disparity: NDArray[np.float32],
        camera: CameraMessage,
        time_s: float,
        pose: FramePose | None,
        anchors: AnchorsMessage | None,
    ) -> FrameScale:
        if self.mode != "auto":
            return FrameScale(None, Scale.unscaled(), None)
        estimate = self._update(_samples(disparity, camera, pose, anchors), time_s, fit_shift=True)
        if not estimate.trusted:
            return FrameScale(None, Scale.unscaled(), None)
        metric = _bounded(estimate.metric_depth(disparity))
        # What relative_depth calls invalid (sky, far background) stays invalid in metres.
        metric[np.isnan(relative_depth(disparity, self.min_disparity))] = np.nan
        return FrameScale(metric, estimate.scale, None)

    def _metric(
        self,
        depth: NDArray[np.float32],
        camera: CameraMessage,
        time_s: float,
        pose: FramePose | None,
        anchors: AnchorsMessage | None,
    ) -> FrameScale:
        inverse = _inverse(depth)
        samples = _samples(inverse, camera, pose, anchors)
        if len(samples):
            check = check_metric_scale(samples, self._config)
            if check is not None:
                self.last_check = check
        if not self.correct:
            return FrameScale(None, Scale.unscaled(), self.last_check)
        estimate = self._update(samples, time_s, fit_shift=False)
        if not estimate.trusted:
            return FrameScale(None, Scale.unscaled(), self.last_check)
        return FrameScale(_bounded(estimate.metric_depth(inverse)), estimate.scale, self.last_check)

    def _update(self, samples: AnchorSamples, time_s: float, *, fit_shift: bool) -> ScaleEstimate:
        """Fold the frame's anchors into the estimator (held without any) and return the estimate now."""
        if self._estimator is None:
            self._estimator = ScaleEstimator(dataclasses.replace(self._config, fit_shift=fit_shift))
        if len(samples):
            return self._estimator.update(samples, time_s)
        return self._estimator.estimate(time_s)


def _bounded(metric: NDArray[np.float32]) -> NDArray[np.float32]:
    """NaN beyond :data:`MAX_ANCHOR_DEPTH_M`: a tiny ``a·d + b`` (sky) is no measurement of 10 km."""
    with np.errstate(invalid="ignore"):
        metric[metric > MAX_ANCHOR_DEPTH_M] = np.nan
    return metric


def _inverse(depth: NDArray[np.float32]) -> NDArray[np.float32]:
    """``1 / depth`` of a metric model, NaN where the depth is not finite and positive."""
    depth = np.asarray(depth, dtype=np.float32)
    out = np.full(depth.shape, np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        np.divide(np.float32(1.0), depth, out=out, where=np.isfinite(depth) & (depth > 0))
    return out


def _samples(
    disparity: NDArray[np.float32], camera: CameraMessage, pose: FramePose | None, anchors: AnchorsMessage | None
) -> AnchorSamples:
    """The frame's anchors: ground candidates (pose with a height above ground) and the drone's."""
    depth_camera = depth_grid_camera(camera, disparity.shape)
    samples = AnchorSamples.empty()
    height = None if pose is None else pose.body.height_above_ground_m
    if pose is not None and height is not None and height > 0:  # 0: the rangefinder saw nothing
        try:
            ground = ground_from_pose(pose.body.world_from_body, camera.body_from_camera, height)
        except ValueError:  # the camera hangs below the ground the rangefinder measured: no plane to use
            ground = None
        if ground is not None:
            samples = ground_samples(disparity, ground_grid(ray_grid(depth_camera)), ground)
    if anchors is not None:
        samples = samples + drone_samples(disparity, anchors, camera)
    return samples
