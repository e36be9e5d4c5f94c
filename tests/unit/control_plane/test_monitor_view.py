"""`modelplane monitor` fits the terminal: a row per version when wide, stacked when narrow."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from control_plane.cli.monitoring import render

HEADINGS = ("req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "drift", "missing", "out of range",
            "rejected", "last request", "accuracy", "anomalies")


def _version(accuracy: float, drifted: bool) -> dict[str, Any]:
    return {
        "throughput_rps": 41.25, "p50_ms": 1.25, "p95_ms": 3.5, "p99_ms": 8.75, "error_rate": 0.0,
        "drift": {"verdict": "drift" if drifted else "ok",
                  "drifted_features": ["radius"] if drifted else [],
                  "features": {"radius": {"test": "ks", "p_value": 0.0001, "drifted": drifted}}},
        "quality": {"missing": 0, "out_of_range": 3, "rejected_total": 0, "last_request_age_s": 1},
        "accuracy": {"labelled": 120, "accuracy": accuracy, "f1": 0.9},
        "anomalies": {},
    }


STATS = {"versions": {"1": _version(0.93, False), "2": _version(0.5, True)}}


def _shown(width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(render("iris", STATS, 60, width=width))
    return console.export_text().splitlines()


def test_a_wide_terminal_gets_one_row_per_version() -> None:
    lines = _shown(200)
    header = next(line for line in lines if "version" in line and "anomalies" in line)
    assert all(heading in header for heading in HEADINGS)
    assert any("acc 0.93 F1 0.9 (n=120)" in line and "41.25" in line for line in lines)


def test_an_80_column_terminal_gets_every_figure_stacked_unwrapped() -> None:
    lines = _shown(80)
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "v1" in line and "v2" in line)
    assert "version" not in header
    for heading in HEADINGS:
        assert any(line.startswith(f"│ {heading} ") for line in lines), heading
    assert any("acc 0.93 F1 0.9 (n=120)" in line and "acc 0.5 F1 0.9 (n=120)" in line
               for line in lines)
    assert any("DRIFT radius" in line for line in lines)
    assert any(line.startswith("drift by feature (adjusted p-value; inputs, then predictions)")
               for line in lines)
