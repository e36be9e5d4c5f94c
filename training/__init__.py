"""Ray Train jobs: spec, entrypoint for ``ray job submit``, ONNX export, registration.

=====================  ========================================================
name                   what it is
=====================  ========================================================
``JobSpec``            the job spec (YAML), validated before anything runs
``load_job_spec``      read a spec file; errors name the field
``run_job``            run a job from a spec (the ``python -m training.job`` body)
``submit_spec``        check a spec and submit it with Ray's job client
=====================  ========================================================

Importing this package does not import torch or Ray; ``run_job`` and ``submit_spec`` load
them on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from training.errors import (
    CheckpointNotFoundError,
    ExportMismatchError,
    InvalidJobSpecError,
    JobFailedError,
    JobSubmissionError,
    ResourcesUnavailableError,
    TrainingError,
)
from training.schemas import JobSpec
from training.spec import load_job_spec

if TYPE_CHECKING:
    from training.runner import run_job
    from training.submission import submit_spec

_LAZY = {"run_job": "training.runner", "submit_spec": "training.submission"}

__all__ = [
    "CheckpointNotFoundError",
    "ExportMismatchError",
    "InvalidJobSpecError",
    "JobFailedError",
    "JobSpec",
    "JobSubmissionError",
    "ResourcesUnavailableError",
    "TrainingError",
    "load_job_spec",
    "run_job",
    "submit_spec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
