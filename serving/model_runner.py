"""One model version in ONNX Runtime: session, warm-up, batched and unbatched runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InferenceFailedError
from serving.schemas import TensorSignature, VersionConfig
from serving.validation import numpy_dtype

log = logging.getLogger(__name__)

# A request whose run is estimated under this runs on the event loop itself. Handing a run
# to a worker thread and back costs ~17 µs of CPU per request at 32 in flight and more
# one at a time (submit, wake-up, hand-back), more than a small model's whole run; a run
# this short delays the requests queued behind it by no more than the hand-off would.
INLINE_RUN_LIMIT_S = 50e-6
WARMUP_RUNS = 20
ROWS_MEASURED = 16  # the second batch size timed, for the per-row cost


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
        self.inline_rows = 0  # requests of at most this many rows run inline (see warmup)

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
        """Run the model until its first-call costs are paid, and time it: a request of
        ``inline_rows`` rows or fewer is estimated to run under :data:`INLINE_RUN_LIMIT_S`.

        The estimate is the median of repeated runs at one row and at
        :data:`ROWS_MEASURED` rows (a fixed cost and a per-row cost). Timed while other
        replicas may be starting, it errs long, so a model near the limit stays in the pool.
        """
        one = {spec.name: _zeros(spec) for spec in self.config.inputs}
        single = _median_run_s(self.run, one)
        if single > INLINE_RUN_LIMIT_S:
            self.inline_rows = 0
        elif not all(_batch_axis(spec) for spec in self.config.inputs):
            self.inline_rows = 1  # a fixed shape: every request costs one run
        else:
            many = {spec.name: _zeros(spec, ROWS_MEASURED) for spec in self.config.inputs}
            per_row = max(_median_run_s(self.run, many) - single, 0.0) / (ROWS_MEASURED - 1)
            room = INLINE_RUN_LIMIT_S - single
            self.inline_rows = 1 + (int(room / per_row) if per_row > 0 else ROWS_MEASURED)
        log.info("%s:%s answers one row in %.1f µs; requests up to %d rows run inline",
                 self.config.model, self.config.version, single * 1e6, self.inline_rows)

    def rows_of(self, arrays: dict[str, np.ndarray]) -> int:
        """Rows in a validated request (1 for a model without a batch axis)."""
        first = next(iter(arrays.values()), None)
        if first is None or not self.can_batch or first.ndim == 0:
            return 1
        return int(first.shape[0])


def _median_run_s(run: Any, feed: dict[str, np.ndarray]) -> float:
    run(feed)  # lazy initialisation (arenas, kernels) on the first call at this shape
    times = []
    for _ in range(WARMUP_RUNS):
        started = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _batch_axis(spec: TensorSignature) -> bool:
    return bool(spec.shape) and spec.shape[0] is None


def _zeros(spec: TensorSignature, rows: int = 1) -> np.ndarray:
    shape = tuple(rows if index == 0 and dim is None else 1 if dim is None else dim
                  for index, dim in enumerate(spec.shape))
    if spec.dtype == "string":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(spec.dtype))


def _to_onnx(value: np.ndarray) -> Any:
    # BYTES tensors decode to Python bytes; ORT string tensors want str.
    if value.dtype == object and value.size and isinstance(value.flat[0], bytes):
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value)
    return value
