"""A Python model: a class in the version's archive, loaded once per replica.

The interface (docs/models.md)::

    class Model:
        batchable = False            # True: predict takes many requests' rows at once
        def load(self, path): ...    # the unpacked archive's folder: read weights here
        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

``predict`` may be ``async def``; it then runs on the replica's event loop, must not
block it, and is called once per request (never merged with others). A synchronous ``predict`` runs on the replica's worker threads. Whatever it
returns is checked against the declared outputs on every call.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from serving.errors import ServingError
from serving.runners import archive
from serving.runners.base import (
    Arrays,
    call_model,
    conform_outputs,
    failed_call,
    has_batch_axis,
    input_rows,
    run_merged,
    zeros,
)
from serving.schemas import VersionConfig


class PythonRunner:
    def __init__(self, config: VersionConfig, root: Path) -> None:
        if config.code is None or config.code.entrypoint is None:
            raise archive.ArchiveError(f"{config.model}:{config.version} is a python model "
                                       "without code.entrypoint")
        self.config = config
        cls = archive.resolve(root, config.digest, config.code.entrypoint)
        if not inspect.isclass(cls):
            raise archive.ArchiveError(f"{config.code.entrypoint} is a {type(cls).__name__}, "
                                       "not a class")
        self.model: Any = cls()
        if hasattr(self.model, "load"):
            self.model.load(str(root))
        predict = getattr(self.model, "predict", None)
        if not callable(predict):
            raise archive.ArchiveError(f"{config.code.entrypoint} has no predict method")
        self._predict = predict
        self.is_async = inspect.iscoroutinefunction(predict)
        # An async predict is awaited per request (it does its own batching if it wants).
        self.can_batch = (bool(getattr(self.model, "batchable", False)) and not self.is_async
                          and has_batch_axis([*config.inputs, *config.outputs]))

    def run(self, arrays: Arrays) -> Arrays:
        produced = call_model(self.config, "predict", self._predict, arrays)
        return conform_outputs(self.config, produced, input_rows(arrays), what="predict")

    async def run_async(self, arrays: Arrays) -> Arrays:
        try:
            produced = await self._predict(arrays)
        except ServingError:
            raise
        except Exception as error:
            raise failed_call(self.config, "predict", error) from None
        return conform_outputs(self.config, produced, input_rows(arrays), what="predict")

    def run_batch(self, items: list[Arrays]) -> list[Arrays | Exception]:
        return run_merged(self.run, items)

    def warmup(self) -> None:
        if not self.is_async:
            self.run({spec.name: zeros(spec) for spec in self.config.inputs})
