"""Size and speed of a network: parameters, MACs, latency and peak memory of one forward pass.

Shared by ``scripts/benchmark.py`` (the side-by-side table in ``docs/benchmarks.md``) and the pipeline's results
table, so both measure the same way:

- MACs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward (matmuls, convolutions, attention), halved
  (a multiply-accumulate is two FLOPs); element-wise work (norms, activations) is not counted.
- latency: median wall time of ``runs`` calls after ``warmup`` calls, under ``inference_mode`` (CUDA: synchronised).
- peak memory: CUDA ``max_memory_allocated`` above what was allocated before the call; on CPU the rise of the
  process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` on Linux; elsewhere the rise of
  ``ru_maxrss``, which can only grow, so a later, smaller call reads 0).
"""

from __future__ import annotations

import ctypes
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["count_parameters", "count_macs", "median_seconds", "latency", "peak_memory", "machine"]


def count_parameters(network: nn.Module) -> int:
    """All parameters (trainable or not), shared ones once."""
    return sum(p.numel() for p in network.parameters())


def count_macs(network: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of ``network(inputs)`` counted by ``FlopCounterMode`` (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = network.training
    network.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(inputs)
    network.train(was_training)
    return counter.get_total_flops() // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], warmup: int = 3, runs: int = 20, device: torch.device | None = None) -> float:
    """Median wall time of ``fn()`` over ``runs`` calls after ``warmup`` calls (synchronised on CUDA)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}.")
    device = torch.device(device or "cpu")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latency(
    network: nn.Module,
    inputs: torch.Tensor,
    warmup: int = 3,
    runs: int = 20,
    amp: bool = False,
) -> float:
    """Median seconds of one inference forward of ``network`` on ``inputs`` (eval mode, ``inference_mode``; with
    ``amp`` under CUDA autocast)."""
    device = inputs.device
    network.eval()
    autocast = torch.autocast(device.type) if amp else nullcontext()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            network(inputs)

    return median_seconds(forward, warmup, runs, device)


def _read_hwm_kib() -> int | None:
    """The process's peak resident set (``VmHWM``) in KiB, None where ``/proc`` has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux: write 5 to ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS, so a later call's rise of the resident set is its own."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Bytes that ``fn()`` needs at its peak above what is already held (see the module docstring for how)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    _release_free_memory()
    if _reset_hwm() and (before := _read_hwm_kib()) is not None:
        fn()
        return max(0, (_read_hwm_kib() or before) - before) * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale


def machine(device: torch.device | str = "cpu") -> dict[str, str]:
    """What the figures were measured on: CPU model, torch threads, torch version, and the GPU if one is used."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    device = torch.device(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
