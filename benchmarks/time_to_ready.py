"""Time to ready: from nothing running to a model answering, as a new user gets there.

    python -m benchmarks.time_to_ready [--rounds 3] [--only modelplane,pytriton,fastapi]

modelplane: no Ray running and a fresh home (a new SQLite store and artifact folder), then
the commands a new user runs: ``modelplane up`` (each of its steps timed as it prints
it), ``modelplane models register`` (benchmarks/serving.py's small MLP, with a reference
profile as a trained version carries), ``modelplane deploy --wait``, and the first answer
of ``/infer``; then ``modelplane down`` and ``up`` again on the same home, which brings
the endpoint back from the store: how long a restart leaves it unanswered.

Peers (PyTriton, FastAPI + uvicorn) start the same model from their venvs
(benchmarks/peer_envs.py) as benchmarks/peers.py starts them, here on every core as
modelplane is: timed from the process's start to ``/ready``, and to its first answer.

Every server runs ``--rounds`` times, every other round in reverse order; the report gives
each figure's median and range. Run it on an otherwise idle machine with no Ray running.
Results: benchmarks/results/time_to_ready.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.serving import SMALL, body, mlp, profiled_manifest
from modelplane.ports import free_ports

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
MODELPLANE = str(Path(sys.executable).parent / "modelplane")
PEER_NAMES = ("pytriton", "fastapi")
ENDPOINT = "small"
ANSWER_TIMEOUT_S = 120


def first_answer(url: str, payload: bytes, timeout_s: float = ANSWER_TIMEOUT_S) -> float:
    """Seconds until ``url`` answers ``payload`` with 200 (connection refusals, 404s and
    503s of a server still starting are waited through)."""
    import httpx

    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        try:
            answer = httpx.post(url, content=payload, timeout=10.0,
                                headers={"content-type": "application/json"})
            if answer.status_code == 200:
                return time.monotonic() - started
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.05)
    raise RuntimeError(f"{url} gave no answer in {timeout_s:g} s; last: {last}")


def run_timed(command: list[str], env: dict[str, str], step: str) -> tuple[float, list[tuple[float, str]]]:
    """Run a CLI command: its wall time, and each line it printed with when (seconds
    from its start). A failure raises with its output."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    assert process.stdout is not None
    lines = [(time.monotonic() - started, line.rstrip()) for line in process.stdout]
    if process.wait() != 0:
        raise RuntimeError(f"{step} failed (exit {process.returncode}):\n"
                           + "\n".join(text for _, text in lines[-30:]))
    return time.monotonic() - started, lines


# What `up` prints as it goes, and the step each begins. A new head is launched first;
# the kernels, the modules and the store's migrations load beside its start, and only
# then is it waited for.
UP_STEPS = (("starting a local Ray head", "ray_head_launch"),
            ("loading the monitoring kernels", "kernels_modules_store"),
            ("waiting for the Ray head", "ray_head_wait"),
            ("starting Serve", "serve"),
            ("deploying the control plane", "control_plane"),
            ("modelplane is up", None))


def up_phases(lines: list[tuple[float, str]], total_s: float) -> dict[str, float]:
    """Seconds per step of ``up``, from when it printed each, in the order it printed
    them: ``cli_start`` before its first step (the interpreter and imports), each step
    until the next, ``after`` from 'modelplane is up' to the command's exit."""
    marks = [("cli_start", 0.0)]
    for prefix, name in UP_STEPS:
        at = next((t for t, text in lines if text.startswith(prefix)), None)
        if at is not None:
            marks.append((name or "after", at))
    marks.sort(key=lambda mark: mark[1])
    marks.append(("end", total_s))
    return {name: round(nxt - at, 2) for (name, at), (_, nxt) in itertools.pairwise(marks)}


def modelplane_round(workdir: Path, model_path: Path, manifest_path: Path, payload: bytes) -> dict[str, Any]:
    http_port, grpc_port = free_ports(2, "127.0.0.1")
    env = {**os.environ, "MODELPLANE_HOME": str(workdir / "home"),
           "MODELPLANE_HTTP_PORT": str(http_port), "MODELPLANE_GRPC_PORT": str(grpc_port)}
    url = f"http://127.0.0.1:{http_port}/v2/models/{ENDPOINT}/infer"
    row: dict[str, Any] = {}
    try:
        row["up_s"], lines = run_timed([MODELPLANE, "up"], env, "modelplane up")
        row["up_phases"] = up_phases(lines, row["up_s"])
        row["register_s"], _ = run_timed([MODELPLANE, "models", "register", ENDPOINT, str(model_path),
                                          "-m", str(manifest_path)], env, "models register")
        row["deploy_s"], _ = run_timed([MODELPLANE, "deploy", ENDPOINT, ENDPOINT, "--wait"], env,
                                       "deploy --wait")
        row["first_answer_s"] = first_answer(url, payload)
        row["ready_s"] = row["up_s"] + row["register_s"] + row["deploy_s"] + row["first_answer_s"]
        run_timed([MODELPLANE, "down"], env, "modelplane down")
        up_again, _ = run_timed([MODELPLANE, "up"], env, "modelplane up (restart)")
        row["restart_s"] = up_again + first_answer(url, payload)
    finally:
        subprocess.run([MODELPLANE, "down"], env=env, capture_output=True, timeout=300, check=False)
    return row


def peer_round(name: str, workdir: Path, payload: bytes) -> dict[str, Any]:
    from benchmarks.peers import PEERS, launch_peer

    started = time.monotonic()
    server = launch_peer(PEERS[name], "small", {"small1": mlp(SMALL, 1)}, workdir, cores=None)
    try:
        ready_s = time.monotonic() - started
        answered = first_answer(server.infer_url, payload)
        return {"ready_s": ready_s + answered, "to_ready_route_s": ready_s}
    finally:
        server.stop()


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def write(rows: dict[str, list[dict[str, Any]]], envs: dict[str, Any], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    summary = {name: {key: median_range([r[key] for r in runs if key in r])
                      for key in ("ready_s", "up_s", "register_s", "deploy_s", "first_answer_s",
                                  "restart_s", "to_ready_route_s") if any(key in r for r in runs)}
               for name, runs in rows.items() if runs}
    (RESULTS / "time_to_ready.json").write_text(json.dumps(
        {"rounds": args.rounds, "python": platform.python_version(), "venvs": envs,
         "runs": rows, "summary": summary}, indent=2) + "\n")
    labels = {"modelplane": "modelplane (up, register, deploy --wait, first answer)",
              "pytriton": "PyTriton 0.7.0 (process start to first answer)",
              "fastapi": "FastAPI + uvicorn (process start to first answer)"}
    lines = ["# Time to ready", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M:%S')}, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs, {args.rounds} rounds in alternating order; medians, "
             "with the lowest and highest over the rounds. From nothing running (no Ray, a "
             "fresh home) to the small MLP's first answer.", "",
             "| server | to first answer s | range s |", "|---|---|---|"]
    for name, figures in summary.items():
        median, low, high = figures["ready_s"]
        lines.append(f"| {labels[name]} | {median:.1f} | {low:.1f}-{high:.1f} |")
    runs = rows.get("modelplane") or []
    if runs:
        figures = summary["modelplane"]
        lines += ["", "modelplane by command (medians):", "",
                  "| step | s |", "|---|---|"]
        for key, label in (("up_s", "`modelplane up`"), ("register_s", "`modelplane models register`"),
                           ("deploy_s", "`modelplane deploy --wait`"),
                           ("first_answer_s", "first answer after deploy returned")):
            lines.append(f"| {label} | {figures[key][0]:.2f} |")
        phases = {name: statistics.median(r["up_phases"].get(name, 0.0) for r in runs)
                  for name in runs[0]["up_phases"]}
        lines += ["", "`modelplane up` by step (medians, s): "
                  + ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items()) + ".",
                  "", f"A restart (`modelplane down`, then `up` on the same home: the store "
                  f"brings the endpoint back) until the first answer: "
                  f"{figures['restart_s'][0]:.1f} s (range {figures['restart_s'][1]:.1f}-"
                  f"{figures['restart_s'][2]:.1f})."]
    (RESULTS / "time_to_ready.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(("modelplane", *PEER_NAMES)))
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ("modelplane", *PEER_NAMES)]
    if unknown or args.rounds < 1:
        parser.error(f"unknown server: {', '.join(unknown)}" if unknown else "--rounds must be >= 1")
    from benchmarks.peer_envs import EnvError, ensure
    from benchmarks.peers import PEERS

    envs: dict[str, Any] = {}
    for name in (s for s in chosen if s in PEER_NAMES):
        try:
            envs[name] = ensure(PEERS[name].env)
        except EnvError as error:
            print(f"{name}: skipped ({error})")
            chosen.remove(name)
    workdir = Path(tempfile.mkdtemp(prefix="time-to-ready-"))
    model = mlp(SMALL, 1)
    model_path, manifest_path = workdir / "small.onnx", workdir / "small.json"
    model_path.write_bytes(model)
    manifest_path.write_text(json.dumps(profiled_manifest(SMALL, model)))
    payload = body(SMALL[0])
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    try:
        for index in range(args.rounds):
            order = chosen if index % 2 == 0 else chosen[::-1]
            for name in order:
                scratch = workdir / f"{name}-{index}"
                scratch.mkdir()
                row = (modelplane_round(scratch, model_path, manifest_path, payload)
                       if name == "modelplane" else peer_round(name, scratch, payload))
                print(f"round {index + 1}: {name} {row['ready_s']:.1f} s", flush=True)
                rows[name].append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write(rows, envs, args)


if __name__ == "__main__":
    main()
