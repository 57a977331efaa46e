"""Environment facts and timing that benchmarks and measurements share.

Example::

    seconds = timed(lambda: model(x), repeats=5)
    environment()["torch"]
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Any, Callable

import torch


def environment() -> dict[str, Any]:
    """Facts that decide how to read a number: date, device, versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "gpu": gpu, "gpu_count": torch.cuda.device_count() if gpu else 0}


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_tflops(device: torch.device) -> float:
    """bf16 dense peak TFLOP/s of ``device``, for MFU (0: unknown, so no MFU is reported).

    Example::

        peak_tflops(torch.device("cuda"))  # 989.0 on an H100 or H200
    """
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return 989.0 if ("H100" in name or "H200" in name) else 0.0
