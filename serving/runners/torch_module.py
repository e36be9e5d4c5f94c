"""A torch model run by torch in the replica, on a GPU when the replica has one: a
TorchScript module (``torch.jit.save``, kind ``torchscript``) or an exported program
(``torch.export.save``, kind ``torch_export``; torch deprecates TorchScript in its favour).
Inputs are passed to ``forward`` in the order the signature declares them; a tensor, a
tuple or list of tensors (in the declared output order) or a dict of them by name comes
back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from serving.runners.base import (
    Arrays,
    call_model,
    conform_outputs,
    has_batch_axis,
    input_rows,
    run_merged,
    zeros,
)
from serving.schemas import VersionConfig

_THREADS = threading.Lock()


class TorchRunner:
    def __init__(self, config: VersionConfig, model_path: Path, *, use_gpu: bool | None = None) -> None:
        import torch

        if any(spec.dtype == "string" for spec in config.inputs):
            raise ValueError("a torch model takes tensors: string inputs need a python model")
        with _THREADS:
            # One process-wide setting: the replica's threads per model, as ONNX Runtime's.
            torch.set_num_threads(config.intra_op_threads)
        self.device = torch.device("cuda" if use_gpu is not False and torch.cuda.is_available()
                                   else "cpu")
        self.providers = [str(self.device)]
        self.config = config
        if config.kind == "torch_export":
            self.module = torch.export.load(str(model_path)).module().to(self.device)
        else:
            self.module = torch.jit.load(str(model_path), map_location=self.device)
            self.module.eval()
        self.can_batch = has_batch_axis([*config.inputs, *config.outputs])
        self.is_async = False

    def run(self, arrays: Arrays) -> Arrays:
        import torch

        tensors = [torch.from_numpy(_writable(arrays[spec.name])).to(self.device)
                   for spec in self.config.inputs]
        with torch.inference_mode():  # TorchScript raises its own error types
            result = call_model(self.config, "forward", self.module, *tensors)
        return conform_outputs(self.config, self._named(result), input_rows(arrays), what="forward")

    def _named(self, result: Any) -> Any:
        names = [spec.name for spec in self.config.outputs]
        if isinstance(result, dict):
            return {str(k): _numpy(v) for k, v in result.items()}
        if isinstance(result, tuple | list):
            if len(result) != len(names):
                return {f"#{i}": None for i in range(len(result))}  # conform names the gap
            return {name: _numpy(value) for name, value in zip(names, result, strict=True)}
        return {names[0]: _numpy(result)}

    def run_batch(self, items: list[Arrays]) -> list[Arrays | Exception]:
        return run_merged(self.run, items)

    def warmup(self) -> None:
        self.run({spec.name: zeros(spec) for spec in self.config.inputs})


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous array torch may share: a copy of a read-only one (a request's inputs,
    which the monitoring and the shadow read as sent; on the CPU the tensor is the array,
    and a module's in-place op wrote into them)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()
