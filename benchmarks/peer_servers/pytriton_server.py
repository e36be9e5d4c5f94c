"""PyTriton: Triton Inference Server in front of a Python callable that runs ONNX Runtime.

    python pytriton_server.py MODEL PORT NAME

Triton's dynamic batcher (max batch 32, no queue delay: it gathers whatever queued while
the callable was busy) hands batches to the callable through PyTriton's Python backend
proxy. Three processes do the work: this one (the callable), ``tritonserver`` and the
Python backend stub; three multiprocessing helpers of PyTriton's shared-memory tensor store
idle beside them. gRPC and metrics (on, the default) listen on free ports of their own.
Without a GPU tritonserver logs CUDA errors at start (no driver, no pinned memory pool)
and serves on the CPU.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
from onnx_session import arguments, free_port, session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH = 32


def use_own_libpython() -> None:
    """Make Triton's Python backend stub load this interpreter's libpython.

    The stub links ``libpython3.X.so.1.0`` by name and would take the system's, while it
    imports the standard library of this venv's interpreter: a system 3.11.2 library under
    a 3.11.7 ``multiprocessing`` fails to start the model (``RLock._recursion_count``).
    PyTriton passes its environment on to tritonserver and from there to the stub.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = ":".join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)


def main() -> None:
    args = arguments(__doc__)
    use_own_libpython()
    model = session(args.model)
    width = model.get_inputs()[0].shape[1]
    classes = model.get_outputs()[0].shape[1]

    @batch
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:
        return {"output": model.run(None, {"input": input})[0]}

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port,
                          grpc_address="127.0.0.1", grpc_port=free_port(),
                          metrics_port=free_port(), log_verbose=0)
    # In the working folder (the benchmark's scratch folder, removed after the run) rather
    # than ~/.cache/pytriton, where a killed server would leave it behind.
    with Triton(config=config, workspace=Path.cwd() / "pytriton-workspace") as triton:
        triton.bind(model_name=args.name, infer_func=infer,
                    inputs=[Tensor(name="input", dtype=np.float32, shape=(width,))],
                    outputs=[Tensor(name="output", dtype=np.float32, shape=(classes,))],
                    config=ModelConfig(max_batch_size=MAX_BATCH,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
                    strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
