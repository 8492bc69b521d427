"""The hardware block of a benchmark report: what a reader needs to compare figures across machines."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Instruction sets that decide int8 / bf16 speed on CPUs (Linux /proc/cpuinfo flag names).
ISA_FLAGS = {"AVX2": {"avx2"}, "AVX-512": {"avx512f"}, "VNNI": {"avx512_vnni", "avx_vnni"},
             "AVX512-BF16": {"avx512_bf16"}, "AMX": {"amx_tile", "amx_int8", "amx_bf16"},
             "NEON": {"asimd", "neon"}}
# Distributions behind each edgefm runtime module (first one installed wins).
RUNTIME_PACKAGES = {"onnxruntime": ["onnxruntime", "onnxruntime-gpu"], "openvino": ["openvino"],
                    "coreml": ["coremltools"], "tensorrt": ["tensorrt", "tensorrt-cu13", "tensorrt-cu12"]}


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def _cpu() -> tuple[str, set[str]]:
    """CPU model and feature flags. Read by hand: the stdlib has no portable call, and the flags are one line."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        field = lambda *keys: next((line.split(":", 1)[1].strip() for line in lines  # noqa: E731
                                    if line.split(":")[0].strip() in keys), "")
        return field("model name", "Model") or platform.processor(), set(field("flags", "Features").split())
    if platform.system() == "Darwin":
        brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        return brand.stdout.strip() or platform.processor(), {"asimd"} if platform.machine() == "arm64" else set()
    return platform.processor() or "unknown", set()


def gpus() -> list[dict]:
    """NVIDIA GPUs through NVML (nvidia-ml-py), when the library and a driver are present."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        return [{"name": pynvml.nvmlDeviceGetName(h), "driver": pynvml.nvmlSystemGetDriverVersion(),
                 "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20,
                 "compute_capability": "{}.{}".format(*pynvml.nvmlDeviceGetCudaComputeCapability(h))}
                for h in handles]
    except Exception:  # no NVML library, no driver, no GPU, or a query NVML refuses: report none
        return []


def gpu_memory_mib(pid: int) -> float | None:
    """Device memory the process `pid` holds on NVIDIA GPUs (None without NVML or when it holds none;
    inside containers NVML may list host pids, which then do not match)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        used = [p.usedGpuMemory for i in range(pynvml.nvmlDeviceGetCount())
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
                if p.pid == pid and p.usedGpuMemory]
    except Exception:  # see gpus()
        return None
    return sum(used) / 2**20 if used else None


def describe(threads: int | None, runtimes: list[str]) -> dict:
    model, flags = _cpu()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    libraries = {"edgefm": package_version("edgefm"), "numpy": package_version("numpy")}
    for runtime in sorted(set(runtimes)):
        libraries[runtime] = package_version(*RUNTIME_PACKAGES.get(runtime, [runtime]))
    return {"cpu": model, "logical_cores": os.cpu_count(), "cores_available": available,
            "threads_used": threads or f"runtime default (up to {available})",
            "isa": {name: bool(flags & names) for name, names in ISA_FLAGS.items()},
            "gpus": gpus(), "os": platform.platform(), "python": platform.python_version(),
            "libraries": libraries}


def summary_lines(info: dict) -> list[str]:
    """The block as markdown bullet lines, for reports people paste."""
    isa = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in info["isa"].items())
    gpu = "; ".join(f"{g['name']} (compute capability {g.get('compute_capability', '?')}, driver {g['driver']}, "
                    f"{g['memory_mib']:.0f} MiB)" for g in info["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v)
    return [f"- CPU: {info['cpu']}; {info['cores_available']} of {info['logical_cores']} logical cores available, "
            f"threads used: {info['threads_used']}", f"- Instruction sets: {isa}", f"- GPU: {gpu}",
            f"- OS: {info['os']}, Python {info['python']}", f"- Libraries: {libs}"]
