"""One model version in ONNX Runtime: session, warm-up, batched and unbatched runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InferenceFailedError
from serving.schemas import TensorSignature, VersionConfig
from serving.validation import numpy_dtype

log = logging.getLogger(__name__)


def available_providers(use_gpu: bool | None = None) -> list[str]:
    """CUDA first when this process can see a GPU and ORT was built with it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if use_gpu is not False and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ModelRunner:
    """A loaded ONNX model; ``run`` is thread-safe and releases the GIL while it computes."""

    def __init__(self, config: VersionConfig, model_path: Path, *, use_gpu: bool | None = None):
        import onnxruntime as ort

        self.config = config
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Spinning threads burn a core while idle and starve neighbouring replicas.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.providers = available_providers(use_gpu)
        self.session = ort.InferenceSession(str(model_path), options, providers=self.providers)
        self.output_names = [o.name for o in config.outputs]
        self.can_batch = all(_batch_axis(spec) for spec in (*config.inputs, *config.outputs))

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on validated inputs; every output is returned."""
        feed = {name: _to_onnx(value) for name, value in arrays.items()}
        try:
            results = self.session.run(self.output_names, feed)
        except Exception as error:  # ORT raises its own exception types per failure
            raise InferenceFailedError(
                f"{self.config.model}:{self.config.version} failed: {str(error)[:300]}",
                detail={"version": self.config.version},
            ) from None
        return dict(zip(self.output_names, results, strict=True))

    def run_batch(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run several requests as one batch along axis 0 and split the outputs back."""
        if len(items) == 1:
            return [self.run(items[0])]
        rows = [next(iter(item.values())).shape[0] for item in items]
        merged = {name: np.concatenate([item[name] for item in items]) for name in items[0]}
        outputs = self.run(merged)
        bounds = np.cumsum(rows)[:-1]
        split = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(items))]

    def warmup(self) -> None:
        """One inference on zeros so the first request pays no lazy initialisation."""
        self.run({spec.name: _zeros(spec) for spec in self.config.inputs})


def _batch_axis(spec: TensorSignature) -> bool:
    return bool(spec.shape) and spec.shape[0] is None


def _zeros(spec: TensorSignature) -> np.ndarray:
    shape = tuple(1 if dim is None else dim for dim in spec.shape)
    if spec.dtype == "string":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(spec.dtype))


def _to_onnx(value: np.ndarray) -> Any:
    # BYTES tensors decode to Python bytes; ORT string tensors want str.
    if value.dtype == object and value.size and isinstance(value.flat[0], bytes):
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value)
    return value
