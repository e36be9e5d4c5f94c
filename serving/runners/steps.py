"""Steps around an ONNX graph in one version: ``preprocess`` turns the inputs as sent into
the graph's inputs, ``postprocess`` the graph's outputs into the outputs returned.

The version's signature is the outer one, so validation, drift and data quality see the
inputs as clients send them and the predictions as they get them. A step is
``builtin:<name>`` (serving.runners.builtin_steps), a function, or a class (instantiated,
``load(path)`` called when it has one, then called); a postprocess step that takes two
arguments also gets the inputs as sent. Steps work row by row, so batched requests are
merged before the steps as before the graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.runners import archive, builtin_steps
from serving.runners.base import (
    Arrays,
    call_model,
    conform_outputs,
    has_batch_axis,
    input_rows,
    run_merged,
)
from serving.runners.onnx import OnnxRunner
from serving.schemas import VersionConfig


def load_step(root: Path, digest: str, ref: str) -> Callable[..., Arrays]:
    if ref.startswith("builtin:"):
        return builtin_steps.load(ref.removeprefix("builtin:"), root)
    step: Any = archive.resolve(root, digest, ref)
    if inspect.isclass(step):
        step = step()
        if hasattr(step, "load"):
            step.load(str(root))
    if not callable(step):
        raise archive.ArchiveError(f"{ref} is a {type(step).__name__}, not a function or class")
    return step  # type: ignore[no-any-return]


def _takes_two(step: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature take one argument
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


class StepsRunner:
    def __init__(self, config: VersionConfig, root: Path, *, use_gpu: bool | None = None) -> None:
        code = config.code
        if code is None or not code.is_steps:
            raise archive.ArchiveError(f"{config.model}:{config.version} has no steps")
        self.config = config
        self.graph_inputs = code.graph_inputs or config.inputs
        self.graph_outputs = code.graph_outputs or config.outputs
        graph = root / code.graph
        if not graph.is_file():
            raise archive.ArchiveError(f"code.graph: the archive has no {code.graph}")
        self.graph = OnnxRunner(config, graph, use_gpu=use_gpu, inputs=self.graph_inputs,
                                outputs=self.graph_outputs, fed_by_caller=not code.preprocess)
        self.providers = self.graph.providers
        self.pre = load_step(root, config.digest, code.preprocess) if code.preprocess else None
        self.post = load_step(root, config.digest, code.postprocess) if code.postprocess else None
        self._post_takes_inputs = self.post is not None and _takes_two(self.post)
        self.can_batch = self.graph.can_batch and has_batch_axis([*config.inputs, *config.outputs])
        self.is_async = False

    def run(self, arrays: Arrays) -> Arrays:
        rows = input_rows(arrays)
        feed = arrays
        if self.pre is not None:
            feed = conform_outputs(self.config, self._call("preprocess", self.pre, arrays), rows,
                                   self.graph_inputs, what="preprocess")
        outputs = self.graph.run(feed)
        if self.post is None:
            return conform_outputs(self.config, outputs, rows, what="the graph")
        produced = (self._call("postprocess", self.post, outputs, arrays) if self._post_takes_inputs
                    else self._call("postprocess", self.post, outputs))
        return conform_outputs(self.config, produced, rows, what="postprocess")

    def _call(self, what: str, step: Callable[..., Arrays], *args: Arrays) -> Arrays:
        return call_model(self.config, what, step, *args)  # type: ignore[return-value]

    def run_batch(self, items: list[Arrays]) -> list[Arrays | Exception]:
        return run_merged(self.run, items)

    def warmup(self) -> None:
        self.graph.warmup()
