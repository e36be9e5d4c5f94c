"""Version benchmarks: a version's measured latency, throughput, CPU and memory.

A benchmark serves the version on a scratch replica with an endpoint's settings, sends a
short open-loop load through real HTTP, reads the replica's processes, deletes the
replica, and stores the figures on the version (``version_benchmarks``). The pipeline's
benchmark stage calls :func:`benchmark_version`; the REST API, the client and
``modelplane models benchmark`` start one in the background.
"""

from control_plane.benchmarking.schemas import (
    BenchmarkComparison,
    BenchmarkFigures,
    BenchmarkOut,
    BenchmarkSettings,
)
from control_plane.benchmarking.service import Benchmarks, benchmark_version, compare

__all__ = [
    "BenchmarkComparison",
    "BenchmarkFigures",
    "BenchmarkOut",
    "BenchmarkSettings",
    "Benchmarks",
    "benchmark_version",
    "compare",
]
