"""Where the drone's frames come from: one interface, four kinds of source.

A :class:`FrameSource` hands out RGB ``uint8`` frames (H×W×3) with the moment
each was captured (``time.monotonic()`` seconds), already resized to the
requested output size. Its :meth:`~FrameSource.read` blocks (camera waits,
file decoding), so async code calls it in a worker thread; :mod:`drone.track`
does that. Sources are not thread-safe: use one from one thread at a time.

- :class:`CameraSource`: a V4L2 device (``/dev/video0``) or an OpenCV camera
  index; a grabber thread keeps only the newest frame, so a slow consumer never
  sees stale frames.
- :class:`VideoFileSource`: any file OpenCV's FFmpeg backend can decode.
- :class:`ImageFolderSource`: a folder of images (sorted by name), looped.
- :class:`SyntheticSource`: a generated, deterministic scene with its own known
  intrinsics; needs no camera or file.

:func:`open_source` turns the ``--source`` text into one of them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

from dronedepth.drone.trajectory import StampedPose
from dronedepth.errors import ConfigError
from dronedepth.frames import Transform
from dronedepth.protocol import CameraMessage

__all__ = [
    "IMAGE_SUFFIXES",
    "BoxFront",
    "CameraSource",
    "CapturedFrame",
    "FrameSource",
    "ImageFolderSource",
    "SyntheticSource",
    "VideoFileSource",
    "open_source",
    "output_size",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_CAMERA_READ_TIMEOUT_S: Final = 5.0
_CAMERA_MAX_FAILED_READS: Final = 50
_SKY_RGB: Final = np.array([0.55, 0.7, 0.95], np.float32)
_HAZE_RGB: Final = np.array([0.75, 0.8, 0.88], np.float32)


class CapturedFrame(NamedTuple):
    """One frame: RGB ``uint8`` H×W×3 and its capture time (``time.monotonic()`` seconds)."""

    rgb: NDArray[np.uint8]
    capture_time: float


def output_size(native_width: int, native_height: int, width: int | None, height: int | None) -> tuple[int, int]:
    """The size frames are sent at: both given → exactly that; one given → keep the aspect ratio.

    A side derived from the aspect ratio is rounded to an even number (video
    encoders want even sizes for 4:2:0 chroma).
    """
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, max(2, 2 * round(native_height * width / native_width / 2))
    if height is not None:
        return max(2, 2 * round(native_width * height / native_height / 2)), height
    return native_width, native_height


def _check_size(width: int | None, height: int | None) -> None:
    for name, value in (("width", width), ("height", height)):
        if value is not None and not (2 <= value <= 8192):
            raise ConfigError(f"--{name} must be between 2 and 8192 pixels, got {value}")


class FrameSource(ABC):
    """A stream of RGB frames at a known size.

    ``native_width``/``native_height`` are the size the camera, file or images
    deliver; ``width``/``height`` the size :meth:`read` returns (the first
    frame's, for image folders whose images differ in size). ``fps`` is the
    native rate when known. ``intrinsics`` is the camera's calibration at the
    native size when the source knows it (only :class:`SyntheticSource` does).
    """

    name: str = "source"
    fps: float | None = None
    intrinsics: CameraMessage | None = None

    def __init__(self, native_width: int, native_height: int, width: int | None, height: int | None) -> None:
        _check_size(width, height)
        self.native_width = native_width
        self.native_height = native_height
        self._requested = (width, height)
        self.width, self.height = output_size(native_width, native_height, width, height)

    def set_output_size(self, width: int | None, height: int | None) -> None:
        """Change the size later frames are resized to (``None``: keep the aspect ratio, or the native size)."""
        _check_size(width, height)
        self._requested = (width, height)
        self.width, self.height = output_size(self.native_width, self.native_height, width, height)

    @abstractmethod
    def read(self) -> CapturedFrame | None:
        """The next frame, or ``None`` once the stream has ended. Blocks."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release the device or file. Idempotent."""

    def _finish(self, bgr: NDArray[np.uint8], capture_time: float) -> CapturedFrame:
        """BGR from OpenCV → RGB at the output size."""
        h, w = bgr.shape[:2]
        size = output_size(w, h, *self._requested)
        resized: cv2.typing.MatLike = bgr
        if size != (w, h):
            shrink = size[0] < w and size[1] < h
            resized = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        # OpenCV's stubs type every image as any dtype; uint8 in, uint8 out (no copy).
        return CapturedFrame(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.uint8, copy=False), capture_time)

    def __iter__(self) -> Iterator[CapturedFrame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.width}x{self.height})"


class CameraSource(FrameSource):
    """A live camera through OpenCV: a V4L2 device path or an integer index.

    A grabber thread reads continuously and keeps only the newest frame, so
    :meth:`read` returns the freshest image (never a queued, stale one) with the
    time it was grabbed.
    """

    def __init__(self, device: int | str, *, width: int | None = None, height: int | None = None) -> None:
        self.name = str(device)
        capture = cv2.VideoCapture(device)
        if not capture.isOpened():
            capture.release()
            raise ConfigError(
                f"could not open camera {device!r}: no such device, or it is busy or not permitted. "
                "List cameras with 'v4l2-ctl --list-devices' or 'ls /dev/video*' and pass "
                "--source /dev/videoN or its index."
            )
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise ConfigError(f"camera {device!r} opened but delivered no frame; is another program using it?")
        super().__init__(first.shape[1], first.shape[0], width, height)
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        self._capture = capture
        self._cond = threading.Condition()
        self._latest: tuple[NDArray[np.uint8], float] | None = (first.astype(np.uint8, copy=False), time.monotonic())
        self._sequence = 1
        self._returned = 0
        self._ended = False
        self._stopping = False
        self._thread = threading.Thread(target=self._grab, name=f"camera-{device}", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        failures = 0
        while not self._stopping:
            ok, bgr = self._capture.read()
            now = time.monotonic()
            if not ok or bgr is None:
                failures += 1
                if failures >= _CAMERA_MAX_FAILED_READS:
                    log.error("camera %s stopped delivering frames", self.name)
                    break
                time.sleep(0.02)
                continue
            failures = 0
            with self._cond:
                self._latest = (bgr.astype(np.uint8, copy=False), now)
                self._sequence += 1
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def read(self) -> CapturedFrame | None:
        with self._cond:
            fresh = self._cond.wait_for(
                lambda: self._sequence > self._returned or self._ended, timeout=_CAMERA_READ_TIMEOUT_S
            )
            if not fresh:
                log.error("camera %s delivered no frame for %.0f s", self.name, _CAMERA_READ_TIMEOUT_S)
                return None
            if self._sequence == self._returned or self._latest is None:
                return None
            self._returned = self._sequence
            bgr, captured = self._latest
        return self._finish(bgr, captured)

    def close(self) -> None:
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join(timeout=_CAMERA_READ_TIMEOUT_S)
        self._capture.release()


class VideoFileSource(FrameSource):
    """A video file decoded by OpenCV, one frame per :meth:`read`, optionally looped.

    Frames are taken in order whatever the file's own frame rate: the track's
    ``--fps`` sets the playback rate.
    """

    def __init__(
        self, path: str | Path, *, width: int | None = None, height: int | None = None, loop: bool = False
    ) -> None:
        path = Path(path)
        self.name = str(path)
        if not path.is_file():
            raise ConfigError(f"video file {str(path)!r} does not exist")
        capture = cv2.VideoCapture(str(path))
        w = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) if capture.isOpened() else 0
        h = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) if capture.isOpened() else 0
        if w <= 0 or h <= 0:
            capture.release()
            raise ConfigError(f"could not decode {str(path)!r} as a video (OpenCV/FFmpeg cannot read it)")
        super().__init__(w, h, width, height)
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        self.loop = loop
        self._capture = capture

    def read(self) -> CapturedFrame | None:
        ok, bgr = self._capture.read()
        if not ok and self.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._capture.read()
        if not ok or bgr is None:
            return None
        return self._finish(bgr.astype(np.uint8, copy=False), time.monotonic())

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource(FrameSource):
    """Images played as a stream, in name order, looping forever (stop with ``max_frames``).

    ``path`` is a folder (its images, not recursive) or a list of image files.
    The images are taken as frames of one camera: the first image sets the
    native size (the one intrinsics flags refer to) and every frame goes out
    at the same output size; an image of another size is resized to it, with
    a warning when its aspect ratio differs.
    """

    def __init__(
        self, path: str | Path | Sequence[str | Path], *, width: int | None = None, height: int | None = None
    ) -> None:
        if isinstance(path, str | Path):
            folder = Path(path)
            self.name = str(folder)
            if not folder.is_dir():
                raise ConfigError(f"image folder {str(folder)!r} does not exist")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise ConfigError(f"image folder {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            files = [Path(p) for p in path]
            if not files:
                raise ConfigError("an image source needs at least one image")
            self.name = str(files[0]) if len(files) == 1 else f"{len(files)} images"
        self.files = files
        first = self._load(files[0])
        super().__init__(first.shape[1], first.shape[0], width, height)
        self._requested = (self.width, self.height)  # one size for every image
        self._index = 0
        self._warned: set[Path] = set()

    @staticmethod
    def _load(path: Path) -> NDArray[np.uint8]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"could not read image {str(path)!r}")
        return bgr.astype(np.uint8, copy=False)

    def set_output_size(self, width: int | None, height: int | None) -> None:
        super().set_output_size(width, height)
        self._requested = (self.width, self.height)  # one size for every image

    def read(self) -> CapturedFrame:
        path = self.files[self._index % len(self.files)]
        self._index += 1
        bgr = self._load(path)
        h, w = bgr.shape[:2]
        if path not in self._warned and abs((w / h) / (self.native_width / self.native_height) - 1) > 0.01:
            self._warned.add(path)
            log.warning(
                "%s is %dx%d, another aspect ratio than the first image (%dx%d): resized to %dx%d anyway",
                path.name,
                w,
                h,
                self.native_width,
                self.native_height,
                self.width,
                self.height,
            )
        return self._finish(bgr, time.monotonic())


class BoxFront(NamedTuple):
    """Ground truth: the camera-facing side of a synthetic obstacle in the scene's ``map`` (ENU, metres).

    A vertical rectangle at ``x`` (its distance along the flight from the map's
    origin), spanning ``y_min``..``y_max`` sideways and 0..``top`` above the ground.
    """

    x: float
    y_min: float
    y_max: float
    top: float


class SyntheticSource(FrameSource):
    """A generated scene seen by a camera flying forward: no camera or file needed.

    The scene is real geometry seen through the source's own pinhole
    :attr:`intrinsics` (horizontal field of view ``hfov_deg``, no distortion):
    a textured ground plane 1.6 m below the camera (checker cells of 1 m with
    per-cell shades, fading into haze with distance), a sky with soft clouds,
    and textured box fronts standing on the ground at 3–40 m. The camera moves
    forward at 1.5 m/s and sways sideways, so features move between frames.
    Frame ``n`` shows the scene at ``t = n / fps``: the output is deterministic
    for a given size, ``fps`` and ``seed``, and depth cues (perspective, texture
    gradient, occlusion, haze) are consistent with the intrinsics.

    The flight is known exactly, so the source is also a pose source
    (:class:`drone.trajectory.PoseSource`) and gives ground truth: in the
    scene's ``map`` (ENU: x along the flight, y left, z up; origin on the
    ground below the start) the body (FLU, level, facing +x, the camera the
    default forward-looking mount at its origin) is at
    ``(SPEED_M_S·t, −SWAY_M·sin(SWAY_RAD_S·t), CAMERA_HEIGHT_M)``
    (:meth:`world_from_body`); :meth:`box_fronts` lists the obstacles.
    """

    CAMERA_HEIGHT_M: Final = 1.6
    SPEED_M_S: Final = 1.5
    PERIOD_M: Final = 24.0
    """The obstacle layout repeats every ``PERIOD_M`` metres along the flight."""
    SWAY_M: Final = 0.8
    SWAY_RAD_S: Final = 0.4

    def __init__(
        self,
        width: int | None = None,
        height: int | None = None,
        *,
        fps: float = 15.0,
        seed: int = 0,
        hfov_deg: float = 70.0,
    ) -> None:
        self.name = "synthetic"
        if not (10.0 <= hfov_deg <= 150.0):
            raise ConfigError(f"synthetic hfov_deg must be within 10..150 degrees, got {hfov_deg}")
        if not (fps > 0):
            raise ConfigError(f"synthetic fps must be positive, got {fps}")
        w, h = output_size(640, 480, width, height)
        _check_size(w, h)
        super().__init__(w, h, w, h)
        self.fps = fps
        fx = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
        self.intrinsics = CameraMessage(width=w, height=h, fx=fx, fy=fx, cx=w / 2 - 0.5, cy=h / 2 - 0.5)
        self._index = 0
        rng = np.random.default_rng(seed)
        u = (np.arange(w, dtype=np.float32) - self.intrinsics.cx) / fx
        v = (np.arange(h, dtype=np.float32) - self.intrinsics.cy) / fx
        ray_x, ray_y = np.meshgrid(u, v)
        self._ground = ray_y > 1e-3
        # Per ground pixel: forward distance to the ground and its sideways offset per metre.
        self._ground_depth = (self.CAMERA_HEIGHT_M / ray_y[self._ground]).astype(np.float32)
        self._ground_ray_x = ray_x[self._ground]
        haze = 1.0 - np.exp(-self._ground_depth / 35.0)
        self._ground_haze = haze[:, None].astype(np.float32)
        self._sky = (_SKY_RGB * (0.75 + 0.25 * np.clip(0.55 - ray_y, 0.0, 1.0))[..., None]).astype(np.float32)
        self._cell_shades = rng.uniform(0.35, 1.0, size=(64, 64)).astype(np.float32)
        self._cell_shades *= np.where(np.add.outer(np.arange(64), np.arange(64)) % 2 == 0, 1.0, 0.6).astype(np.float32)
        tints = rng.uniform(0.85, 1.15, size=(64, 64, 3)) * np.array([0.55, 0.6, 0.4])
        self._cell_colours = (tints * self._cell_shades[..., None]).astype(np.float32)
        clouds = cv2.resize(
            rng.uniform(0, 1, size=(6, 16)).astype(np.float32), (w * 2, h), interpolation=cv2.INTER_LINEAR
        )
        self._clouds = (np.clip(clouds, 0, 1) ** 3)[..., None]
        count = 7
        self._obstacles = [
            (
                float(rng.uniform(0, self.PERIOD_M)),  # z in the period
                float(rng.uniform(-7, 7)),  # x
                float(rng.uniform(0.8, 3.0)),  # width
                float(rng.uniform(1.0, 4.5)),  # height
                self._texture(rng),
            )
            for _ in range(count)
        ]

    @staticmethod
    def _texture(rng: np.random.Generator) -> NDArray[np.float32]:
        """A box front: random blocks with hard edges (corners for detectors) in one hue."""
        blocks = rng.uniform(0.25, 1.0, size=(int(rng.integers(4, 9)), int(rng.integers(4, 9)), 1))
        base = rng.uniform(0.3, 1.0, size=(1, 1, 3))
        return (blocks * base).astype(np.float32)

    def read(self) -> CapturedFrame:
        rgb = self.render(self._index)
        self._index += 1
        if (self.width, self.height) != (self.native_width, self.native_height):
            rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA).astype(np.uint8, copy=False)
        return CapturedFrame(rgb, time.monotonic())

    def _camera_offset(self, index: int) -> tuple[float, float]:
        """The camera's sideways (right) and forward offset from its start at frame ``index``, metres."""
        assert self.fps is not None
        t = index / self.fps
        return self.SWAY_M * math.sin(self.SWAY_RAD_S * t), self.SPEED_M_S * t

    def world_from_body(self, index: int) -> Transform:
        """Ground truth: ``map_from_base_link`` (ENU/FLU, metres) at frame ``index``."""
        right, forward = self._camera_offset(index)
        return Transform(np.array([0.0, 0.0, 0.0, 1.0]), np.array([forward, -right, self.CAMERA_HEIGHT_M]))

    def poses_for_frame(self, index: int, capture_time: float) -> Sequence[StampedPose]:
        """The exact pose of frame ``index``, stamped with its capture time (:class:`PoseSource`)."""
        assert self.fps is not None
        t = index / self.fps
        velocity = np.array([self.SPEED_M_S, -self.SWAY_M * self.SWAY_RAD_S * math.cos(self.SWAY_RAD_S * t), 0.0])
        return (
            StampedPose(
                capture_time,
                self.world_from_body(index),
                height_above_ground_m=self.CAMERA_HEIGHT_M,
                velocity_m_s=velocity,
            ),
        )

    def box_fronts(self, x_min: float, x_max: float) -> list[BoxFront]:
        """Ground truth: the obstacles whose front lies at ``x_min ≤ x ≤ x_max`` in the ``map``, nearest first."""
        fronts = []
        for z0, x, width_m, height_m, _ in self._obstacles:
            for k in range(math.floor((x_min - z0) / self.PERIOD_M), math.floor((x_max - z0) / self.PERIOD_M) + 1):
                front = z0 + k * self.PERIOD_M
                if x_min <= front <= x_max:
                    fronts.append(BoxFront(front, -(x + width_m / 2), -(x - width_m / 2), height_m))
        return sorted(fronts)

    def render(self, index: int) -> NDArray[np.uint8]:
        """The frame at ``t = index / fps`` at the native size (pure function of the index)."""
        cam_x, cam_z = self._camera_offset(index)
        h, w = self.native_height, self.native_width
        # Sky: gradient plus clouds drifting with the sideways sway.
        shift = int(cam_x * 40) % w
        clouds = self._clouds[:, shift : shift + w]
        image = self._sky + clouds * (0.97 - self._sky)

        # Ground: checker cells with per-cell shades, hazing with distance.
        ix = np.floor(self._ground_depth * self._ground_ray_x + cam_x).astype(np.intp) % 64
        iz = np.floor(self._ground_depth + cam_z).astype(np.intp) % 64
        colours = self._cell_colours[ix, iz]
        image[self._ground] = colours + self._ground_haze * (_HAZE_RGB - colours)

        # Obstacles: far to near so nearer ones occlude.
        visible = []
        for z0, x, width_m, height_m, texture in self._obstacles:
            first = math.floor((cam_z - z0) / self.PERIOD_M) + 1
            for k in range(first, first + 3):
                z = z0 + k * self.PERIOD_M - cam_z
                if 3.0 <= z <= 40.0:
                    visible.append((z, x - cam_x, width_m, height_m, texture))
        fx, cx, cy = self.intrinsics.fx, self.intrinsics.cx, self.intrinsics.cy  # type: ignore[union-attr]
        for z, x, width_m, height_m, texture in sorted(visible, key=lambda o: -o[0]):
            u0, u1 = cx + fx * (x - width_m / 2) / z, cx + fx * (x + width_m / 2) / z
            v0, v1 = cy + fx * (self.CAMERA_HEIGHT_M - height_m) / z, cy + fx * self.CAMERA_HEIGHT_M / z
            iu0, iu1, iv0, iv1 = round(u0), round(u1), round(v0), round(v1)
            if iu1 <= 0 or iu0 >= w or iv1 <= 0 or iv0 >= h or iu1 - iu0 < 2 or iv1 - iv0 < 2:
                continue
            patch = cv2.resize(texture, (iu1 - iu0, iv1 - iv0), interpolation=cv2.INTER_NEAREST)
            fog = 1.0 - math.exp(-z / 35.0)
            patch = patch + fog * (_HAZE_RGB - patch)
            cu0, cv0 = max(iu0, 0), max(iv0, 0)
            cu1, cv1 = min(iu1, w), min(iv1, h)
            image[cv0:cv1, cu0:cu1] = patch[cv0 - iv0 : cv1 - iv0, cu0 - iu0 : cu1 - iu0]

        return cv2.convertScaleAbs(image, alpha=255.0)


def _camera_device(spec: str) -> int | str | None:
    if spec.isdigit():
        return int(spec)
    if spec.startswith("/dev/video"):
        return spec
    return None


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float = 15.0,
    loop: bool = False,
) -> FrameSource:
    """Open ``--source``: ``synthetic``, a camera index or ``/dev/videoN``, an image folder or file, a video file.

    ``fps`` is the synthetic scene's clock; ``loop`` restarts video files at their end.
    """
    if spec == "synthetic":
        return SyntheticSource(width, height, fps=fps)
    device = _camera_device(spec)
    if device is not None:
        return CameraSource(device, width=width, height=height)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, width=width, height=height)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource([path], width=width, height=height)
        return VideoFileSource(path, width=width, height=height, loop=loop)
    raise ConfigError(
        f"--source {spec!r} is not 'synthetic', a camera index (0, 1, ...), a /dev/video device, "
        "an existing image folder or an existing video/image file"
    )
