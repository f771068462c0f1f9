"""Timing for the A/B benchmark scripts: the clock, the CPU set-up, pairs of callables timed
alternately, and the statistics printed beside each median ratio.

Single-threaded CPU runs are timed with the thread's CPU time (`use_clock`), GPU runs with wall
time around synchronisation; `time_pair` returns medians and the median of the per-pair ratios
with a distribution-free confidence interval (`median_interval`).
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time

import torch
from torch import nn

from ponderlab.core.model import PonderModel
from ponderlab.core.registry import get_registry


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = {"name": "wall", "fn": time.perf_counter}


#: glibc `mallopt` settings of `steady_allocator`: (parameter, value). mallopt takes a
#: C int, and ctypes silently truncates a larger value (2**34 became a trim threshold
#: of 0, which trims the heap at every free: the opposite of the intent).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
STEADY_MALLOPT = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 2**31 - 1))


def steady_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS after every op.

    With the defaults, large CPU tensors are mmap-ed and unmapped per op, and freed
    memory at the top of the heap is trimmed, so each run pays page faults whose
    cost depends on the other tenants of a shared machine and on allocation order,
    not on the work compared. Both sides of every ratio run under the same setting
    (`--default-allocator` turns it off). No effect off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in STEADY_MALLOPT)


def use_clock(device: torch.device, threads: int) -> None:
    """Single-threaded CPU runs are timed by the thread's CPU time: on a shared machine wall
    time mostly measures the other tenants. GPU runs use wall time around synchronisation."""
    if device.type == "cpu" and threads == 1:
        CLOCK.update(name="thread CPU time", fn=time.thread_time)


def single_thread_cpu() -> torch.device:
    """The set-up of the CPU A/B scripts: one torch thread, the steady allocator,
    the thread's CPU time as the clock."""
    torch.set_num_threads(1)
    steady_allocator()
    device = torch.device("cpu")
    use_clock(device, 1)
    return device


def benchmark_device(name: str) -> torch.device:
    """`--device` of the A/B scripts: "cpu" gets `single_thread_cpu`; any other device its
    clock for the current thread count."""
    if name == "cpu":
        return single_thread_cpu()
    device = torch.device(name)
    use_clock(device, torch.get_num_threads())
    return device


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval for the median: a pair of order statistics.

    With n samples, the k-th smallest and the k-th largest bracket the true median
    with probability 1 - 2 P(Binomial(n, 1/2) < k); k is the largest value that keeps
    this at least `confidence` (n = 31: the 10th smallest and 10th largest, 97%).
    """
    ordered = sorted(values)
    n = len(ordered)
    tail = (1.0 - confidence) / 2
    k, below = 0, 0.0  # below = P(Binomial(n, 1/2) < k)
    while k < n // 2 and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    if k == 0:  # too few samples for this confidence: the full range
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def verdict(value: float, interval: tuple[float, float], meets) -> str:
    """The verdict on the median, ok or MISS (`meets(x)`: x meets the target), noting
    when the confidence interval reaches both sides of the target."""
    low_meets, high_meets = meets(interval[0]), meets(interval[1])
    word = "ok" if meets(value) else "MISS"
    return word if low_meets == high_meets else f"{word}, CI spans target"


def time_pair(first, second, *, repeats: int, warmup: int, device: torch.device) -> dict:
    """Time two callables alternately, `repeats` times each.

    Returns the median time of each (seconds), the median of the per-repeat
    ratios second/first (each ratio compares two runs made back to back, so slow
    drifts of a shared machine cancel out of it) and a 95% confidence interval for
    that median (`median_interval`).
    """
    clock = CLOCK["fn"]
    for _ in range(warmup):
        first()
        second()
    sync(device)
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(repeats):
        order = ((first, times[0]), (second, times[1]))
        for fn, bucket in order if index % 2 == 0 else order[::-1]:
            sync(device)
            start = clock()
            fn()
            sync(device)
            bucket.append(clock() - start)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    return {"first": statistics.median(times[0]), "second": statistics.median(times[1]),
            "ratio": statistics.median(ratios), "ratio_ci": median_interval(ratios)}


def inference_pass(model: nn.Module, ids: torch.Tensor):
    """A callable running one forward pass without autograd."""
    def run():
        with torch.no_grad():
            model(ids)
    return run


def train_pass(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor):
    """A callable running one training step's forward and backward (no optimizer)."""
    def run():
        model.zero_grad(set_to_none=True)
        model(ids, labels=labels).loss.backward()
    return run


def registry_model(backbone: dict, halting: dict, vocab: int, device: torch.device) -> PonderModel:
    registry = get_registry()
    backbone_info = registry.get("backbone", backbone["name"])
    halting_info = registry.get("halting", halting["name"])
    torch.manual_seed(0)
    model = PonderModel(
        backbone_info.cls(backbone_info.cls.config_class.model_validate(backbone), vocab_size=vocab),
        halting_info.cls,
        halting_info.cls.config_class.model_validate(halting),
        vocab_size=vocab,
    )
    return model.to(device)
