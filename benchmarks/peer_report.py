"""The peer servers benchmark's results: peers.json, peers.md (table and goal ratios), peers.png.

Written by benchmarks/peers.py; a goal whose rows are missing (a server not run, skipped or
failed) reads "n/a" rather than a number.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

# (name, numerator (server, model, field), denominator, op, goal)
GOALS = [
    ("modelplane canary / PyTriton, small, throughput",
     ("modelplane-canary", "small", "throughput_rps"), ("pytriton", "small", "throughput_rps"), ">=", 1.0),
    ("modelplane canary / FastAPI, small, sequential p50",
     ("modelplane-canary", "small", "p50_ms"), ("fastapi", "small", "p50_ms"), "<=", 1.0),
    # Not one of issue 17's goals: the proxy hop every modelplane request takes, in front of
    # FastAPI too, to tell that hop from modelplane's own path.
    ("modelplane canary / FastAPI behind the same HAProxy, small, sequential p50",
     ("modelplane-canary", "small", "p50_ms"), ("fastapi-haproxy", "small", "p50_ms"), "<=", 1.0),
    ("modelplane one version / PyTriton, small, throughput",
     ("modelplane", "small", "throughput_rps"), ("pytriton", "small", "throughput_rps"), ">=", 1.2),
    ("modelplane batched / PyTriton, large, throughput",
     ("modelplane-batched", "large", "throughput_rps"), ("pytriton", "large", "throughput_rps"), ">=", 1.2),
]


# The figures a row reports as its median over the rounds.
MEDIANS = ("throughput_rps", "p50_ms", "p99_ms", "cpu_ms_per_request")


def combine(rounds: list[list[dict[str, Any]]], order: list[str]) -> list[dict[str, Any]]:
    """One row per server and model from each round's rows: each of ``MEDIANS`` is the
    median over the rounds and failures are summed. A server that did not run in every
    round (skipped, failed) gets the first such round's status and no figures; a
    tritonclient check counts as passed only where it passed in every round."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rows in rounds:
        for row in rows:
            grouped.setdefault((row["server"], row["model"]), []).append(row)
    combined = []
    for runs in sorted(grouped.values(), key=lambda runs: order.index(runs[0]["server"])):
        row = {key: runs[0][key] for key in ("server", "label", "model", "settings") if key in runs[0]}
        failed = [(index, run) for index, run in enumerate(runs, 1) if run.get("status") != "ok"]
        if failed:
            index, run = failed[0]
            row["status"] = run["status"] if len(runs) == 1 else f"round {index}: {run['status']}"
            combined.append(row)
            continue
        row.update({key: statistics.median(run[key] for run in runs) for key in MEDIANS})
        row["failures"] = sum(run["failures"] for run in runs)
        for check in ("tritonclient_json", "tritonclient_binary"):
            row[check] = next((run[check] for run in runs if run.get(check) != "yes"), "yes")
        row["rounds"] = [{key: run[key] for key in (*MEDIANS, "failures")} for run in runs]
        row["status"] = "ok"
        combined.append(row)
    return combined


def value(rows: list[dict[str, Any]], server: str, model: str, key: str) -> float | None:
    for row in rows:
        if row["server"] == server and row["model"] == model and row.get("status") == "ok":
            return row[key]
    return None


def ratio(rows: list[dict[str, Any]], top: tuple[str, str, str],
          bottom: tuple[str, str, str]) -> float | None:
    a, b = value(rows, *top), value(rows, *bottom)
    return a / b if a is not None and b else None


def ratios(rows: list[dict[str, Any]],
           rounds: list[list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Each goal's ratio of the medians, met or not, and its range over ``rounds``."""
    found = []
    for name, top, bottom, op, goal in GOALS:
        measured = ratio(rows, top, bottom)
        met = None if measured is None else (measured >= goal if op == ">=" else measured <= goal)
        each = [ratio(rows_of_round, top, bottom) for rows_of_round in rounds or []]
        spread = [r for r in each if r is not None]
        found.append({"name": name, "value": measured, "op": op, "goal": goal, "met": met,
                      "per_round": each,
                      "range": (min(spread), max(spread)) if len(spread) > 1 else None})
    return found


def mark(check: str | None) -> str:
    return "" if check is None else "yes" if check == "yes" else "**no**"


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| server | model | req/s at 32 | seq p50 ms | seq p99 ms | CPU ms/request | failures "
             "| tritonclient JSON | tritonclient binary | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("status") == "ok":
            figures = (f"{row['throughput_rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                       f"{row['cpu_ms_per_request']:.2f} | {row['failures']}")
        else:
            figures = " |  |  |  | "
        status = row.get("status", "")
        status = status if len(status) < 120 else status[:117] + "..."
        status = status.replace("|", "/").replace("\n", " ")
        lines.append(f"| {row['label']} | {row['model']} | {figures} | {mark(row.get('tritonclient_json'))} "
                     f"| {mark(row.get('tritonclient_binary'))} | {status} |")
    return lines


def write(rows: list[dict[str, Any]], envs: dict[str, Any], settings: dict[str, Any],
          results: str = "peers", rounds: list[list[dict[str, Any]]] | None = None) -> None:
    """``results``.json, .md and .png in benchmarks/results (a partial run keeps its own);
    ``rows`` as :func:`combine` makes them from ``rounds``."""
    goals = ratios(rows, rounds)
    RESULTS.mkdir(exist_ok=True)
    report = {"settings": settings, "venvs": envs, "rows": rows, "goals": goals}
    (RESULTS / f"{results}.json").write_text(json.dumps(report, indent=2, default=str))
    count = settings.get("rounds", 1)
    lines = ["# Peer servers benchmark", "",
             f"{settings['cpu']}; {settings['concurrency']} concurrent requests for "
             f"{settings['seconds']:g} s, {settings['sequential']} sequential requests; "
             f"{settings['onnxruntime']}. CPU ms/request: user + system time of every process "
             "of the server over the throughput run, divided by the requests it answered.", ""]
    if count > 1:
        lines += [f"Every server ran {count} times, the list in alternating order; each figure "
                  "is the median of its runs, each goal the ratio of the medians, with its "
                  "lowest and highest over the rounds.", ""]
    lines += [*table(rows), "",
             "| goal | measured | range over the rounds | target | met |", "|---|---|---|---|---|"]
    for goal in goals:
        measured = "n/a" if goal["value"] is None else f"{goal['value']:.2f}"
        spread = "" if goal["range"] is None else f"{goal['range'][0]:.2f}-{goal['range'][1]:.2f}"
        met = "n/a" if goal["met"] is None else "yes" if goal["met"] else "**no**"
        lines.append(f"| {goal['name']} | {measured} | {spread} | {goal['op']} {goal['goal']} | {met} |")
    notes = [f"- {row['label']} ({row['model']}), tritonclient {mode}: {row[key]}"
             for row in rows for mode, key in (("JSON", "tritonclient_json"), ("binary", "tritonclient_binary"))
             if row.get(key, "yes") != "yes"]
    if notes:
        lines += ["", "tritonclient calls that failed:", *notes]
    settings_lines = sorted({f"- {row['label']}: {row['settings']}" for row in rows if row.get("settings")})
    if settings_lines:
        lines += ["", "Server settings:", *settings_lines]
    if envs:
        lines += ["", "| venv | install s | size MB |", "|---|---|---|"]
        for name, env in envs.items():
            if "error" in env:
                lines.append(f"| {name} | failed | |")
            else:
                took = "reused" if env["reused"] else f"{env['install_s']:.0f}"
                lines.append(f"| {name} | {took} | {env['size_mb']:.0f} |")
    (RESULTS / f"{results}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    chart(rows, RESULTS / f"{results}.png")


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput per server, one panel per model (their scales differ a hundredfold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in ("small", "large") if any(r["model"] == m for r in rows)]
    if not models:
        return
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        shown = [r for r in rows if r["model"] == model]
        heights = [r["throughput_rps"] if r.get("status") == "ok" else 0.0 for r in shown]
        bars = axis.bar(range(len(shown)), heights,
                        color=["tab:blue" if r["server"].startswith("modelplane") else "tab:gray"
                               for r in shown])
        for bar, row, height in zip(bars, shown, heights, strict=True):
            text = f"{height:.0f}" if row.get("status") == "ok" else row.get("status", "")[:7]
            axis.annotate(text, (bar.get_x() + bar.get_width() / 2, height), ha="center",
                          va="bottom", fontsize=8)
        axis.set_xticks(range(len(shown)), [r["label"].split(" (")[0].split(" +")[0]
                                            if not r["server"].startswith("modelplane")
                                            else r["label"] for r in shown],
                        rotation=30, ha="right", fontsize=8)
        axis.set_title(f"{model} MLP, 32 concurrent requests")
        axis.set_ylabel("requests/s")
        if heights and not any(math.isnan(h) for h in heights):
            axis.set_ylim(0, max([*heights, 1.0]) * 1.15)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
