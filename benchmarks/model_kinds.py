"""What each model kind costs on the served path, against the bare ONNX graph, one run.

    python -m benchmarks.model_kinds [--seconds 8] [--sequential 300]

The small MLP of benchmarks/serving.py ([B,64]→256→256→10, the same weights) served five
ways on one platform with the fast ingress, as `modelplane up` starts it: the ONNX graph;
a Python model doing the same arithmetic in NumPy (the cost of the Python path); the
graph with a `builtin:standardize` step before it (the cost of a builtin step) and with a
Python postprocess step after it too (a step from the archive); a TorchScript module. The
server side is pinned to core 0 and the load client (benchmarks.load_client) to core 1;
each endpoint serves one version, one replica. Results: benchmarks/results/model_kinds.json
and .md, every kind's sequential p50 and throughput as a ratio to the bare graph's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import (
    RESULTS,
    SMALL,
    body,
    fast_platform,
    manifest,
    measure,
    mlp,
    mlp_weights,
)

PYTHON_MLP = '''\
import numpy as np


class Model:
    batchable = True

    def load(self, path):
        weights = np.load(path + "/weights.npz")
        self.layers = [(weights[f"w{i}"], weights[f"b{i}"]) for i in range(len(weights.files) // 2)]

    def predict(self, inputs):
        x = inputs["input"]
        for index, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if index < len(self.layers) - 1:
                x = np.maximum(x, 0)
        return {"output": x}
'''

PASS_THROUGH = '''\
def keep(outputs):
    return {"output": outputs["output"]}
'''


def python_folder(root: Path) -> Path:
    folder = root / "python-mlp"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(PYTHON_MLP)
    arrays = {}
    for index, (w, b) in enumerate(mlp_weights(SMALL, 1)):
        arrays[f"w{index}"], arrays[f"b{index}"] = w, b
    np.savez(folder / "weights.npz", **arrays)
    return folder


def steps_folder(root: Path, *, postprocess: bool) -> Path:
    folder = root / ("steps-both" if postprocess else "steps-pre")
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(mlp(SMALL, 1, input_name="scaled"))
    (folder / "standardize.json").write_text(json.dumps(
        {"input": "input", "output": "scaled", "mean": [0.0] * SMALL[0], "scale": [1.0] * SMALL[0]}))
    if postprocess:
        (folder / "rules.py").write_text(PASS_THROUGH)
    return folder


def steps_manifest(*, postprocess: bool) -> dict[str, Any]:
    code = {"preprocess": "builtin:standardize", "graph": "model.onnx",
            "graph_inputs": [{"name": "scaled", "dtype": "float32", "shape": [None, SMALL[0]]}]}
    if postprocess:
        code["postprocess"] = "rules:keep"
    return {**manifest(SMALL), "code": code}


def torchscript_mlp() -> bytes:
    import torch

    modules: list[torch.nn.Module] = []
    layers = mlp_weights(SMALL, 1)
    for index, (w, b) in enumerate(layers):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T))
            linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if index < len(layers) - 1:
            modules.append(torch.nn.ReLU())
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Sequential(*modules)), buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sequential", type=int, default=300)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the server side; the load client pins itself to core 1
    work = Path(tempfile.mkdtemp(prefix="mpkinds"))
    kinds: dict[str, tuple[Any, dict[str, Any]]] = {
        "onnx": (mlp(SMALL, 1), manifest(SMALL)),
        "python": (python_folder(work), {**manifest(SMALL), "kind": "python",
                                         "code": {"entrypoint": "model:Model"}}),
        "onnx + builtin step": (steps_folder(work, postprocess=False),
                                steps_manifest(postprocess=False)),
        "onnx + builtin + archive steps": (steps_folder(work, postprocess=True),
                                           steps_manifest(postprocess=True)),
        "torchscript": (torchscript_mlp(), {**manifest(SMALL), "kind": "torchscript"}),
    }
    results: dict[str, Any] = {}
    payload = body(SMALL[0])
    with fast_platform("mpk") as (_, settings, client):
        from benchmarks.serving import wait_serving
        from serving.names import endpoint_url

        for index, (kind, (model, spec)) in enumerate(kinds.items()):
            name = f"kind-{index}"
            client.register_version(name, model, spec)
            client.deploy(name, f"{name}:1", scaling={"num_cpus": 0.5, "max_ongoing_requests": 64})
            wait_serving(endpoint_url(settings.url, name), {1}, {1: 100.0})
            print(f"  measuring {kind}")
            results[kind] = measure(endpoint_url(settings.url, name, "infer"), payload, args)
            print(f"    {results[kind]}")
            client.undeploy(name)
    bare = results["onnx"]
    report = {
        "results": results,
        "ratios": {kind: {"p50_vs_onnx": row["p50_ms"] / bare["p50_ms"],
                          "throughput_vs_onnx": row["throughput_rps"] / bare["throughput_rps"]}
                   for kind, row in results.items()},
        "settings": {"seconds": args.seconds, "sequential": args.sequential, "concurrency": 32,
                     "model": "small MLP [B,64]→256→256→10", "batching": "off",
                     "cpu": "server pinned to core 0, client to core 1", "ingress": "fast (HAProxy)"},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_kinds.json").write_text(json.dumps(report, indent=2))
    lines = ["# Model kinds on the served path", "",
             "The small MLP served as each kind, one version, one replica, fast ingress; "
             f"{args.sequential} sequential requests, then 32 concurrent for {args.seconds:g} s.",
             "", "| kind | seq p50 ms | seq p99 ms | req/s at 32 | p50 / onnx | req/s / onnx | failures |",
             "|---|---|---|---|---|---|---|"]
    for kind, row in results.items():
        ratio = report["ratios"][kind]
        lines.append(f"| {kind} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['throughput_rps']:.0f} | {ratio['p50_vs_onnx']:.2f} | "
                     f"{ratio['throughput_vs_onnx']:.2f} | "
                     f"{row.get('sequential_failures', 0) + row.get('failures', 0)} |")
    (RESULTS / "model_kinds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
