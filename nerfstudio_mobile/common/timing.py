"""Wall-clock timing, one way for the whole toolkit: a warm-up call, then the median of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _call(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # CUDA calls return before the work is done
    return time.perf_counter() - start


def round_robin_seconds(
    works: dict[str, Callable[[], object]], repeats: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each work, calls interleaved so load from other processes hits all alike. `warmup`
    untimed rounds first pay for allocation and kernel selection."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for round_index in range(warmup + repeats):
        for name, work in works.items():
            seconds = _call(work)
            if round_index >= warmup:
                times[name].append(seconds)
    return times


def median_seconds(work: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls after `warmup` untimed ones."""
    return statistics.median(round_robin_seconds({"work": work}, repeats, warmup)["work"])
