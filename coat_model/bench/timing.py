"""Timing for the benchmarks: a median of runs within a time budget, the practical matmul peak, FLOP counts."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, device, repeats: int, budget: float, min_runs: int = 0) -> tuple[float, int, float]:
    """(median seconds, timed runs, warm-up seconds) of ``fn()``: a warm-up run, then at least ``min_runs`` and up
    to ``repeats`` timed runs while the case stays within ``budget`` s. Without timed runs the warm-up is the time.
    """
    device = torch.device(device)
    times, start = [], time.perf_counter()
    for i in range(repeats + 1):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if i >= min_runs and time.perf_counter() - start + times[-1] > budget:
            break
    runs = times[1:] or times
    return statistics.median(runs), len(runs), times[0]


def matmul_peak(device, dtype=torch.float32, n: int | None = None, runs: int = 5) -> float:
    """Best FLOP/s of ``runs`` large square matmuls on ``device`` (the practical peak the floor is measured
    against; the best, not the median, since a busy machine only ever slows a run down)."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def count_flops(fn) -> int:
    """The FLOPs of one call of ``fn()`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def top_ops(fn, device, top: int = 12) -> list[dict]:
    """Where one call of ``fn()`` spends its time: the ``top`` operators by self time (``torch.profiler``, CPU and,
    on CUDA, device time), each with its share of the total, calls and input shapes of its costliest form."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, key))
    return [dict(op=e.key, share=getattr(e, key) / total, ms=getattr(e, key) / 1e3, calls=e.count)
            for e in events[:top]]
