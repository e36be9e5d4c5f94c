"""The GPU path, proven on a machine with an NVIDIA GPU.

    scripts/gpu-check.sh [--seconds 10]     # sets up .venv with onnxruntime-gpu, then this
    python -m benchmarks.gpu_check [--seconds 10]

Three checks, each failing loudly rather than falling back to the CPU unseen:

1. ONNX Runtime: the large MLP ([B,512]→4096→4096→1000) on the CUDA execution provider
   against the CPU one in this process, rows/s at batch 1, 32 and 256, and the GPU memory
   the CUDA session holds (nvidia-smi, this process).
2. Serving: a private platform as `modelplane up` starts one, the large MLP deployed with
   one GPU per replica (``num_gpus: 1``, batching up to 32), called with tritonclient's
   binary protocol from 8 threads: requests/s, p50/p99, and the GPU memory of the replica's
   process (nvidia-smi: proof that the replica, not this process, runs on the GPU).
3. Training: a ``use_gpu: true`` job (one worker, digits) run to a registered version while
   nvidia-smi is sampled: the version, the job's samples/s, and the most GPU memory a
   process other than this one held meanwhile.

Results go to benchmarks/results/gpu.json and gpu.md with the GPU's name, driver and memory.
Without a GPU it says so and exits with status 2, before anything is installed or started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import HEAVY, fast_platform, manifest, mlp

RESULTS = Path(__file__).parent / "results"
NO_GPU = 2


class NoGpu(RuntimeError):
    """No NVIDIA GPU is visible here."""


def gpus() -> list[dict[str, str]]:
    """Each GPU nvidia-smi lists: name, driver, memory total/used (MiB)."""
    if shutil.which("nvidia-smi") is None:
        raise NoGpu("nvidia-smi is not on PATH")
    fields = ["name", "driver_version", "memory.total", "memory.used"]
    listed = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}",
                             "--format=csv,noheader,nounits"], capture_output=True, text=True,
                            timeout=30)
    rows = [line.split(", ") for line in listed.stdout.strip().splitlines() if line.strip()]
    if listed.returncode != 0 or not rows:
        raise NoGpu(f"nvidia-smi lists no GPU ({listed.stderr.strip()[:200] or 'no output'})")
    return [dict(zip(fields, row, strict=False)) for row in rows]


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB of GPU memory each process holds now."""
    listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                             "--format=csv,noheader,nounits"], capture_output=True, text=True,
                            timeout=30)
    held: dict[int, int] = {}
    for line in listed.stdout.strip().splitlines():
        pid, _, used = line.partition(", ")
        if pid.strip().isdigit() and used.strip().isdigit():
            held[int(pid)] = held.get(int(pid), 0) + int(used)
    return held


def rows_per_s(session: Any, batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).standard_normal((batch, HEAVY[0])).astype(np.float32)
    session.run(None, {"input": x})  # first run: CUDA kernels load and memory is reserved
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {"input": x})
        runs += 1
    return runs * batch / elapsed


def check_onnxruntime(model: bytes, seconds: float) -> dict[str, Any]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("this onnxruntime has no CUDA execution provider: `pip uninstall -y "
                           "onnxruntime && pip install -e '.[gpu]'` (scripts/gpu-check.sh does)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    cuda = ort.InferenceSession(model, options, providers=["CUDAExecutionProvider"])
    if cuda.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA session fell back to {cuda.get_providers()}")
    cpu = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    result: dict[str, Any] = {"batches": {}}
    for batch in (1, 32, 256):
        result["batches"][batch] = {"gpu_rows_per_s": rows_per_s(cuda, batch, seconds),
                                    "cpu_rows_per_s": rows_per_s(cpu, batch, seconds / 2)}
    result["session_gpu_mib"] = gpu_memory_by_pid().get(os.getpid(), 0)
    if not result["session_gpu_mib"]:
        raise RuntimeError("nvidia-smi shows no GPU memory held by the CUDA session's process")
    return result


def call_endpoint(url: str, endpoint: str, seconds: float, threads: int = 8) -> dict[str, Any]:
    import tritonclient.http as triton

    latencies: list[float] = []
    errors: list[str] = []
    x = np.random.default_rng(1).standard_normal((1, HEAVY[0])).astype(np.float32)

    def caller() -> None:
        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                answer = client.infer(endpoint, [tensor])
                if answer.as_numpy("output").shape != (1, HEAVY[-1]):
                    errors.append(f"odd output {answer.as_numpy('output').shape}")
            except Exception as error:  # every failure is counted, none ends the run
                errors.append(f"{type(error).__name__}: {str(error)[:200]}")
            latencies.append(time.perf_counter() - started)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {"requests": len(latencies), "failed": len(errors), "errors": errors[:5],
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * ordered[len(ordered) // 2],
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def check_serving(client: Any, url: str, model: bytes, seconds: float) -> dict[str, Any]:
    from benchmarks.serving import wait_serving

    client.register_version("gpu-large", model, manifest(HEAVY))
    client.deploy("gpu-large", "gpu-large:1", scaling={"num_gpus": 1, "num_cpus": 1},
                  batching={"max_batch_size": 32, "batch_wait_timeout_ms": 2})
    wait_serving(f"{url}/v2/models/gpu-large", {1}, {1: 100.0})
    result = call_endpoint(url, "gpu-large", seconds)
    replicas = {pid: mib for pid, mib in gpu_memory_by_pid().items() if pid != os.getpid()}
    if not replicas:
        raise RuntimeError("no process but this one holds GPU memory: the replica is not on "
                           "the GPU (is onnxruntime-gpu installed where Ray runs it?)")
    return result | {"replica_gpu_mib": max(replicas.values())}


def check_training(settings: Any, root: Path, client: Any) -> dict[str, Any]:
    spec = {
        "experiment": {"name": "gpu-check"},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [256, 128]},
        "data": {"dataset": "digits", "seed": 0},
        "hyperparameters": {"epochs": 5, "batch_size": 256},
        "resources": {"num_workers": 1, "use_gpu": True},
        "checkpoint": {"storage_path": str(root / "checkpoints")},
    }
    path = root / "gpu-job.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    env = {**os.environ, "MODELPLANE_URL": settings.url,
           "MODELPLANE_TOKEN": settings.admin_token_path.read_text().strip()}
    peak: dict[str, int] = {"mib": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            others = [m for pid, m in gpu_memory_by_pid().items() if pid != os.getpid()]
            peak["mib"] = max([peak["mib"], *others])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        job = subprocess.run([sys.executable, "-m", "training.job", "--config", str(path)],
                             env=env, capture_output=True, text=True, timeout=1800)
    finally:
        done.set()
        sampler.join()
    if job.returncode != 0:
        raise RuntimeError(f"the use_gpu job failed:\n{job.stdout[-2000:]}\n{job.stderr[-2000:]}")
    run = client.get_run(client.list_runs("gpu-check").items[0].id)
    samples = [m.value for m in client.metric_history(run.id, "samples_per_s")]
    if not peak["mib"]:
        raise RuntimeError("the use_gpu job finished but no worker held GPU memory")
    return {"seconds": time.monotonic() - started, "run": run.id,
            "version": run.params.get("registered_version"),
            "samples_per_s": statistics.median(samples) if samples else None,
            "worker_gpu_mib_peak": peak["mib"]}


def report(results: dict[str, Any]) -> str:
    gpu = results["gpus"][0]
    lines = [f"# GPU check: {gpu['name']} ({gpu['memory.total']} MiB, driver "
             f"{gpu['driver_version']})", "",
             "| batch | CUDA rows/s | CPU rows/s | ratio |", "|---|---|---|---|"]
    for batch, row in results["onnxruntime"]["batches"].items():
        lines.append(f"| {batch} | {row['gpu_rows_per_s']:,.0f} | {row['cpu_rows_per_s']:,.0f} "
                     f"| {row['gpu_rows_per_s'] / row['cpu_rows_per_s']:.1f}x |")
    serving, training = results["serving"], results["training"]
    lines += ["", f"CUDA session in this process: {results['onnxruntime']['session_gpu_mib']} MiB.",
              "", f"Served (1 GPU replica, batching 32, 8 tritonclient threads): "
              f"{serving['requests_per_s']:,.0f} req/s, p50 {serving['p50_ms']:.2f} ms, p99 "
              f"{serving['p99_ms']:.2f} ms, {serving['failed']} failed of {serving['requests']}; "
              f"replica process {serving['replica_gpu_mib']} MiB of GPU memory.",
              "", f"Training (use_gpu, 1 worker, digits, 5 epochs): {training['seconds']:.0f} s to "
              f"version {training['version']}, {training['samples_per_s'] or 0:,.0f} samples/s, "
              f"worker peak {training['worker_gpu_mib_peak']} MiB of GPU memory."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds per measurement.")
    args = parser.parse_args()
    try:
        listed = gpus()
    except NoGpu as error:
        print(f"gpu-check: no NVIDIA GPU here ({error}); run it on a machine with one",
              file=sys.stderr)
        raise SystemExit(NO_GPU) from None
    print(f"GPU: {listed[0]['name']}, {listed[0]['memory.total']} MiB")
    model = mlp(HEAVY, seed=0)
    results: dict[str, Any] = {"gpus": listed, "onnxruntime": check_onnxruntime(model, args.seconds)}
    print("onnxruntime on CUDA: ok")
    with fast_platform("mpgpu") as (root, settings, client):
        results["serving"] = check_serving(client, settings.url, model, args.seconds)
        print(f"serving on the GPU: {results['serving']['requests_per_s']:.0f} req/s")
        results["training"] = check_training(settings, root, client)
        print(f"training on the GPU: version {results['training']['version']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS / "gpu.md").write_text(report(results))
    print(report(results))
    if results["serving"]["failed"]:
        raise SystemExit(f"{results['serving']['failed']} served requests failed: "
                         f"{results['serving']['errors']}")


if __name__ == "__main__":
    main()
