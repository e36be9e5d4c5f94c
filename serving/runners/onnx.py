"""One model version in ONNX Runtime: session, warm-up, batched and unbatched runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InferenceFailedError, InvalidRequestError
from serving.runners.base import Arrays, has_batch_axis, run_merged, zeros
from serving.schemas import TensorSignature, VersionConfig

log = logging.getLogger(__name__)


def available_providers(use_gpu: bool | None = None) -> list[str]:
    """CUDA first when this process can see a GPU and ORT was built with it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if use_gpu is not False and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRunner:
    """A loaded ONNX model; ``run`` is thread-safe and releases the GIL while it computes.

    ``inputs`` and ``outputs`` are the graph's own (a version with steps around the graph
    declares them apart from its outer signature)."""

    def __init__(self, config: VersionConfig, model_path: Path, *, use_gpu: bool | None = None,
                 inputs: list[TensorSignature] | None = None,
                 outputs: list[TensorSignature] | None = None, fed_by_caller: bool = True):
        import onnxruntime as ort

        self.config = config
        # Whether the graph's inputs are the request's own: only then is an input ONNX
        # Runtime refuses the caller's fault. Fed by a preprocess step, it is the version's
        # (a tokenizer that knows a word its graph has no embedding for).
        self.fed_by_caller = fed_by_caller
        self.inputs = inputs or config.inputs
        outputs = outputs or config.outputs
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
        self.output_names = [o.name for o in outputs]
        self.can_batch = has_batch_axis([*self.inputs, *outputs])
        self.is_async = False

    def run(self, arrays: Arrays) -> Arrays:
        """Run the model on validated inputs; every output is returned."""
        feed = {name: _to_onnx(value) for name, value in arrays.items()}
        try:
            results = self.session.run(self.output_names, feed)
        except Exception as error:  # ORT raises its own exception types per failure
            if self.fed_by_caller and _refused_input(error):
                # The caller's input, not the model, is at fault (an index out of the
                # table, inputs whose rows do not broadcast): a 400 anyone may cause, judged
                # against stable's share of them, never a 5xx counted against the version.
                raise InvalidRequestError(
                    f"{self.config.model}:{self.config.version} cannot run on this input: "
                    f"{str(error)[:300]}",
                    detail={"field": "inputs", "reason": "model_refused_input"}) from None
            raise InferenceFailedError(
                f"{self.config.model}:{self.config.version} failed: {str(error)[:300]}",
                detail={"version": self.config.version},
            ) from None
        return dict(zip(self.output_names, results, strict=True))

    def run_batch(self, items: list[Arrays]) -> list[Arrays | Exception]:
        """Run several requests as one batch along axis 0 and split the outputs back."""
        return run_merged(self.run, items)

    def warmup(self) -> None:
        """One inference on zeros so the first request pays no lazy initialisation."""
        self.run({spec.name: zeros(spec) for spec in self.inputs})


def _refused_input(error: Exception) -> bool:
    """Whether ONNX Runtime refused the inputs themselves: INVALID_ARGUMENT (a shape or an
    index out of range), or a failure to broadcast one input's rows against another's."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    return isinstance(error, InvalidArgument) or (
        isinstance(error, Fail) and "broadcast" in str(error))


def _to_onnx(value: np.ndarray) -> Any:
    # BYTES tensors decode to Python bytes; ORT string tensors want str.
    if value.dtype == object and value.size and isinstance(value.flat[0], bytes):
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value)
    return value
