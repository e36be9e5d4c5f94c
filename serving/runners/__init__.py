"""Model runners: one loaded version of any kind behind one interface, so routing,
batching, monitoring, shadows and rollouts never know which kind of model they serve.

Every runner has ``config``, ``can_batch`` (requests may be merged along axis 0),
``is_async`` (``run_async`` is awaited on the event loop instead of ``run`` on a worker
thread), ``run``, ``run_batch`` and ``warmup``. Kinds: an ONNX graph (ONNX Runtime), an
ONNX graph with Python steps around it, a Python model, a TorchScript module or an
exported torch program.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from serving.runners.base import Arrays
from serving.schemas import VersionConfig


class Runner(Protocol):
    config: VersionConfig
    can_batch: bool
    is_async: bool

    def run(self, arrays: Arrays) -> Arrays: ...

    def run_batch(self, items: list[Arrays]) -> list[Arrays | Exception]: ...

    def warmup(self) -> None: ...


def build_runner(config: VersionConfig, artifact: Path, *, use_gpu: bool | None = None) -> Any:
    """The runner for ``config`` over its verified artifact file (not yet warmed up)."""
    from serving.runners import archive

    if config.kind == "python":
        from serving.runners.python import PythonRunner

        return PythonRunner(config, archive.unpack(artifact, config.digest))
    if config.kind in ("torchscript", "torch_export"):
        from serving.runners.torch_module import TorchRunner

        return TorchRunner(config, artifact, use_gpu=use_gpu)
    if config.code is not None and config.code.is_steps:
        from serving.runners.steps import StepsRunner

        return StepsRunner(config, archive.unpack(artifact, config.digest), use_gpu=use_gpu)
    from serving.runners.onnx import OnnxRunner

    return OnnxRunner(config, artifact, use_gpu=use_gpu)


def load_runner(config: VersionConfig, *, cache_dir: Path | None = None) -> Any:
    """Download (or reuse) the version's artifact, verify its digest, build and warm up."""
    from modelplane.settings import get_settings
    from serving.artifact_cache import fetch_artifact

    # In a replica MODELPLANE_TOKEN is the replicas' read-only token, when reads need one.
    path = fetch_artifact(config.artifact_url, config.digest, cache_dir=cache_dir,
                          token=get_settings().token)
    runner = build_runner(config, path)
    runner.warmup()
    return runner
