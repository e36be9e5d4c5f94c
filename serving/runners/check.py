"""The registration check's scratch process: load a version the way a replica would and
run it on example inputs; ``python -m serving.runners.check REQUEST RESULT``.

REQUEST is a JSON file: ``{"version": VersionConfig, "artifact": path, "examples": {...}}``;
RESULT is where the verdict goes (the model's own prints keep stdout):
``{"ok": true, "outputs": {...}}`` or ``{"ok": false, "stage": "load" | "run",
"field": ..., "error": ..., "traceback": ...}``. Run by control_plane.model_check.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def examples(config: Any, given: dict[str, list[Any]] | None) -> dict[str, np.ndarray]:
    """The given example inputs as arrays, or two rows drawn from the signature."""
    from serving.validation import numpy_dtype

    rng = np.random.default_rng(0)
    arrays = {}
    for spec in config.inputs:
        if given and spec.name in given:
            value = np.asarray(given[spec.name], dtype=object if spec.dtype == "string"
                               else numpy_dtype(spec.dtype))
            if spec.dtype == "string":
                value = np.vectorize(lambda v: str(v).encode("utf-8"), otypes=[object])(value)
            arrays[spec.name] = value
            continue
        shape = tuple(2 if dim is None else dim for dim in spec.shape)
        if spec.dtype == "string":
            arrays[spec.name] = np.full(shape, b"example text", dtype=object)
        elif spec.dtype == "bool":
            arrays[spec.name] = rng.random(shape) > 0.5
        else:
            arrays[spec.name] = rng.random(shape).astype(numpy_dtype(spec.dtype))
    return arrays


def check(request: dict[str, Any]) -> dict[str, Any]:
    from serving.runners import build_runner
    from serving.runners.base import read_only, run_merged
    from serving.schemas import VersionConfig

    config = VersionConfig.model_validate(request["version"])
    try:
        runner = build_runner(config, Path(request["artifact"]), use_gpu=False)
    except Exception as error:
        return _failure("load", error, field=_load_field(config))
    try:
        if not runner.is_async:
            runner.warmup()  # what every replica does first (zeros, empty strings)
    except Exception as error:
        return _failure("warmup", error, field=_output_field(error) or _load_field(config))
    try:
        inputs = read_only(examples(config, request.get("examples")))  # as served
        if runner.is_async:
            import asyncio

            outputs = asyncio.run(runner.run_async(inputs))
        else:
            outputs = runner.run(inputs)
        if runner.can_batch:  # what batching will do: the same rows, merged with themselves
            run_merged(runner.run, [inputs, inputs], alone_on_failure=False)
    except Exception as error:
        return _failure("run", error, field=_output_field(error))
    return {"ok": True, "outputs": {name: {"dtype": str(value.dtype), "shape": list(value.shape)}
                                    for name, value in outputs.items()}}


def _output_field(error: BaseException) -> str | None:
    """``signature.outputs.<name>`` when the model broke its declared outputs."""
    detail = getattr(error, "detail", None) or {}
    return f"signature.outputs.{detail['output']}" if detail.get("output") else None


def _load_field(config: Any) -> str:
    if config.kind == "python":
        return "manifest.code.entrypoint"
    if config.code is not None:
        return "manifest.code"
    return "artifact"


def _failure(stage: str, error: BaseException, *, field: str | None) -> dict[str, Any]:
    return {"ok": False, "stage": stage, "field": field,
            "error": f"{type(error).__name__}: {error}"[:2000],
            "traceback": traceback.format_exc()[-6000:]}


def main() -> int:
    request_path, result_path = sys.argv[1], sys.argv[2]
    try:
        result = check(json.loads(Path(request_path).read_text()))
    except BaseException as error:  # the verdict must be written whatever happens
        result = _failure("load", error, field=None)
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
