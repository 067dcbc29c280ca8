"""Benchmarks a user runs with one command: ``edgeseg bench`` (configurations against their
baselines) and ``edgeseg bench --zoo`` (every architecture, accuracy against latency)."""

from edgeseg.bench.runner import BenchConfig, run_bench
from edgeseg.bench.zoo import run_zoo

__all__ = ["BenchConfig", "run_bench", "run_zoo"]
