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


def instruction_sets() -> dict[str, bool]:
    flags = _cpu()[1]
    return {name: bool(flags & names) for name, names in ISA_FLAGS.items()}


def has_bf16(isa: dict[str, bool]) -> bool:
    """Whether the CPU computes bf16 natively (elsewhere torch and OpenVINO emulate it, slower than fp32)."""
    return bool(isa.get("AVX512-BF16") or isa.get("AMX"))


def gemm_ceilings(threads: int | None, size: int = 2048, repeats: int = 8) -> dict:
    """This machine's GEMM ceiling per compute type: the best of `repeats` square size^3 products through torch
    (oneDNN / MKL), in GFLOP/s (GOP/s for int8: torch._int_mm). A benchmark row's achieved rate over the
    ceiling of the type it computes in says how much of the machine it uses. bf16 is measured only on CPUs
    with bf16 instructions. Needs torch (the `build` extra); None where it is missing."""
    try:
        import torch
    except ImportError:
        return None
    import time

    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    floats = lambda dtype: torch.randn(size, size, generator=generator).to(dtype)  # noqa: E731
    ints = lambda: torch.randint(-128, 128, (size, size), generator=generator, dtype=torch.int8)  # noqa: E731
    products = {"fp32": (torch.matmul, floats(torch.float32), floats(torch.float32))}
    if has_bf16(instruction_sets()):
        products["bf16"] = (torch.matmul, floats(torch.bfloat16), floats(torch.bfloat16))
    if hasattr(torch, "_int_mm"):
        products["int8"] = (torch._int_mm, ints(), ints())
    ceilings = {}
    for kind, (product, a, b) in products.items():
        product(a, b)  # warm-up: the library picks and caches its kernel
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product(a, b)
            best = min(best, time.perf_counter() - start)
        ceilings[kind] = 2 * size ** 3 / best / 1e9
    return {"gflops": ceilings, "how": f"torch {torch.__version__} {size}x{size}x{size} products, best of {repeats}, "
                                      f"{torch.get_num_threads()} threads"}


def runtime_packages(runtime: str) -> list[str]:
    """The distributions that may provide a runtime, as its module declares them (`PACKAGES`)."""
    import importlib

    try:
        module = importlib.import_module(f"edgefm.runtimes.{runtime}")
    except ImportError:
        return [runtime]
    return list(getattr(module, "PACKAGES", [runtime]))


def describe(threads: int | None, runtimes: list[str]) -> dict:
    model = _cpu()[0]
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    libraries = {"edgefm": package_version("edgefm"), "numpy": package_version("numpy")}
    for runtime in sorted(set(runtimes)):
        libraries[runtime] = package_version(*runtime_packages(runtime))
    return {"cpu": model, "logical_cores": os.cpu_count(), "cores_available": available,
            "threads_used": threads or f"runtime default (up to {available})",
            "isa": instruction_sets(),
            "gpus": gpus(), "os": platform.platform(), "python": platform.python_version(),
            "libraries": libraries}


def summary_lines(info: dict) -> list[str]:
    """The block as markdown bullet lines, for reports people paste."""
    isa = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in info["isa"].items())
    gpu = "; ".join(f"{g['name']} (compute capability {g.get('compute_capability', '?')}, driver {g['driver']}, "
                    f"{g['memory_mib']:.0f} MiB)" for g in info["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v)
    lines = [f"- CPU: {info['cpu']}; {info['cores_available']} of {info['logical_cores']} logical cores available, "
             f"threads used: {info['threads_used']}", f"- Instruction sets: {isa}", f"- GPU: {gpu}",
             f"- OS: {info['os']}, Python {info['python']}", f"- Libraries: {libs}"]
    if info.get("gemm_ceiling"):
        rates = ", ".join(f"{kind} {rate:,.0f}" for kind, rate in info["gemm_ceiling"]["gflops"].items())
        lines.append(f"- GEMM ceiling (GFLOP/s; GOP/s for int8): {rates} ({info['gemm_ceiling']['how']})")
    return lines
