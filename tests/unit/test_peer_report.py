"""The peer benchmark's rounds: what benchmarks/results/peers.md reports from several runs of
each server (medians, summed failures, a failed round failing the row, each goal's range)."""

from __future__ import annotations

from typing import Any

from benchmarks.peer_report import combine, ratios


def run(server: str, rps: float, p50: float, *, failures: int = 0, binary: str = "yes",
        model: str = "small") -> dict[str, Any]:
    return {"server": server, "label": server, "model": model, "status": "ok",
            "throughput_rps": rps, "p50_ms": p50, "p99_ms": 3 * p50, "cpu_ms_per_request": 1000 / rps,
            "failures": failures, "tritonclient_json": "yes", "tritonclient_binary": binary}


def test_each_figure_is_its_median_over_the_rounds_and_failures_add_up() -> None:
    rounds = [[run("pytriton", 1600, 3.2), run("modelplane", 2000, 0.6)],
              [run("modelplane", 2400, 0.5, failures=2), run("pytriton", 1700, 3.0)],
              [run("pytriton", 1500, 3.4), run("modelplane", 1900, 0.7, binary="no: 400")]]
    rows = combine(rounds, ["pytriton", "modelplane"])
    assert [row["server"] for row in rows] == ["pytriton", "modelplane"]  # the chosen order
    modelplane = rows[1]
    assert modelplane["throughput_rps"] == 2000 and modelplane["p50_ms"] == 0.6
    assert modelplane["p99_ms"] == 3 * 0.6
    assert modelplane["cpu_ms_per_request"] == 1000 / 2000
    assert modelplane["failures"] == 2
    assert modelplane["tritonclient_binary"] == "no: 400"  # a check passes only if it always did
    assert [r["throughput_rps"] for r in modelplane["rounds"]] == [2000, 2400, 1900]


def test_a_server_that_failed_in_one_round_has_no_figures() -> None:
    broken = {"server": "kserve", "label": "kserve", "model": "small", "status": "failed: no answer"}
    rows = combine([[run("kserve", 1500, 0.9)], [broken]], ["kserve"])
    assert rows == [{"server": "kserve", "label": "kserve", "model": "small",
                     "status": "round 2: failed: no answer"}]
    assert combine([[broken]], ["kserve"])[0]["status"] == "failed: no answer"  # one round: as is


def test_a_goal_is_the_ratio_of_the_medians_with_its_range_over_the_rounds() -> None:
    rounds = [[run("pytriton", 1600, 3.2), run("modelplane", 2000, 0.6)],
              [run("pytriton", 1700, 3.0), run("modelplane", 2400, 0.5)],
              [run("pytriton", 1500, 3.4), run("modelplane", 1700, 0.7)]]
    goals = {g["name"]: g for g in ratios(combine(rounds, ["pytriton", "modelplane"]), rounds)}
    one_version = goals["modelplane one version / PyTriton, small, throughput"]
    assert one_version["value"] == 2000 / 1600 and one_version["met"]  # 1.25 against 1.2
    assert one_version["per_round"] == [2000 / 1600, 2400 / 1700, 1700 / 1500]
    assert one_version["range"] == (1700 / 1500, 2400 / 1700)  # one round fell short
    canary = goals["modelplane canary / PyTriton, small, throughput"]  # no canary rows
    assert canary["value"] is None and canary["met"] is None and canary["range"] is None
