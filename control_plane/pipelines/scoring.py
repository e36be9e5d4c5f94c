"""Scoring a candidate's graph in a process of its own, bounded in memory and time.

A version's ONNX graph is the registrant's: a training job's token, trusted with little,
may register one. Scored in the control plane's own process, a graph of a few hundred
bytes (``ConstantOfShape`` with a large shape) could ask for gigabytes and have the
control plane, its API and every control loop, killed for memory; a deadline cannot stop
a thread that is running ONNX Runtime. So the evaluate stage scores here: a child process
with an address-space limit (``MODELPLANE_EVALUATE_MEMORY_MB``, 4096 by default: a
setting, :mod:`modelplane.settings`) and one
ONNX Runtime thread, killed whole at its deadline.

    python -m control_plane.pipelines.scoring REQUEST RESULT MEMORY_MB   (what the parent runs)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from control_plane.errors import InvalidInputError

MEMORY_ENV = "MODELPLANE_EVALUATE_MEMORY_MB"
_KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


def score_isolated(model: bytes | os.PathLike[str], X: Any, manifest: Mapping[str, Any] | Any, *,
                   timeout_s: float = 600.0) -> dict[str, np.ndarray]:
    """:func:`~control_plane.pipelines.evaluation.score_model`, in a child process."""
    from modelplane.settings import get_settings

    memory_mb = get_settings().evaluate_memory_mb
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    document = manifest.model_dump(mode="json") if hasattr(manifest, "model_dump") else dict(manifest)
    with tempfile.TemporaryDirectory(prefix="modelplane-score-") as scratch:
        folder = Path(scratch)
        request, result, output = folder / "request.pickle", folder / "result.pickle", folder / "output.log"
        # Both ends are this platform's own code, in a folder only this process made.
        request.write_bytes(pickle.dumps({"model": data, "X": X, "manifest": document}))
        env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        # This checkout's packages, wherever the child starts (a scratch folder).
        root = str(Path(__file__).resolve().parents[2])
        env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", TMPDIR=str(folder),
                   PYTHONPATH=os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])]))
        with open(output, "wb") as log:
            # The bound is set by the child itself, first thing: a preexec_fn is unsafe in
            # a process with threads, as the control plane is.
            process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.pipelines.scoring", str(request),
                 str(result), str(memory_mb)],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                raise InvalidInputError(
                    f"scoring the model did not finish within {timeout_s:g} s",
                    detail={"field": "model"}) from None
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if code != 0 or not result.is_file():
            tail = output.read_bytes()[-4000:].decode("utf-8", "replace").strip()
            last = tail.splitlines()[-1] if tail else f"exit status {code}"
            if "MemoryError" in tail or "bad_alloc" in tail or "Failed to allocate" in tail:
                last = (f"it needed more than its {memory_mb} MiB ({MEMORY_ENV}); {last}")
            raise InvalidInputError(f"scoring the model failed in its own process: {last[:500]}",
                                    detail={"field": "model"})
        answer = pickle.loads(result.read_bytes())
    if isinstance(answer, BaseException):
        raise answer
    return answer  # type: ignore[no-any-return]


def _limit_memory(memory_mb: int) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(request: str, result: str, memory_mb: int) -> None:
    _limit_memory(memory_mb)  # before anything is read or imported for the model
    from control_plane.pipelines.evaluation import score_model

    asked = pickle.loads(Path(request).read_bytes())
    try:
        answer: Any = score_model(asked["model"], asked["X"], asked["manifest"], threads=1)
    except InvalidInputError as error:  # the model's own fault: said as the caller would
        answer = error
    Path(result).write_bytes(pickle.dumps(answer))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
