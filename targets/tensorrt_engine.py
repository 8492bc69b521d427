"""One engine from one plan entry, with the TensorRT Python API (10.x and 11.x). Needs TensorRT and a GPU.

The network is strongly typed (a creation flag on 10.x, the only mode on 11.x): precisions come from
the ONNX the plan names, never from builder flags, so the engine computes what was validated on the CPU.
"""
from __future__ import annotations

from pathlib import Path

from edgefm.contract.errors import EdgefmError


def build_engine(onnx_path: Path, component: dict, device_profile: dict, timing_cache: Path) -> bytes:
    """Serialized engine for `component` (a build plan entry); `timing_cache` is read and updated."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # the file path lets the parser find external weights
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgefmError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if device_profile.get("workspace_mib"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, device_profile["workspace_mib"] << 20)
    config.builder_optimization_level = device_profile.get("optimization_level", 3)
    if not component["tf32"] and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 layers stay fp32, as validated
    profile = builder.create_optimization_profile()
    for name, shapes in component["profile"].items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EdgefmError(f"TensorRT refused the timing cache {timing_cache} (another TensorRT or GPU wrote it?); "
                          "delete it to start a new one")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgefmError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    partial = timing_cache.with_name(timing_cache.name + ".partial")  # other builds may read it meanwhile
    partial.write_bytes(memoryview(config.get_timing_cache().serialize()))
    partial.replace(timing_cache)
    return bytes(memoryview(serialized))
