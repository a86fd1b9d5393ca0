"""What this machine offers a stage: the cores it may use and the device it should compute on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def best_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    import torch  # here, not at the top: the CLI and curation workers start without loading torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_speedup(size: int = 512, repeats: int = 5) -> float:
    """fp32 matmul time over bf16 matmul time on this CPU: a probe of a few tens of milliseconds."""
    import time

    import torch

    a, b = torch.randn(size, size), torch.randn(size, 4 * size)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up: the first call picks a kernel
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t)
        times[dtype] = best
    return times[torch.float32] / times[torch.bfloat16]


def training_precision(precision: str) -> tuple[str, str]:
    """`auto` made concrete for this machine, and why: bf16 autocast on a GPU with bf16 and on a CPU
    with native bf16 where a probe finds it faster; fp32 elsewhere (emulated bf16 is many times
    slower). Decided here, at run time, never from the machine the defaults were measured on."""
    import torch

    if precision != "auto":
        return precision, "as asked"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU computes in bf16"
        return "fp32", "the GPU has no bf16"
    if not native_bf16():
        return "fp32", "this CPU has no native bf16 (no avx512_bf16 or amx_bf16)"
    speedup = bf16_speedup()
    if speedup < 1.2:
        return "fp32", f"native bf16, but a probe found it only {speedup:.1f}x fp32's speed"
    return "bf16", f"native bf16 on this CPU, {speedup:.1f}x fp32's matmul speed in a probe"
