"""``edgeseg export --trt``: ONNX -> TensorRT engine, built on the machine that will run it.

Written against the TensorRT 10 Python API and TensorRT 11 (verified in NVIDIA's docs):
- networks are created *strongly typed* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; in
  TensorRT 11 always on and the flag ignored): precision comes from the ONNX itself — FP16
  weights from ``--fp16``, Q/DQ nodes from ``--int8`` — so there are no FP16/INT8 builder flags
  and no calibrators (deprecated in 10.1, removed in 11), and one ONNX builds on both;
- the workspace is a memory-pool limit (``MemoryPoolType.WORKSPACE``); dynamic batch is an
  optimization profile on the input; a timing cache file makes rebuilds fast;
- ``build_serialized_network`` returns the plan, written atomically beside a ModelSpec sidecar
  ``<engine>.json`` that also records the TensorRT version, GPU and build options.

Engines are cached under ``$EDGESEG_CACHE/engines`` by a key of ONNX hash + TensorRT version +
GPU name + options, so building the same thing twice is a copy. A plan only runs on the TensorRT
version and GPU it was built for. The record names the ONNX it was built from (its path, the
path relative to the engine's folder, its sha256), so :func:`rebuild_engine` remakes a stale or
foreign engine in place, with the same options, when it is loaded after a TensorRT or JetPack
upgrade or on another GPU (``--no-rebuild``: :func:`check_engine` refuses it instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

from edgeseg._io import atomic_path, write_text_atomic
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.onnxruntime import read_onnx_spec
from edgeseg.runtime.engine_files import (
    SIDECAR_FORMAT,
    import_tensorrt,
    sidecar_path,
    tensorrt_major,
    trt,
    use_gpu,
)


@dataclass(frozen=True)
class EngineOptions:
    """What changes the built plan (and therefore the cache key)."""

    workspace_mb: int | None = None
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    dla_core: int | None = None  # build for this DLA core (Jetson), not the GPU
    gpu_fallback: bool = False  # with dla_core: layers the DLA cannot run go to the GPU

    @classmethod
    def parse_dynamic(cls, text: str | None, workspace_mb: int | None = None) -> EngineOptions:
        """``--dynamic MIN,OPT,MAX`` batch sizes."""
        if not text:
            return cls(workspace_mb)
        try:
            lo, opt, hi = (int(v) for v in text.split(","))
        except ValueError:
            raise EdgesegError(
                f"--dynamic needs MIN,OPT,MAX batch sizes like 1,4,8; got '{text}'"
            ) from None
        if not 1 <= lo <= opt <= hi:
            raise EdgesegError(f"--dynamic needs 1 <= MIN <= OPT <= MAX, got {lo},{opt},{hi}")
        return cls(workspace_mb, lo, opt, hi)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, options: EngineOptions) -> str:
    """The engine cache key: everything a plan depends on."""
    payload = json.dumps([onnx_sha256, trt_version, gpu_name, asdict(options)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def engine_cache_dir() -> Path:
    return Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg")) / "engines"


def network_flags() -> int:
    """Creation flags of a strongly typed network: TensorRT 10 asks for it with the
    ``STRONGLY_TYPED`` flag; in TensorRT 11 every network is strongly typed and no flag is
    passed (``EXPLICIT_BATCH`` is gone from both). The checker reads both branches against
    TensorRT 10.13's API."""
    if tensorrt_major() >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse(onnx_path: Path, logger: trt.ILogger) -> tuple[trt.Builder, trt.INetworkDefinition]:
    """A builder and the strongly typed network of ``onnx_path``, or the parser's errors."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        # The stubs type OnnxParser.get_error as returning ``...``; it returns a ParserError.
        errors = "; ".join(
            cast("trt.ParserError", parser.get_error(i)).desc() for i in range(parser.num_errors)
        )
        raise EdgesegError(f"TensorRT cannot parse {onnx_path}: {errors[:400]}")
    return builder, network


def _use_dla(config: trt.IBuilderConfig, options: EngineOptions) -> None:
    """Every layer on DLA core ``options.dla_core``; the precision is the ONNX's (FP16 or INT8:
    strongly typed), so no precision flags. Without GPU fallback a layer the DLA cannot run
    fails the build, which is what ``--dla`` without ``--gpu-fallback`` promises."""
    if options.dla_core is None:
        return
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = options.dla_core
    if options.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _build(
    onnx_path: Path,
    input_hw: tuple[int, int],
    options: EngineOptions,
    timing_cache: str | os.PathLike | None,
) -> tuple[trt.IHostMemory, trt.ITimingCache | None]:
    """Parse and build; (the serialized plan, the timing cache or None)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network = _parse(onnx_path, logger)
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    h, w = input_hw
    profile = builder.create_optimization_profile()
    shapes = [(b, 3, h, w) for b in (options.min_batch, options.opt_batch, options.max_batch)]
    # pybind11 takes a tuple wherever TensorRT wants Dims; the stubs list Dims only.
    profile.set_shape(network.get_input(0).name, *shapes)  # type: ignore[arg-type]
    if config.add_optimization_profile(profile) < 0:
        raise EdgesegError(
            f"TensorRT refused the optimization profile min/opt/max batch "
            f"{options.min_batch}/{options.opt_batch}/{options.max_batch} (see the log above)"
        )
    _use_dla(config, options)
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    # The stubs say IHostMemory; TensorRT returns None when the build fails.
    plan: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgesegError(
            f"TensorRT failed to build an engine from {onnx_path} (see the log above); "
            "try a larger --workspace"
        )
    return plan, cache


def build_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    options: EngineOptions = EngineOptions(),
    timing_cache: str | os.PathLike | None = None,
    use_cache: bool = True,
    device: int = 0,
) -> dict[str, Any]:
    """Build (or fetch from the cache) the engine of ``onnx_path`` at ``out_path`` for GPU
    ``device``; return the record."""
    import_tensorrt()  # a clear error before any work when TensorRT is missing
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    spec = read_onnx_spec(onnx_path)
    digest = file_sha256(onnx_path)
    gpu = use_gpu(device)  # TensorRT builds on the thread's current GPU: make it the recorded one
    key = cache_key(digest, trt.__version__, gpu, options)
    meta: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "spec": spec.to_dict(),
        "tensorrt": {
            "version": trt.__version__,
            "gpu": gpu,
            **onnx_record(onnx_path, out_path),
            "onnx_sha256": digest,
            "cache_key": key,
            "options": asdict(options),
            "strongly_typed": True,
        },
    }
    cached = engine_cache_dir() / f"{key}.engine"
    if use_cache and cached.is_file():
        with atomic_path(out_path) as tmp:
            shutil.copyfile(cached, tmp)
        write_text_atomic(sidecar_path(out_path), json.dumps(meta, indent=2))
        return {**meta["tensorrt"], "path": str(out_path), "from_cache": True}

    plan, cache = _build(onnx_path, spec.input_hw, options, timing_cache)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(bytes(plan))
    write_text_atomic(sidecar_path(out_path), json.dumps(meta, indent=2))
    if cache is not None and timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            Path(tmp).write_bytes(bytes(cache.serialize()))
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            shutil.copyfile(out_path, tmp)
    return {**meta["tensorrt"], "path": str(out_path), "from_cache": False}


def onnx_record(onnx_path: Path, out_path: Path) -> dict[str, str | None]:
    """Where the engine's ONNX is: its absolute path, and its path relative to the engine's
    folder, which still leads to it once the folder moves (``edgeseg export`` builds in a
    staging folder and moves the files out; a deployment folder is copied to the robot)."""
    onnx = onnx_path.resolve()
    try:
        relative: str | None = os.path.relpath(onnx, out_path.resolve().parent)
    except ValueError:  # Windows: another drive
        relative = None
    return {"onnx": str(onnx), "onnx_relative": relative}


def recorded_onnx(engine: Path, built: dict[str, Any]) -> Path:
    """The ONNX ``engine`` was built from, where its record ``built`` says, with the recorded
    hash; otherwise an error saying why not (the engine's own message adds the fix)."""
    digest, absolute, relative = (built.get(k) for k in ("onnx_sha256", "onnx", "onnx_relative"))
    if not digest or not (absolute or relative):
        raise EdgesegError("its record names no ONNX (an engine of an older edgeseg)")
    places = [Path(os.path.normpath(engine.parent / relative))] if relative else []
    places += [Path(absolute)] if absolute else []
    found = [p for p in dict.fromkeys(places) if p.is_file()]
    if not found:
        raise EdgesegError(f"its ONNX {places[0]} is missing")
    for onnx in found:
        if file_sha256(onnx) == digest:
            return onnx
    raise EdgesegError(
        f"its ONNX {found[0]} has changed since the engine was built (sha256 {digest[:12]}... "
        "recorded)"
    )


def recorded_options(built: dict[str, Any]) -> EngineOptions:
    """The build options ``built`` records; an option this edgeseg does not know is an error
    (building without it would give another engine under the same name)."""
    options = built.get("options")
    if not isinstance(options, dict):
        raise EdgesegError("its record has no build options")
    unknown = sorted(set(options) - {f.name for f in fields(EngineOptions)})
    if unknown:
        raise EdgesegError(f"it has build options this edgeseg does not know: {', '.join(unknown)}")
    return EngineOptions(**options)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rebuild_engine(
    engine: str | os.PathLike,
    meta: dict[str, Any],
    why: str,
    device: int = 0,
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Rebuild ``engine`` (its record ``meta``; ``why``: what makes it foreign here) in place
    from the ONNX it was built from, with the same options, for GPU ``device``; ``say`` gets one
    line saying why first (a build takes minutes on a Jetson). The engine cache keeps the new
    plan. A missing or changed ONNX, or a record without one, is refused with the reason.

    The timing cache given at export, if any, is not used: it was written by the TensorRT
    version or for the GPU the engine no longer fits, and TensorRT takes none of it."""
    engine = Path(engine)
    try:
        onnx = recorded_onnx(engine, meta["tensorrt"])
        options = recorded_options(meta["tensorrt"])
    except EdgesegError as e:
        raise EdgesegError(
            f"{engine} was {why} and cannot be rebuilt here: {e}; export it again on this machine "
            "with 'edgeseg export CKPT --trt'"
        ) from None
    say(f"edgeseg: {engine} was {why}: rebuilding it from {onnx} with the same options")
    try:
        return build_engine(onnx, engine, options, device=device)
    except OSError as e:  # a read-only deployment folder or cache: nothing was replaced
        raise EdgesegError(
            f"{engine} was {why} and could not be rebuilt: cannot write {e.filename or engine} "
            f"({e.strerror or e}); make its folder and $EDGESEG_CACHE writable, or export it again "
            "with 'edgeseg export CKPT --trt'"
        ) from None
