"""benchmarks/timing.py: the statistics the A/B scripts print next to each median ratio, and the allocator set-up."""

from __future__ import annotations

import ctypes
import math
import platform
import random
import subprocess
import sys
from pathlib import Path

import pytest
from script_modules import load_script

TIMING = Path(__file__).resolve().parents[1] / "benchmarks" / "timing.py"


@pytest.fixture(scope="module")
def timing():
    return load_script("benchmarks/timing.py", "benchmark_timing")


def binomial_below(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) < k), summed term by term."""
    return sum(math.comb(n, i) for i in range(k)) / 2**n


def test_median_interval_of_31_runs_is_the_10th_smallest_and_largest(timing):
    values = [float(v) for v in range(31)]
    random.Random(0).shuffle(values)
    assert timing.median_interval(values) == (9.0, 21.0)
    # by hand: P(B < 10) = 0.0147 <= 0.025 < P(B < 11) = 0.0354, so coverage 1 - 2 * 0.0147 = 0.97
    assert binomial_below(31, 10) == pytest.approx(0.01472, abs=1e-5)
    assert binomial_below(31, 11) == pytest.approx(0.03537, abs=1e-5)


@pytest.mark.parametrize("n", [6, 9, 15, 31, 101])
def test_median_interval_is_the_narrowest_pair_with_95_percent_coverage(timing, n):
    low, high = timing.median_interval([float(v) for v in range(n)])
    k = int(low) + 1  # the interval is the k-th smallest and the k-th largest
    assert high == n - k
    assert 1 - 2 * binomial_below(n, k) >= 0.95
    assert 1 - 2 * binomial_below(n, k + 1) < 0.95


def test_too_few_runs_give_the_full_range(timing):
    assert timing.median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)


def test_verdict_names_an_interval_on_both_sides_of_the_target(timing):
    def at_most_105(ratio):
        return ratio <= 1.05

    assert timing.verdict(1.02, (1.01, 1.04), at_most_105) == "ok"
    assert timing.verdict(1.08, (1.06, 1.10), at_most_105) == "MISS"
    assert timing.verdict(1.04, (1.03, 1.06), at_most_105) == "ok, CI spans target"
    assert timing.verdict(1.06, (1.04, 1.07), at_most_105) == "MISS, CI spans target"


def test_steady_allocator_settings_fit_mallopts_int(timing):
    # Found broken: a trim threshold of 2**34 reached mallopt truncated to 0 (trim at every free).
    for parameter, value in timing.STEADY_MALLOPT:
        assert ctypes.c_int(parameter).value == parameter
        assert ctypes.c_int(value).value == value > 0


def test_glibc_accepts_the_steady_allocator_settings():
    # In a child process: mallopt changes the allocator of the whole process.
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('b', sys.argv[1]); "
            "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); print(b.steady_allocator())")
    result = subprocess.run([sys.executable, "-c", code, str(TIMING)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
