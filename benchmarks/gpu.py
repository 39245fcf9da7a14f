"""Section 6: GPU mode, only where an NVIDIA GPU is present (skipped, saying why, everywhere else).

For ViT-S and ViT-B (random-init exports: timing does not depend on the
weights) at the run's input size, on 640×480 frames and on 518×518 frames
(the size of the published figures), one frame at a time after a warm-up:

- ONNX Runtime, CUDA execution provider;
- ONNX Runtime, TensorRT execution provider in FP16 (LayerNorm kept in FP32);
- a TensorRT plan in FP16 built by ``export.build_engine`` (run directly only with a CUDA build
  of torch for the buffers);
- the same three through Triton, when a ``tritonserver`` with the onnxruntime and tensorrt
  backends is installed (the official ``nvcr.io/nvidia/tritonserver:<yy.mm>-py3`` image):
  client latency, frames/s with 4 concurrent clients, and Triton's own compute time.

Each is set beside the published figures (TensorRT FP16 on an RTX 4090 at 518²: ViT-S/B/L ≈ 3/6/12 ms).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dronedepth.benchmarks.environment import gpu_info
from dronedepth.benchmarks.harness import BenchConfig, TritonStats, export_random_init
from dronedepth.benchmarks.stats import summarize
from dronedepth.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME

__all__ = ["PUBLISHED", "detect_gpu", "gpu_section"]

log = logging.getLogger("dronedepth.benchmarks.gpu")

PUBLISHED = {
    "vits": {"TensorRT FP16, RTX 4090, 518x518": "≈ 3 ms", "H100 in a heavy framework, 518x518": "≈ 213 fps"},
    "vitb": {"TensorRT FP16, RTX 4090, 518x518": "≈ 6 ms", "H100 in a heavy framework, 518x518": "≈ 180 fps"},
}
ENCODERS = ("vits", "vitb")
TRITON_BACKENDS = Path("/opt/tritonserver/backends")


def detect_gpu() -> tuple[bool, str, dict[str, Any]]:
    """(available, why, details): a GPU counts when nvidia-smi lists one or the CUDA driver reports one."""
    from dronedepth.export.tensorrt import gpu_count

    info = gpu_info()
    count = gpu_count()
    info["cuda_driver_gpus"] = count
    if info["gpus"] or count:
        return True, f"GPU: {', '.join(info['gpus']) or f'{count} CUDA device(s)'}", info
    why = (
        "no NVIDIA GPU on this machine ("
        + ("nvidia-smi lists none" if info["nvidia_smi"] else "nvidia-smi not found")
        + f", CUDA driver reports {count} GPUs, ONNX Runtime providers: {', '.join(info['onnxruntime_providers'])})"
    )
    return False, why, info


def _time_calls(
    call: Callable[[NDArray[np.uint8]], Any], frames: list[NDArray[np.uint8]], warmup: int, count: int
) -> dict[str, Any]:
    for i in range(warmup):
        call(frames[i % len(frames)])
    latencies = []
    begin = time.perf_counter()
    for i in range(count):
        start = time.perf_counter()
        call(frames[i % len(frames)])
        latencies.append((time.perf_counter() - start) * 1e3)
    elapsed = time.perf_counter() - begin
    summary = summarize(latencies)
    assert summary is not None
    return {"latency_ms": summary.to_dict(), "fps": count / elapsed, "warmup": warmup, "runs": count}


_BATCH4 = ["--max-batch-size", "4"]


def _ort_call(onnx_path: Path, providers: list[Any]) -> Callable[[NDArray[np.uint8]], Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=providers)
    if session.get_providers()[0] != (providers[0] if isinstance(providers[0], str) else providers[0][0]):
        raise RuntimeError(f"ONNX Runtime fell back to {session.get_providers()}")
    return lambda frame: session.run([OUTPUT_NAME], {INPUT_NAME: frame[None]})[0]


def _plan_call(plan_path: Path) -> Callable[[NDArray[np.uint8]], Any]:
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("running a plan directly needs a CUDA build of torch for the buffers (Triton runs it below)")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    out_name = next(n for n in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors)) if n != INPUT_NAME)
    stream = torch.cuda.current_stream()

    def call(frame: NDArray[np.uint8]) -> Any:
        image = torch.from_numpy(np.ascontiguousarray(frame)[None]).cuda()
        context.set_input_shape(INPUT_NAME, tuple(image.shape))
        depth = torch.empty(tuple(context.get_tensor_shape(out_name)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(INPUT_NAME, image.data_ptr())
        context.set_tensor_address(out_name, depth.data_ptr())
        context.execute_async_v3(stream.cuda_stream)
        return depth.cpu().numpy()  # synchronises: frame in and depth out are part of the time, as when serving

    return call


@contextlib.contextmanager
def _tritonserver(repository: Path, log_path: Path) -> Any:
    from dronedepth.serving.embedded import find_free_port

    grpc_port, http_port, metrics_port = (find_free_port() for _ in range(3))
    command = [
        "tritonserver",
        f"--model-repository={repository}",
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        "--model-control-mode=none",
    ]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900  # TensorRT accelerators build engines at load: minutes
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited: {log_path.read_text()[-1500:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("tritonserver was not ready after 15 minutes")
            time.sleep(1.0)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _through_triton(url: str, frames: list[NDArray[np.uint8]], warmup: int, count: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)

    def call(frame: NDArray[np.uint8]) -> Any:
        tensor = grpcclient.InferInput(INPUT_NAME, [1, *frame.shape], "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(frame)[None])
        return client.infer(MODEL_NAME, [tensor]).as_numpy(OUTPUT_NAME)

    stats = TritonStats(url)
    for i in range(warmup):
        call(frames[i % len(frames)])
    before = stats.snapshot()
    result = _time_calls(call, frames, 0, count)
    result["triton"] = TritonStats.delta(before, stats.snapshot())
    # Throughput with 4 clients sending back to back (the dynamic batcher may merge them).
    done = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + max(5.0, count * result["latency_ms"]["p50"] / 1e3)

    def worker() -> None:
        own = grpcclient.InferenceServerClient(url)
        i = 0
        while time.perf_counter() < deadline:
            tensor = grpcclient.InferInput(INPUT_NAME, [1, *frames[i % len(frames)].shape], "UINT8")
            tensor.set_data_from_numpy(frames[i % len(frames)][None])
            own.infer(MODEL_NAME, [tensor])
            i += 1
            with lock:
                done[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["fps_4_clients"] = done[0] / (time.perf_counter() - start)
    return result


def _contender(
    name: str,
    make: Callable[[], Callable[[NDArray[np.uint8]], Any]],
    sizes: dict[str, list[Any]],
    warmup: int,
    count: int,
) -> dict[str, Any]:
    try:
        call = make()
        return {"contender": name, **{size: _time_calls(call, frames, warmup, count) for size, frames in sizes.items()}}
    except Exception as exc:
        log.warning("GPU contender %s skipped: %s", name, exc)
        return {"contender": name, "skipped": str(exc)}


def _encoder_rows(
    config: BenchConfig, encoder: str, sizes: dict[str, list[Any]], warmup: int, count: int, full_triton: bool
) -> list[dict[str, Any]]:
    import onnxruntime as ort

    from dronedepth.export.tensorrt import build_engine, default_profile

    root = config.out / "gpu" / encoder
    providers = ort.get_available_providers()
    rows: list[dict[str, Any]] = []
    onnx_repository = export_random_init(encoder, config.input_size, root / "onnx", [*_BATCH4, "--device", "gpu"])
    onnx_path = onnx_repository / MODEL_NAME / "1" / "model.onnx"
    profile = default_profile(4)
    trt_options = {
        "trt_fp16_enable": True,
        "trt_layer_norm_fp32_fallback": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(root / "ort-trt-cache"),
        **profile.ort_options(),
    }
    ort_contenders: dict[str, tuple[str, list[str | tuple[str, dict[str, Any]]]]] = {
        "ONNX Runtime CUDA EP (fp32)": ("CUDAExecutionProvider", ["CUDAExecutionProvider"]),
        "ONNX Runtime TensorRT EP (fp16)": (
            "TensorrtExecutionProvider",
            [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider"],
        ),
    }
    for name, (needed, chosen) in ort_contenders.items():
        if needed in providers:
            rows.append(_contender(name, functools.partial(_ort_call, onnx_path, chosen), sizes, warmup, count))
        else:
            rows.append({"contender": name, "skipped": f"not among ONNX Runtime's providers {providers}"})
    plan = root / "model.plan"
    try:
        if not plan.is_file():
            build_engine(onnx_path, plan, profile, fp16=True)
        rows.append(_contender("TensorRT plan (fp16)", functools.partial(_plan_call, plan), sizes, warmup, count))
    except Exception as exc:
        rows.append({"contender": "TensorRT plan (fp16)", "skipped": str(exc)})
    if not full_triton:
        rows.append(
            {
                "contender": "Triton (the three above)",
                "skipped": "no tritonserver with the onnxruntime and tensorrt backends here: "
                "run inside nvcr.io/nvidia/tritonserver:<yy.mm>-py3",
            }
        )
        return rows
    for label, folder, extra in (
        ("Triton: ONNX Runtime CUDA (fp32)", "triton-ort", ["--device", "gpu"]),
        ("Triton: ONNX Runtime + TensorRT accelerator (fp16)", "triton-ort-trt", ["--device", "gpu", "--ort-trt"]),
        ("Triton: TensorRT plan (fp16)", "triton-plan", ["--trt"]),
    ):
        try:
            repository = export_random_init(encoder, config.input_size, root / folder, [*_BATCH4, *extra])
            with _tritonserver(repository, root / f"{folder}.log") as url:
                measured = {size: _through_triton(url, frames, warmup, count) for size, frames in sizes.items()}
            rows.append({"contender": label, **measured})
        except Exception as exc:
            rows.append({"contender": label, "skipped": str(exc)})
    return rows


def gpu_section(config: BenchConfig, frames: list[NDArray[np.uint8]]) -> dict[str, Any]:
    """Every GPU contender for ViT-S and ViT-B, or ``{"skipped": True, "reason": ...}`` without a GPU."""
    available, why, info = detect_gpu()
    if not available:
        log.info("GPU mode skipped: %s", why)
        return {"skipped": True, "reason": why, "detected": info}
    import cv2

    # OpenCV's stubs type every image as any dtype; uint8 in, uint8 out (no copy).
    square = [cv2.resize(f, (518, 518), interpolation=cv2.INTER_AREA).astype(np.uint8, copy=False) for f in frames]
    sizes = {"640x480": frames, "518x518": square}
    warmup, count = max(10, config.warmup_frames), max(50, config.frames)
    full_triton = shutil.which("tritonserver") is not None and (TRITON_BACKENDS / "onnxruntime").is_dir()
    return {
        "skipped": False,
        "detected": info,
        "why": why,
        "input_size": config.input_size,
        "published": PUBLISHED,
        "encoders": {e: _encoder_rows(config, e, sizes, warmup, count, full_triton) for e in ENCODERS},
    }
