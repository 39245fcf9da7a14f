"""Metric scale of depth from anchors: a robust per-frame fit, filtered over time. Pure numpy, no I/O.

The model's output ``d`` (a relative model's affine-invariant disparity, or
``1 / depth`` of a metric model) maps to metric inverse depth by
``1 / Z = a · d + b``. The fit is done in inverse-depth space, not depth
space, where far points would dominate (NOTES: VI-Depth, Marigold), and on the
**relative** residual ``r = (a · d + b) · Z − 1``, so near and far anchors
weigh alike and ``r`` is about the relative depth error.

Per frame (:func:`fit_inverse_depth`): MSAC (RANSAC scored with a truncated
square loss) over 2-anchor hypotheses (1-anchor for ``b = 0``), then a few
rounds of weighted least squares on the inliers. The drone's anchors weigh
:attr:`ScaleConfig.drone_anchor_weight` ground candidates each.

Over time (:class:`ScaleEstimator`): a Kalman filter on ``(a, b)`` with a
random-walk model (the model's scale drifts slowly as the scene changes), fed
the frame's fit as the measurement. Its covariance holds the fit's statistical
error plus a **common-mode** part, the relative error every anchor of a frame
shares (height above ground, attitude), which no number of anchors averages
away but the filter does across frames: that is what removes flicker.

Without anchors nothing is claimed: the estimate's source is ``model`` and it
is not trusted. Without new anchors the estimate is held while its confidence
decays, and stops being trusted (stale, never lying) below
:attr:`ScaleConfig.trust_threshold`.

:func:`check_metric_scale` measures a **metric** model's scale error from the
same anchors; :class:`ScaleEstimator` with ``fit_shift=False`` gives the
filtered correction to apply (``--scale-correct``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from dronedepth.gateway.anchors import AnchorSamples
from dronedepth.protocol import Scale, ScaleCheck, ScaleSource

__all__ = [
    "InverseDepthFit",
    "ScaleCheck",
    "ScaleConfig",
    "ScaleEstimate",
    "ScaleEstimator",
    "check_metric_scale",
    "fit_inverse_depth",
]

_MIN_RESIDUAL: Final = 0.005
"""Floor of a fit's residual in its covariance: noiseless anchors must not make the filter deaf."""
_REFINE_ROUNDS: Final = 3


@dataclass(frozen=True, slots=True)
class ScaleConfig:
    """The estimator's settings; residuals and drifts are relative (unitless), times in seconds."""

    fit_shift: bool = True
    """Fit ``b`` (relative models); False fits the scale alone (``b = 0``: checking a metric model)."""
    inlier_threshold: float = 0.08
    """Largest relative residual of an inlier."""
    hypotheses: int = 64
    """RANSAC hypotheses per frame."""
    drone_anchor_weight: float = 10.0
    """How many ground candidates one drone anchor counts for (measured, not inferred from a plane)."""
    min_support: float = 20.0
    """Least weighted inlier count for a frame's fit to be used."""
    full_support: float = 300.0
    """Weighted inlier count that earns full confidence from support."""
    residual_scale: float = 0.1
    """Residual at which the fit's confidence falls to 1/e."""
    drift_per_sqrt_s: float = 0.05
    """Random walk of ``a`` and ``b``, relative per √s: how fast the model's scale may change."""
    common_mode: float = 0.02
    """Relative error shared by all anchors of a frame (rangefinder noise, attitude error)."""
    hold_s: float = 3.0
    """Without a new fit, confidence falls e-fold every ``hold_s``."""
    trust_threshold: float = 0.3
    """Least confidence at which the estimate counts as metric."""
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("inlier_threshold", "drone_anchor_weight", "full_support", "residual_scale", "hold_s")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"scale config: {name} must be finite and > 0, got {value!r}")
        for name in ("min_support", "drift_per_sqrt_s", "common_mode"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"scale config: {name} must be finite and ≥ 0, got {value!r}")
        if self.hypotheses < 1:
            raise ValueError(f"scale config: hypotheses must be ≥ 1, got {self.hypotheses}")
        if not 0 < self.trust_threshold <= 1:
            raise ValueError(f"scale config: trust_threshold must be in (0, 1], got {self.trust_threshold!r}")


@dataclass(frozen=True, slots=True)
class InverseDepthFit:
    """One frame's robust fit of ``1 / Z = a · d + b``.

    ``params`` is ``(a, b)`` (or ``(a,)`` when ``b`` is fixed at 0) with
    covariance ``covariance``; ``inliers`` masks the samples; ``support`` is
    their weighted count, ``residual`` their RMS relative residual and
    ``inverse_depth_scale`` their median inverse depth (1/m), the natural
    scale of ``b``.
    """

    params: NDArray[np.float64]
    covariance: NDArray[np.float64]
    inliers: NDArray[np.bool_]
    support: float
    residual: float
    inverse_depth_scale: float
    drone_inliers: int

    @property
    def a(self) -> float:
        return float(self.params[0])

    @property
    def b(self) -> float:
        return float(self.params[1]) if len(self.params) > 1 else 0.0


def fit_inverse_depth(samples: AnchorSamples, config: ScaleConfig, rng: np.random.Generator) -> InverseDepthFit | None:
    """MSAC then weighted least squares of ``1 / Z = a · d + b``; None without enough consistent anchors."""
    k = 2 if config.fit_shift else 1
    if len(samples) < k:
        return None
    # Relative residual r = a·p + b·q − 1 with p = d·Z, q = Z: linear in (a, b).
    z = 1.0 / samples.inverse_depth
    design = np.stack([samples.disparity * z, z], axis=1)[:, :k]
    weight = np.where(samples.from_drone, config.drone_anchor_weight, 1.0)

    picks = rng.choice(len(samples), size=(config.hypotheses, k), p=weight / weight.sum())
    if k == 2:
        (p1, q1), (p2, q2) = design[picks[:, 0]].T, design[picks[:, 1]].T
        det = p1 * q2 - p2 * q1
        ok = np.abs(det) > 1e-12 * np.abs(p1 * q2) + 1e-300
        det = np.where(ok, det, 1.0)
        hypotheses = np.stack([(q2 - q1) / det, (p1 - p2) / det], axis=1)[ok]
    else:
        hypotheses = 1.0 / design[picks[:, 0]]
    hypotheses = hypotheses[hypotheses[:, 0] > 0]
    if len(hypotheses) == 0:
        return None
    residuals = hypotheses @ design.T - 1.0
    cost = np.minimum(residuals * residuals, config.inlier_threshold**2) @ weight
    params = hypotheses[int(np.argmin(cost))]

    for _ in range(_REFINE_ROUNDS):
        inliers = np.abs(design @ params - 1.0) <= config.inlier_threshold
        if weight[inliers].sum() < max(config.min_support, k):
            return None
        w_design = design[inliers] * weight[inliers, None]
        information = w_design.T @ design[inliers]
        if np.linalg.cond(information) > 1e12:
            return None  # all inliers at one depth: a and b cannot be told apart
        params = np.linalg.solve(information, w_design.sum(axis=0))
        if params[0] <= 0:
            return None
    r = design @ params - 1.0
    inliers = np.abs(r) <= config.inlier_threshold
    support = float(weight[inliers].sum())
    if support < max(config.min_support, k):
        return None
    residual = math.sqrt(float(weight[inliers] @ (r[inliers] ** 2)) / support)
    sigma2 = max(residual, _MIN_RESIDUAL) ** 2
    w_design = design[inliers] * weight[inliers, None]
    covariance = sigma2 * np.linalg.inv(w_design.T @ design[inliers])
    return InverseDepthFit(
        params=params,
        covariance=covariance,
        inliers=inliers,
        support=support,
        residual=residual,
        inverse_depth_scale=float(np.median(samples.inverse_depth[inliers])),
        drone_inliers=int(np.count_nonzero(inliers & samples.from_drone)),
    )


@dataclass(frozen=True, slots=True)
class ScaleEstimate:
    """The scale of a drone's depth at ``time_s`` (video clock, seconds): the wire ``scale`` and whether
    it is ``trusted`` now (metric: anchored, confident and fresh)."""

    scale: Scale
    trusted: bool
    time_s: float

    def metric_depth(self, output: NDArray[np.floating]) -> NDArray[np.float32]:
        """Z-depth in metres, ``1 / (a · d + b)``; NaN where that is not positive. Only for a trusted estimate."""
        if not self.trusted:
            raise ValueError(
                f"the scale is not trusted (source {self.scale.source}, confidence {self.scale.confidence:.2f}): "
                "the depth has no metric scale"
            )
        inverse = np.asarray(output, dtype=np.float32) * np.float32(self.scale.a) + np.float32(self.scale.b)
        with np.errstate(divide="ignore"):
            return np.where(inverse > 0, 1.0 / inverse, np.nan).astype(np.float32)


class ScaleEstimator:
    """One drone's scale over time: feed :meth:`update` each frame's anchors, in time order."""

    def __init__(self, config: ScaleConfig | None = None) -> None:
        self.config = config or ScaleConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self._state: NDArray[np.float64] | None = None
        self._covariance = np.zeros((0, 0))
        self._inverse_depth_scale = 0.0
        self._time_s = 0.0
        self._fit_confidence = 0.0
        self._source: ScaleSource = "model"
        self._residual = 0.0
        self._anchors_used = 0

    def update(self, samples: AnchorSamples, time_s: float) -> ScaleEstimate:
        """Fit this frame's anchors and fold the fit into the filter; without a usable fit, the held estimate."""
        fit = fit_inverse_depth(samples, self.config, self._rng)
        if fit is None:
            return self.estimate(time_s)
        natural = np.array([fit.a, fit.inverse_depth_scale])[: len(fit.params)]
        measurement_cov = fit.covariance + self.config.common_mode**2 * np.diag(natural**2)
        if self._state is None:
            self._state, self._covariance = fit.params.copy(), measurement_cov
        else:
            self._predict(time_s)
            gain = self._covariance @ np.linalg.inv(self._covariance + measurement_cov)
            self._state = self._state + gain @ (fit.params - self._state)
            self._covariance = (np.eye(len(self._state)) - gain) @ self._covariance
        if self._state[0] <= 0:  # the filter crossed into nonsense: restart from this frame's fit
            self._state, self._covariance = fit.params.copy(), measurement_cov
        self._time_s = time_s
        self._inverse_depth_scale = fit.inverse_depth_scale
        self._source = "anchors" if fit.drone_inliers else "ground"
        self._residual = fit.residual
        self._anchors_used = int(np.count_nonzero(fit.inliers))
        support = min(1.0, fit.support / self.config.full_support)
        self._fit_confidence = support * math.exp(-fit.residual / self.config.residual_scale)
        return self.estimate(time_s)

    def _predict(self, time_s: float) -> None:
        assert self._state is not None
        dt = max(0.0, time_s - self._time_s)
        natural = np.array([self._state[0], self._inverse_depth_scale])[: len(self._state)]
        self._covariance = self._covariance + dt * self.config.drift_per_sqrt_s**2 * np.diag(natural**2)

    def estimate(self, time_s: float) -> ScaleEstimate:
        """The estimate at ``time_s`` without new anchors: held, its confidence decayed by the time since the fit."""
        if self._state is None:
            return ScaleEstimate(Scale.unscaled(), trusted=False, time_s=time_s)
        age = max(0.0, time_s - self._time_s)
        confidence = self._fit_confidence * math.exp(-age / self.config.hold_s)
        scale = Scale(
            source=self._source,
            a=float(self._state[0]),
            b=float(self._state[1]) if len(self._state) > 1 else 0.0,
            residual=self._residual,
            confidence=confidence,
            anchors_used=self._anchors_used,
        )
        return ScaleEstimate(scale, trusted=confidence >= self.config.trust_threshold, time_s=time_s)


def check_metric_scale(samples: AnchorSamples, config: ScaleConfig | None = None) -> ScaleCheck | None:
    """How far a metric model's scale is off; ``samples.disparity`` must be ``1 / model depth``.

    The inliers of a scale-only robust fit (``b = 0``: a metric model has no
    shift to recover) give the ratio as their median; None without enough
    consistent anchors.
    """
    scale_only = dataclasses.replace(config or ScaleConfig(), fit_shift=False)
    fit = fit_inverse_depth(samples, scale_only, np.random.default_rng(scale_only.seed))
    if fit is None:
        return None
    ratios = samples.disparity[fit.inliers] / samples.inverse_depth[fit.inliers]
    return ScaleCheck(
        ratio=float(np.median(ratios)), residual=fit.residual, anchors_used=int(np.count_nonzero(fit.inliers))
    )
