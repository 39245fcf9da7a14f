"""Section 1: where a 640×480 frame's time goes, from the drone's camera to its 3D keypoints.

Sources, all from one streamed run after the warm-up:

- the gateway's own ``timing`` (ms) in every keypoints message: ``queue`` (waiting in the
  newest-frame slot), ``convert`` (decoded frame → RGB), ``inference`` (the Triton request as the
  gateway's async gRPC client sees it), ``projection``, ``keypoints``, ``pointcloud``,
  ``processing`` and ``total`` (drain → message handed to the data channel);
- Triton's statistics over the same window, per request: queue, compute_input, compute_infer,
  compute_output; the client's mean request time minus the server's is the gRPC transfer and
  (de)serialisation (Triton keeps sums, not percentiles, so these are means);
- aiortc's VP8 encoder (drone) and decoder (gateway) calls, timed in process;
- per frame, on one clock (drone and gateway share this process): capture → arrival at the
  gateway (encode, RTP, jitter buffer, decode), and the send back (result on the data channel
  → the drone's callback) = glass-to-result − arrival − gateway total.

aiortc's ``JitterBuffer`` hands a video frame to the decoder only when the first
packet of the *next* frame arrives, so every frame waits one frame interval
(1/fps) at the gateway's door: that row is derived, not measured (at 5, 15 and
30 fps the measured capture → gateway medians move with it).
"""

from __future__ import annotations

from typing import Any

from dronedepth.benchmarks.stats import summarize
from dronedepth.benchmarks.stream import PipelineRun

__all__ = ["stage_rows", "stages_section"]

_GATEWAY_STAGES = (
    ("queue", "queue wait (newest-frame slot)"),
    ("convert", "convert (decoded frame → RGB)"),
    ("inference", "Triton request (gateway's gRPC client)"),
    ("projection", "projection (depth → points)"),
    ("detection", "keypoint detection (ORB; during the Triton request)"),
    ("keypoints", "keypoints (lift to 3D)"),
    ("pointcloud", "point cloud (Open3D)"),
)


def _row(stage: str, where: str, values: list[float], note: str = "") -> dict[str, Any]:
    summary = summarize(values)
    row: dict[str, Any] = {"stage": stage, "where": where, "note": note}
    row.update(summary.to_dict() if summary else {"n": 0})
    return row


def _mean_row(stage: str, where: str, mean: float | None, n: int, note: str) -> dict[str, Any]:
    return {"stage": stage, "where": where, "note": note, "n": n, "mean": None if mean is None else round(mean, 3)}


def stage_rows(run: PipelineRun) -> list[dict[str, Any]]:
    """One row per stage, in pipeline order (percentiles where per-frame samples exist, else means)."""
    measured = run.fleet.measured()
    timing = {
        key: [r.timing[key] for r in measured if key in r.timing]
        for key in (
            "queue",
            "convert",
            "inference",
            "projection",
            "detection",
            "keypoints",
            "pointcloud",
            "processing",
            "total",
        )
    }
    fps = next(iter(run.fleet.summaries.values()), {}).get("fps")
    arrival, send = [], []
    for r in measured:
        at = run.arrivals.get((r.drone, r.pts))
        if at is None or "total" not in r.timing:
            continue
        arrival.append((at - r.captured) * 1e3)
        send.append(r.latency_ms - (at - r.captured) * 1e3 - r.timing["total"])
    rows = [
        _row("encode (VP8, all frames sent)", "drone", run.encode_ms, "aiortc encoder calls"),
        _row("capture → gateway (encode, RTP, jitter buffer, decode)", "network", arrival),
        _mean_row(
            "  of which: frame held by aiortc's jitter buffer",
            "gateway",
            1e3 / fps if fps else None,
            len(arrival),
            "1/fps: a frame is released when the next frame's first packet arrives",
        ),
        _row(
            "decode (VP8, all frames received)", "gateway", run.decode_ms, "aiortc decoder calls, inside the row above"
        ),
    ]
    for key, label in _GATEWAY_STAGES[:3]:
        rows.append(_row(label, "gateway", timing[key]))
    triton = run.triton
    n = int(triton.get("requests", 0))
    client_summary = summarize(timing["inference"])
    client_mean = client_summary.mean if client_summary else None
    server = triton.get("server_request_ms")
    if server is not None:
        for part, label in (
            ("queue_ms", "  Triton queue (dynamic batcher)"),
            ("compute_input_ms", "  Triton compute_input (tensor in)"),
            ("compute_infer_ms", "  Triton compute_infer (model: Python backend + ONNX Runtime)"),
            ("compute_output_ms", "  Triton compute_output (tensor out)"),
        ):
            rows.append(_mean_row(label, "triton", triton.get(part), n, "mean per request (Triton statistics)"))
        transfer = None if client_mean is None else client_mean - server
        rows.append(
            _mean_row(
                "  gRPC transfer + (de)serialisation",
                "gateway↔triton",
                transfer,
                n,
                "client mean − Triton's request mean",
            )
        )
    for key, label in _GATEWAY_STAGES[3:]:
        rows.append(_row(label, "gateway", timing[key]))
    other = [
        r.timing["processing"] - sum(r.timing.get(k, 0.0) for k in ("projection", "keypoints", "pointcloud"))
        for r in measured
        if "processing" in r.timing
    ]
    rows.append(_row("other processing (message encoding, hand-offs)", "gateway", other))
    rows.append(_row("gateway total (frame drained → result sent)", "gateway", timing["total"]))
    rows.append(_row("send (data channel → drone)", "network", send, "glass-to-result − arrival − gateway total"))
    rows.append(_row("glass-to-result (drone)", "end to end", [r.latency_ms for r in measured]))
    return rows


def stages_section(run: PipelineRun) -> dict[str, Any]:
    measured = run.fleet.measured()
    drone = next(iter(run.fleet.summaries.values()), {})
    return {
        "rows": stage_rows(run),
        "results_measured": len(measured),
        "results_total": len(run.fleet.results),
        "frames_sent": drone.get("frames_sent"),
        "result_rate_fps": run.fleet.aggregate_rate(),
        "triton_window": {k: round(v, 3) for k, v in run.triton.items()},
        "gateway_counts": run.counts,
        "processing": run.processing,
        "drone": drone,
        "latency_series": [
            (round(r.captured - run.fleet.started, 3), round(r.latency_ms, 2)) for r in run.fleet.results
        ],
    }
