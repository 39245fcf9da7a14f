"""Flicker (TAE) of depth sequences, and the scale filter's effect on it."""

from __future__ import annotations

import numpy as np
import pytest
from scale_fixtures import FPS, Flight

from dronedepth.gateway.anchors import ground_grid, ground_samples
from dronedepth.gateway.flicker import temporal_alignment_error
from dronedepth.gateway.projection import ray_grid
from dronedepth.gateway.scale import ScaleConfig, ScaleEstimator

FRAMES = 12


def _static_scene() -> tuple[Flight, list[np.ndarray], list]:
    flight = Flight(altitude_m=12.0, pitch_deg=35.0, speed_m_s=3.0)
    times = [i / FPS for i in range(FRAMES)]
    return flight, [flight.true_depth(t) for t in times], [flight.world_from_camera(t) for t in times]


def test_consistent_depth_has_no_flicker_and_scale_jitter_shows() -> None:
    flight, depths, poses = _static_scene()
    exact = temporal_alignment_error(depths, poses, flight.camera)
    assert exact < 0.01  # only the nearest-pixel rounding of the reprojection
    jitter = [d * (1.05 if i % 2 else 0.95) for i, d in enumerate(depths)]
    assert temporal_alignment_error(jitter, poses, flight.camera) == pytest.approx(0.1, rel=0.15)


def test_relative_depth_is_aligned_once_to_the_references() -> None:
    flight, depths, poses = _static_scene()
    relative = [1.0 / (0.3 / d + 0.02) for d in depths]  # an affine map of inverse depth: one alignment undoes it
    assert temporal_alignment_error(relative, poses, flight.camera, references=depths) < 0.01
    # One alignment for the whole sequence: a per-frame change of scale stays flicker.
    jitter = [r * (1.05 if i % 2 else 0.95) for i, r in enumerate(relative)]
    assert temporal_alignment_error(jitter, poses, flight.camera, references=depths) > 0.05
    with pytest.raises(ValueError, match="one pose per depth map and at least 2 frames"):
        temporal_alignment_error(depths[:3], poses[:2], flight.camera)


def _metric_sequence(config: ScaleConfig) -> float:
    """TAE of the metric depth a relative model's output gets from the estimator on a noisy rangefinder."""
    flight = Flight(
        altitude_m=12.0,
        pitch_deg=35.0,
        speed_m_s=3.0,
        model_noise=0.005,
        outlier_fraction=0.0,
        height_noise=0.03,
        seed=7,
    )
    grid = ground_grid(ray_grid(flight.camera))
    estimator = ScaleEstimator(config)
    depths, poses = [], []
    for i in range(30):
        t = i / FPS
        truth = flight.true_depth(t)
        output, _ = flight.relative_output(truth, t)
        estimate = estimator.update(ground_samples(output, grid, flight.sensed_ground(t)), t)
        if i >= 10:  # both settled
            depths.append(estimate.metric_depth(output))
            poses.append(flight.world_from_camera(t))
    return temporal_alignment_error(depths, poses, flight.camera)


def test_the_filter_reduces_flicker() -> None:
    filtered = _metric_sequence(ScaleConfig())
    per_frame = _metric_sequence(ScaleConfig(drift_per_sqrt_s=1e3))  # the filter follows each frame's fit
    assert filtered < 0.8 * per_frame
