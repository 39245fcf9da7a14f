"""``dronedepth export``: weights -> verified ONNX (or TensorRT plan) -> Triton model repository."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

from dronedepth.contract import (
    DEFAULT_DEPTH_STRIDE,
    DEFAULT_INPUT_SIZE,
    DEPTH_STRIDES,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    PATCH_SIZE,
)
from dronedepth.errors import ConfigError, ExportError

log = logging.getLogger("dronedepth.export")

ENCODER_CHOICES = "vits, vitb, vitl, vitg"
MIN_OPSET, MAX_OPSET = 17, 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dronedepth export --model depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf\n"
        "  dronedepth export --checkpoint depth_anything_v2_metric_vkitti_vits.pth --encoder vits --metric outdoor\n"
        "  dronedepth export --random-init --encoder vits --out /tmp/x      # offline smoke run, random weights\n"
        "  dronedepth export --model ... --device gpu --trt                 # TensorRT plan, on the serving GPU"
    )
    src = parser.add_argument_group("weights (exactly one)")
    src.add_argument(
        "--model", metavar="ID_OR_DIR", help="Hugging Face hub id or a directory saved by transformers save_pretrained"
    )
    src.add_argument(
        "--checkpoint",
        metavar="FILE.pth",
        help="official checkpoint, e.g. depth_anything_v2_vits.pth (needs --encoder)",
    )
    src.add_argument(
        "--random-init", action="store_true", help="real architecture, random weights (tests and offline smoke runs)"
    )
    src.add_argument("--encoder", metavar="E", help=f"one of {ENCODER_CHOICES} (for --checkpoint and --random-init)")
    src.add_argument(
        "--metric",
        metavar="{indoor,outdoor}",
        help="metric model: indoor (max 20 m) or outdoor (max 80 m); omit for relative",
    )
    src.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    src.add_argument(
        "--pos-embed-interp",
        choices=("auto", "official", "transformers"),
        default="auto",
        help="position-embedding resize to reproduce: the official DINOv2 one (default for .pth and random) "
        "or transformers' (default for --model)",
    )
    graph = parser.add_argument_group("graph")
    graph.add_argument(
        "--input-size",
        type=int,
        default=DEFAULT_INPUT_SIZE,
        help=f"short side the network sees, multiple of {PATCH_SIZE} (default 518)",
    )
    graph.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        help="ONNX precision (default fp32); with --trt the engine precision (default fp16)",
    )
    graph.add_argument(
        "--depth-stride",
        type=int,
        choices=DEPTH_STRIDES,
        default=DEFAULT_DEPTH_STRIDE,
        help=f"return depth at every S-th row and column of the frame (default {DEFAULT_DEPTH_STRIDE}: a quarter "
        "of the pixels, payload and gateway work, while 5° obstacle sectors, 5x5 keypoint depth windows and "
        "0.2 m map voxels keep their resolution; the network itself sees ~518 px either way); 1 for full resolution",
    )
    graph.add_argument("--opset", type=int, default=17, help=f"ONNX opset {MIN_OPSET}-{MAX_OPSET} (default 17)")
    graph.add_argument(
        "--skip-parity",
        action="store_true",
        help="do not check the ONNX model against the reference (faster, unverified)",
    )
    trt = parser.add_argument_group("TensorRT (GPU)")
    trt.add_argument(
        "--trt",
        action="store_true",
        help="build a tensorrt_plan engine from the ONNX (needs an NVIDIA GPU and tensorrt)",
    )
    trt.add_argument(
        "--trt-profile",
        metavar="MIN:OPT:MAX",
        help="BxHxW:BxHxW:BxHxW (default 1x240x320:1x480x640:<max-batch>x720x1280)",
    )
    trt.add_argument(
        "--trt-workspace", type=float, default=4.0, metavar="GIB", help="TensorRT builder workspace (default 4 GiB)"
    )
    trt.add_argument(
        "--ort-trt", action="store_true", help="let Triton's ONNX Runtime use its TensorRT accelerator (config only)"
    )
    repo = parser.add_argument_group("Triton repository")
    repo.add_argument(
        "--out", default="model_repository", metavar="DIR", help="model repository (default model_repository)"
    )
    repo.add_argument("--name", default=MODEL_NAME, help=f"model name (default {MODEL_NAME})")
    repo.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (default 8)")
    repo.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    repo.add_argument("--device", choices=("cpu", "gpu"), help="instance kind (default cpu; gpu with --trt)")
    repo.add_argument(
        "--max-queue-size", type=int, default=16, help="requests waiting before Triton rejects (default 16)"
    )
    repo.add_argument(
        "--queue-timeout-ms",
        type=float,
        help="a queued request older than this is rejected (default 500 on GPU, 5000 on CPU, "
        "where one ViT-S frame takes about half a second)",
    )


def _step(n: int, total: int, text: str) -> None:
    log.info("[%d/%d] %s", n, total, text)


def run(args: argparse.Namespace) -> int:
    """Run the export; returns the exit code (errors are raised as DroneDepthError)."""
    summary = export_from_args(args)
    print(summary, file=sys.stdout)
    return 0


def export_from_args(args: argparse.Namespace) -> str:
    """Do the export described by parsed arguments; returns the summary text."""
    # Heavy imports only when the command runs.
    from dronedepth.export.facts import ModelFacts, Precision
    from dronedepth.export.graph import check_input_size
    from dronedepth.export.onnx_export import export_onnx
    from dronedepth.export.parity import FP16_TOLERANCE, FP32_TOLERANCE, check_parity
    from dronedepth.export.repository import Device, OrtTensorRT, TritonModelConfig, describe, write_repository
    from dronedepth.export.tensorrt import TrtProfile, build_engine, default_profile, engine_parity, require_tensorrt
    from dronedepth.export.weights import load_model

    started = time.perf_counter()
    try:
        input_size = check_input_size(args.input_size)
    except ValueError as exc:
        raise ConfigError(f"--input-size: {exc}") from exc
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ConfigError(
            f"--opset {args.opset} is not supported: use {MIN_OPSET}-{MAX_OPSET} (17 has LayerNormalization)"
        )
    if args.trt and args.ort_trt:
        raise ConfigError(
            "--trt (a TensorRT plan) and --ort-trt (ONNX Runtime's TensorRT) exclude each other: pick one"
        )
    device: Device = args.device or ("gpu" if args.trt else "cpu")
    profile = TrtProfile.parse(args.trt_profile) if args.trt_profile else default_profile(args.max_batch_size)
    if args.trt and profile.max[0] < args.max_batch_size:
        raise ConfigError(f"--trt-profile max batch {profile.max[0]} is below --max-batch-size {args.max_batch_size}")
    precision: Precision = args.precision or ("fp16" if args.trt else "fp32")
    queue_timeout_us = None if args.queue_timeout_ms is None else int(args.queue_timeout_ms * 1000)
    onnx_precision: Precision = "fp32" if args.trt else precision  # TensorRT builds FP16 itself from the FP32 graph
    if args.trt:
        require_tensorrt()  # fail before minutes of export
    total = 4 + int(args.trt)
    ort_tensorrt = OrtTensorRT(precision="FP16" if precision == "fp16" else "FP32", profile=profile)

    def repository_config(facts: ModelFacts) -> TritonModelConfig:
        return TritonModelConfig(
            facts=facts,
            name=args.name,
            platform="tensorrt_plan" if args.trt else "onnxruntime_onnx",
            max_batch_size=args.max_batch_size,
            instances=args.instances,
            device=device,
            max_queue_size=args.max_queue_size,
            queue_timeout_us=queue_timeout_us,
            ort_tensorrt=ort_tensorrt if args.ort_trt else None,
        )

    # Validate the repository settings before the slow work (no facts yet: use placeholders).
    repository_config(
        ModelFacts("vits", "relative", None, input_size, "fp32", "-", False, depth_stride=args.depth_stride)
    )

    _step(1, total, "loading weights")
    t = time.perf_counter()
    pos = None if args.pos_embed_interp == "auto" else args.pos_embed_interp
    loaded = load_model(
        model=args.model,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        encoder=args.encoder,
        metric=args.metric,
        seed=args.seed,
        pos_embed_interp=pos,
    )
    load_s = time.perf_counter() - t
    log.info("loaded %s in %.1f s", loaded.info.description, load_s)

    with tempfile.TemporaryDirectory(prefix="dronedepth-export-") as tmp:
        tmp_dir = Path(tmp)
        _step(
            2, total, f"tracing and exporting to ONNX ({onnx_precision}, opset {args.opset}, input size {input_size})"
        )
        exported = export_onnx(
            loaded,
            tmp_dir / "model.onnx",
            input_size=input_size,
            opset=args.opset,
            precision=onnx_precision,
            depth_stride=args.depth_stride,
        )
        log.info("exported in %.1f s", exported.seconds)

        results = []
        parity_s = 0.0
        tolerance = FP16_TOLERANCE if onnx_precision == "fp16" else FP32_TOLERANCE
        if args.skip_parity:
            _step(3, total, "parity check skipped (--skip-parity): the model is NOT verified")
        else:
            _step(3, total, "checking parity: ONNX Runtime vs the official preprocessing + PyTorch (5 cases)")
            t = time.perf_counter()
            results = check_parity(exported.path, loaded.model, input_size, depth_stride=args.depth_stride)
            parity_s = time.perf_counter() - t
            for r in results:
                log.info("  %-12s nRMSE %.2e", r.case.label, r.nrmse)
            failed = [r for r in results if not r.passed(tolerance)]
            if failed:
                detail = ", ".join(f"{r.case.label} {r.nrmse:.2e}" for r in failed)
                raise ExportError(f"parity check failed (tolerance {tolerance:.0e}): {detail}; nothing was written")

        model_file = exported.path
        facts = exported.facts
        engine_s = 0.0
        engine_err: float | None = None
        if args.trt:
            _step(4, total, f"building the TensorRT engine ({precision}, profile {profile})")
            t = time.perf_counter()
            model_file = build_engine(
                exported.path,
                tmp_dir / "model.plan",
                profile,
                fp16=precision == "fp16",
                workspace_gib=args.trt_workspace,
            )
            engine_s = time.perf_counter() - t
            engine_err = engine_parity(model_file, exported.path)
            if engine_err is not None:
                log.info("  TensorRT engine vs ONNX at 640x480: nRMSE %.2e", engine_err)
            facts = dataclasses.replace(facts, precision=precision)

        _step(total, total, f"writing the Triton model repository {args.out}/{args.name}")
        config = repository_config(facts)
        extra = [p for p in tmp_dir.iterdir() if p.is_file() and p.name not in ("model.onnx", "model.plan")]
        model_dir = write_repository(config, args.out, model_file, extra_files=extra if not args.trt else None)

    written = model_dir / "1" / config.model_file
    stride = args.depth_stride
    depth_dims = "H,W" if stride == 1 else f"ceil(H/{stride}),ceil(W/{stride})"
    size_mb = written.stat().st_size / 1e6
    lines = [
        f"Exported {describe(facts)}",
        f"  graph    {INPUT_NAME} uint8 [B,H,W,3] RGB -> {OUTPUT_NAME} float32 [B,{depth_dims}]; any B, H, W ≥ 14",
        f"           input size {input_size}, opset {args.opset}, {onnx_precision} ONNX"
        + (f", TensorRT {precision} engine (profile {profile})" if args.trt else ""),
    ]
    if args.trt:
        check = f"{engine_err:.2e} nRMSE vs ONNX at 640x480" if engine_err is not None else "not run (no CUDA torch)"
        lines.append(f"  engine   TensorRT {precision}: {check}")
    if facts.random_init:
        lines.append("  WARNING  random weights: the output is not depth; use --model or --checkpoint for a real model")
    if results:
        lines.append(
            f"  parity   nRMSE vs official preprocessing + PyTorch, tolerance {tolerance:.0e} ({onnx_precision}):"
        )
        for r in results:
            lines.append(f"             {r.case.label:<13} {r.nrmse:.2e}  ok   (ONNX Runtime {r.onnx_seconds:.2f} s)")
    else:
        lines.append("  parity   skipped (--skip-parity)")
    timing = f"load {load_s:.1f} s, export {exported.seconds:.1f} s"
    if results:
        timing += f", parity {parity_s:.1f} s"
    if args.trt:
        timing += f", engine {engine_s:.1f} s"
    lines.append(f"  time     {timing}, total {time.perf_counter() - started:.1f} s")
    lines.append(f"  written  {model_dir / 'config.pbtxt'}")
    lines.append(f"           {written} ({size_mb:.1f} MB)")
    return "\n".join(lines)
