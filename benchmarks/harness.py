"""What the benchmark sections share: the settings, the model, the frames, Triton and the probes.

- :class:`BenchConfig`: one validated record of what a run measures;
- :func:`prepare_model`: reuse ``--model-repository`` or export (once, cached under ``--out``);
- :func:`load_frames`: the same 640×480 frames for every contender (the shared photos, else the
  synthetic scene the simulated drones fly);
- :class:`TritonStats`: Triton's own per-model statistics, read before and after a window;
- :class:`CodecTimer`: times aiortc's video encoder and decoder calls in this process;
- :class:`ResourceSampler`: CPU and memory of processes, sampled on a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dronedepth.benchmarks.sections import SECTIONS
from dronedepth.contract import DEFAULT_INPUT_SIZE, MODEL_NAME
from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.protocol import CameraMessage
from dronedepth.samples import SAMPLE_DIR

__all__ = [
    "FRAME_HEIGHT",
    "FRAME_WIDTH",
    "PHOTOS",
    "BenchConfig",
    "CodecTimer",
    "Frames",
    "ModelSetup",
    "ResourceSampler",
    "TritonStats",
    "bench_camera",
    "load_frames",
    "prepare_model",
]

log = logging.getLogger("dronedepth.benchmarks")

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
PHOTOS = SAMPLE_DIR
HFOV_DEG = 60.0
"""The shared photos come without calibration: the benchmark assumes this horizontal field of view."""
QUICK_INPUT_SIZE = 154


@dataclass(frozen=True)
class BenchConfig:
    """What one ``dronedepth bench`` run measures; validates itself."""

    out: Path
    sections: tuple[str, ...] = SECTIONS
    quick: bool = False
    encoder: str = "vits"
    input_size: int = DEFAULT_INPUT_SIZE
    model_repository: Path | None = None
    duration_s: float = 60.0
    """Length of the streamed runs (the stage run and each scaling step)."""
    warmup_s: float = 5.0
    """Results of frames captured in the first ``warmup_s`` seconds of a stream are left out."""
    frames: int = 30
    """Frames timed for bare ONNX Runtime (and, capped, for the naive baseline) after the warm-up."""
    warmup_frames: int = 3
    drones: tuple[int, ...] = (1, 2, 4, 8)
    fps: float = 15.0
    threads: int = 0
    """ONNX Runtime (and PyTorch) threads; 0: the usable cores, as the embedded Triton uses."""
    queue_timeout_ms: float = 0.0
    """Replaces the exported Triton queue timeout; 0: none (each drone has at most one request in flight)."""
    max_in_flight: int | None = None
    """The gateway's ``--max-in-flight`` in the scaling section; None: the gateway's default (auto)."""
    photos: Path = PHOTOS

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown or not self.sections:
            raise ConfigError(f"--only takes a comma list of {', '.join(SECTIONS)}; got {','.join(self.sections)!r}")
        if self.input_size % 14 or self.input_size < 14:
            raise ConfigError(f"--input-size must be a positive multiple of 14, got {self.input_size}")
        if not self.duration_s > 0 or not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(
                f"--duration ({self.duration_s}) must be positive and longer than the warm-up ({self.warmup_s} s)"
            )
        if self.frames < 1 or self.warmup_frames < 0:
            raise ConfigError(f"frames must be positive, got {self.frames}")
        if not self.drones or any(n < 1 for n in self.drones):
            raise ConfigError(f"--drones must be positive counts, got {self.drones}")
        if not 0 < self.fps <= 120:
            raise ConfigError(f"--fps must be within (0, 120], got {self.fps}")
        if self.threads < 0 or self.queue_timeout_ms < 0:
            raise ConfigError("--threads and --queue-timeout-ms must not be negative")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")

    def wants(self, *sections: str) -> bool:
        return any(s in self.sections for s in sections)

    @property
    def thread_count(self) -> int:
        from dronedepth.serving.repository import usable_cpus

        return self.threads or usable_cpus()


# ------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelSetup:
    """The model every contender runs: the Triton repository, its ONNX file and facts."""

    repository: Path
    onnx_path: Path
    facts: dict[str, Any]
    exported_here: bool
    export_s: float | None

    def describe(self) -> str:
        f = self.facts
        kind = "metric (metres)" if f.get("depth_kind") == "metric" else "relative (disparity)"
        rnd = ", RANDOM-INIT weights (timing only: the depth is meaningless)" if f.get("random_init") else ""
        return (
            f"Depth Anything V2 {f.get('encoder')}, {kind}, {f.get('precision')}, input size {f.get('input_size')}, "
            f"weights: {f.get('weight_source')}{rnd}"
        )


def _facts_dict(model_dir: Path) -> dict[str, Any]:
    from dronedepth.export.repository import read_model_facts

    facts = read_model_facts(model_dir)
    return {k: getattr(facts, k) for k in facts.__dataclass_fields__}


def prepare_model(config: BenchConfig) -> ModelSetup:
    """The model to benchmark: ``--model-repository`` as is, else a random-init export cached under ``--out``."""
    if config.model_repository is not None:
        model_dir = config.model_repository / MODEL_NAME
        onnx_path = model_dir / "1" / "model.onnx"
        if not onnx_path.is_file():
            raise ConfigError(
                f"{config.model_repository} has no {MODEL_NAME}/1/model.onnx: the CPU benchmarks need the ONNX model "
                "(export one with 'dronedepth export --out DIR')"
            )
        facts = _facts_dict(model_dir)
        if facts["input_size"] != config.input_size:
            log.info("using the repository's input size %s (not %s)", facts["input_size"], config.input_size)
        return ModelSetup(config.model_repository, onnx_path, facts, False, None)

    repository = config.out / "model_repository"
    model_dir = repository / MODEL_NAME
    onnx_path = model_dir / "1" / "model.onnx"
    stamp = repository / ".bench-source.json"
    wanted = {"random_init": True, "encoder": config.encoder, "input_size": config.input_size, "seed": 0}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and onnx_path.is_file():
        log.info("reusing the benchmark model exported earlier (%s)", model_dir)
        return ModelSetup(repository, onnx_path, _facts_dict(model_dir), False, None)
    log.info(
        "exporting a random-init %s at input size %d (parity is checked by the baseline section)",
        config.encoder,
        config.input_size,
    )
    started = time.perf_counter()
    export_random_init(config.encoder, config.input_size, repository)
    stamp.write_text(json.dumps(wanted))
    return ModelSetup(repository, onnx_path, _facts_dict(model_dir), True, time.perf_counter() - started)


def export_random_init(encoder: str, input_size: int, out: Path, extra: list[str] | None = None) -> Path:
    """``dronedepth export --random-init`` into ``out`` (a subprocess: torch stays out of this process)."""
    command = [
        sys.executable, "-m", "dronedepth.cli", "export", "--random-init", "--encoder", encoder,
        "--input-size", str(input_size), "--skip-parity", "--out", str(out), *(extra or []),
    ]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise DroneDepthError(f"the export failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return out


# ------------------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class Frames:
    """The frames every contender gets, and the drone ``--source`` that streams the same pictures."""

    rgb: list[NDArray[np.uint8]]
    source: str
    """A folder of photos, or ``synthetic``."""
    description: str
    camera: CameraMessage
    """The intrinsics the drones send with these frames."""


def bench_camera(width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, hfov_deg: float = HFOV_DEG) -> CameraMessage:
    fx = width / 2 / math.tan(math.radians(hfov_deg) / 2)
    return CameraMessage(width, height, fx, fx, (width - 1) / 2, (height - 1) / 2)


def load_frames(photos: Path = PHOTOS, count: int = 8) -> Frames:
    """640×480 RGB frames made the way the drone makes them (OpenCV INTER_AREA resize, BGR→RGB)."""
    import cv2

    files = sorted(photos.glob("*.jpg")) if photos.is_dir() else []
    if files:
        frames = []
        for path in files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            bgr = cv2.resize(bgr, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)
            frames.append(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8))
        if frames:
            description = f"{len(frames)} photos from {photos} resized to 640x480 (assumed {HFOV_DEG:g}° HFOV)"
            return Frames(frames, str(photos), description, bench_camera())
    log.info("no photos in %s: using the synthetic scene", photos)
    from dronedepth.drone.sources import SyntheticSource

    source = SyntheticSource(FRAME_WIDTH, FRAME_HEIGHT)
    frames = [source.read().rgb for _ in range(count)]
    assert source.intrinsics is not None
    description = f"{count} frames of the synthetic scene (no photos in {photos})"
    return Frames(frames, "synthetic", description, source.intrinsics)


# ------------------------------------------------------------------------------------------ Triton


class TritonStats:
    """Triton's cumulative statistics of one model; :meth:`delta` gives ms per request over a window."""

    PARTS = ("queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self, url: str, model: str = MODEL_NAME) -> None:
        self.url = url
        self.model = model

    def snapshot(self) -> dict[str, int]:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(self.url) as client:
            stats = client.get_inference_statistics(self.model).model_stats[0]
        inference = stats.inference_stats
        out = {
            "requests": int(inference.success.count),
            "request_ns": int(inference.success.ns),
            "failures": int(inference.fail.count),
            "inferences": int(stats.inference_count),
            "executions": int(stats.execution_count),
        }
        for part in self.PARTS:
            out[f"{part}_ns"] = int(getattr(inference, part).ns)
        return out

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
        """Per successful request over the window: server time and its parts (ms), frames per execution."""
        requests = after["requests"] - before["requests"]
        out: dict[str, float] = {
            "requests": float(requests),
            "failures": float(after["failures"] - before["failures"]),
        }
        if requests <= 0:
            return out
        out["server_request_ms"] = (after["request_ns"] - before["request_ns"]) / requests / 1e6
        for part in TritonStats.PARTS:
            out[f"{part}_ms"] = (after[f"{part}_ns"] - before[f"{part}_ns"]) / requests / 1e6
        executions = after["executions"] - before["executions"]
        out["frames_per_execution"] = (after["inferences"] - before["inferences"]) / max(executions, 1)
        return out

    def server_version(self) -> str | None:
        import tritonclient.grpc as grpcclient

        try:
            with grpcclient.InferenceServerClient(self.url) as client:
                return str(client.get_server_metadata().version)
        except Exception as exc:  # a version is nice to have, never a reason to fail
            log.debug("no server metadata: %s", exc)
            return None


# ------------------------------------------------------------------------------------------- probes


class CodecTimer:
    """Times every aiortc video ``encode``/``decode`` call in this process (wall ms), while active.

    Wraps the codec classes' methods (VP8 and H.264) and restores them on exit;
    aiortc looks the method up on each call, so running sessions are timed too.
    """

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {"encode": [], "decode": []}
        """kind -> (monotonic end time, ms) per call."""
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self) -> Iterator[CodecTimer]:
        from aiortc.codecs import h264, vpx

        patched: list[tuple[type, str, Any]] = []
        for cls, name, kind in (
            (vpx.Vp8Encoder, "encode", "encode"),
            (vpx.Vp8Decoder, "decode", "decode"),
            (h264.H264Encoder, "encode", "encode"),
            (h264.H264Decoder, "decode", "decode"),
        ):
            original = cls.__dict__[name]
            setattr(cls, name, self._wrap(original, kind))
            patched.append((cls, name, original))
        try:
            yield self
        finally:
            for owner, method_name, original in patched:
                setattr(owner, method_name, original)

    def _wrap(self, method: Any, kind: str) -> Any:
        samples, lock = self.samples[kind], self._lock

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                end = time.monotonic()
                with lock:
                    samples.append((end, (time.perf_counter() - start) * 1e3))

        return timed

    def between(self, kind: str, start: float, end: float) -> list[float]:
        """Durations (ms) of the calls of ``kind`` that ended between two ``time.monotonic()`` instants."""
        with self._lock:
            return [ms for t, ms in self.samples[kind] if start <= t <= end]


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)


class ResourceSampler:
    """CPU (% of one core) and resident memory of named processes, sampled every ``interval`` s."""

    def __init__(self, processes: dict[str, tuple[int, bool]], interval: float = 1.0) -> None:
        """``processes``: name -> (pid, whether its children count too)."""
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.series: dict[str, _Series] = {name: _Series() for name in processes}
        self._roots = {name: (psutil.Process(pid), children) for name, (pid, children) in processes.items()}
        self._known: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-resources", daemon=True)
        self._started = time.monotonic()

    def _tree(self, root: Any, children: bool) -> list[Any]:
        try:
            procs = [root, *root.children(recursive=True)] if children else [root]
        except self._psutil.NoSuchProcess:
            return []
        out = []
        for proc in procs:
            # Keep one Process object per pid: cpu_percent() measures since that object's last call.
            out.append(self._known.setdefault(proc.pid, proc))
        return out

    def _sample(self, prime: bool = False) -> None:
        now = time.monotonic() - self._started
        for name, (root, children) in self._roots.items():
            cpu = rss = 0.0
            for proc in self._tree(root, children):
                try:
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss / 2**20
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    continue
            if not prime:
                series = self.series[name]
                series.times.append(now)
                series.cpu_percent.append(cpu)
                series.rss_mib.append(rss)

    def _loop(self) -> None:
        self._sample(prime=True)
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ResourceSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for name, s in self.series.items():
            if not s.cpu_percent:
                out[name] = {"cpu_percent_mean": None, "rss_mib_max": None, "rss_mib_first": None, "rss_mib_last": None}
                continue
            out[name] = {
                "cpu_percent_mean": round(sum(s.cpu_percent) / len(s.cpu_percent), 1),
                "cpu_percent_max": round(max(s.cpu_percent), 1),
                "rss_mib_first": round(s.rss_mib[0], 1),
                "rss_mib_last": round(s.rss_mib[-1], 1),
                "rss_mib_max": round(max(s.rss_mib), 1),
                "samples": len(s.cpu_percent),
            }
        return out
