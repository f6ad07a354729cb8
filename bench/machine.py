"""The machine a benchmark ran on, reported beside its figures so that results from different kinds of machine
are never compared as if equal.

`machine_info` returns a dict: the CPU model, its bfloat16 support (AMX, AVX512-BF16, Arm's BF16 or none,
from the CPU flags and PyTorch's own checks, with PyTorch's CPU kernel level), the measured float32 and
bfloat16 matrix-multiply rates of the CPU, and, when a GPU is visible, its name, memory, CUDA version and
measured bfloat16 and float32 rates. `machine_markdown` renders it as a markdown block.

The CPU rate is that of ``F.linear`` on a (2048, 480) input and a (1920, 480) weight, the shape of ESM-2
35M's feed-forward up-projection on a batch of tokens, with the process's torch threads: what a CPU job of
bacflow can hope for. On a CPU without native bfloat16 (AVX2 only) the bfloat16 rate is several times
below the float32 one; with AMX it is above. The GPU rate is that of an 8192 x 8192 x 8192 product.

Bench scripts import it from their own folder (``from machine import ...``), which Python puts first on
the path when it runs a script.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

#: (tokens, input features, output features) of the CPU's measured product.
CPU_SHAPE = (2048, 480, 1920)
GPU_SIZE = 8192
#: CPU flags (as /proc/cpuinfo names them) that give native bfloat16 arithmetic, best first.
BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "bf16": "Arm BF16"}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's ``model name``, or Arm's ``CPU part``), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where /proc/cpuinfo is not there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    except OSError:
        pass
    return set()


def bf16_support(flags: set[str] | None = None) -> dict[str, Any]:
    """Native bfloat16 on the CPU with these flags (default this one's): ``native`` is the best of AMX, AVX512-BF16,
    Arm BF16, or "none"; with PyTorch, its CPU kernel level and its own checks."""
    flags = cpu_flags() if flags is None else flags
    found = [name for flag, name in BF16_FLAGS.items() if flag in flags]
    support: dict[str, Any] = {"native": found[0] if found else "none", "flags": sorted(set(BF16_FLAGS) & flags)}
    try:
        import torch
    except ImportError:
        return support
    support["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    # PyTorch's own checks (private, so looked up rather than relied on); they agree with the flags.
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None:
            support[f"torch{name.removeprefix('_is')}"] = bool(check())
    return support


def matmul_rate(device: str, dtype: str, seconds: float = 1.0) -> float:
    """Measured FLOP/s of matrix products in `dtype` on `device` ("cpu" or "cuda"), after one untimed run."""
    import torch
    import torch.nn.functional as F

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    if device == "cpu":
        tokens, features, outputs = CPU_SHAPE
        a = torch.randn(tokens, features, dtype=torch_dtype, generator=generator)
        b = torch.randn(outputs, features, dtype=torch_dtype, generator=generator)
        product, flops = (lambda: F.linear(a, b)), 2 * tokens * features * outputs
    else:
        a, b = (torch.randn(GPU_SIZE, GPU_SIZE, device=device, dtype=torch_dtype, generator=generator) for _ in "ab")
        product, flops = (lambda: a @ b), 2 * GPU_SIZE**3
    product()
    synchronize = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    synchronize()
    runs, started = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - started < seconds:
        product()
        runs += 1
        if device != "cpu" and runs % 8 == 0:
            synchronize()  # the queue must not run far ahead of the clock
    synchronize()
    return flops * runs / (time.perf_counter() - started)


def machine_info(seconds: float = 1.0, gpu: bool | None = None) -> dict[str, Any]:
    """The machine: CPU model and bf16 support, measured CPU rates (each over `seconds`), and the GPU (measured
    too) when `gpu` is true, or, by default, when one is visible."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "bf16": bf16_support(),
    }
    try:
        import torch
    except ImportError:
        return info | {"torch": None, "gpu": None}
    tokens, features, outputs = CPU_SHAPE
    info |= {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_matmul": f"F.linear ({tokens}, {features}) by ({outputs}, {features})",
        "cpu_matmul_gflop_per_s": {
            dtype: matmul_rate("cpu", dtype, seconds) / 1e9 for dtype in ("float32", "bfloat16")
        },
        "gpu": None,
    }
    if gpu is None:
        gpu = torch.cuda.is_available()
    if gpu:
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": properties.name,
            "count": torch.cuda.device_count(),
            "compute_capability": f"{properties.major}.{properties.minor}",
            "memory_gib": properties.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "matmul": f"{GPU_SIZE} x {GPU_SIZE} x {GPU_SIZE}",
            "matmul_tflop_per_s": {
                dtype: matmul_rate("cuda", dtype, seconds) / 1e12 for dtype in ("bfloat16", "float32")
            },
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return info


def machine_markdown(info: dict[str, Any]) -> str:
    """`machine_info`'s dict as a markdown block (a heading-free list, to sit under a report's own heading)."""
    bf16 = info["bf16"]
    native = bf16["native"]
    support = (
        f"{native} ({', '.join(bf16['flags'])})" if native != "none" else "none (no AMX, AVX512-BF16 or Arm BF16 flag)"
    )
    if "torch_cpu_capability" in bf16:
        support += f"; torch's CPU kernels: {bf16['torch_cpu_capability']}"
    lines = [
        f"- CPU: `{info['cpu_model']}`, {info['cpus']} CPUs; {info['platform']}; Python {info['python']}, "
        f"torch {info['torch'] or 'not installed'}",
        f"- bfloat16 on the CPU: {support}",
    ]
    if info["torch"]:
        rates = info["cpu_matmul_gflop_per_s"]
        lines.append(
            f"- measured CPU matrix products ({info['cpu_matmul']}, {info['torch_threads']} torch threads): "
            f"float32 {rates['float32']:,.0f} GFLOP/s, bfloat16 {rates['bfloat16']:,.0f} GFLOP/s"
        )
    gpu = info.get("gpu")
    if gpu:
        rates = gpu["matmul_tflop_per_s"]
        lines.append(
            f"- GPU: {gpu['name']}"
            + (f" (1 of {gpu['count']})" if gpu["count"] > 1 else "")
            + f", compute capability {gpu['compute_capability']}, {gpu['memory_gib']:.0f} GiB, CUDA {gpu['cuda']}; "
            f"measured {gpu['matmul']} products: bfloat16 {rates['bfloat16']:,.0f} TFLOP/s, float32 "
            f"{rates['float32']:,.0f} TFLOP/s (TF32 {'on' if gpu['tf32_matmul'] else 'off'})"
        )
    else:
        lines.append("- GPU: none")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(machine_markdown(machine_info()), end="")
