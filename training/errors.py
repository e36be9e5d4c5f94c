"""Errors raised by training jobs and their submission.

::

    ModelplaneError
    └── TrainingError               training_error, HTTP 500
        ├── InvalidJobSpecError     invalid_job_spec, HTTP 400 (names the field)
        ├── JobSubmissionError      job_submission_failed, HTTP 502
        ├── JobFailedError          job_failed, HTTP 500 (a followed job ended badly)
        ├── ResourcesUnavailableError resources_unavailable, HTTP 503 (workers not placed in time)
        ├── CheckpointNotFoundError checkpoint_not_found, HTTP 404 (nothing to resume from)
        └── ExportMismatchError     export_mismatch, HTTP 500 (ONNX Runtime and torch disagree)

Every error a spec can cause is raised before anything is submitted, with ``detail``
naming the field (``{"field": "hyperparameters.learning_rate"}``).
"""

from modelplane.errors import ModelplaneError


class TrainingError(ModelplaneError):
    """A training job failed."""

    code = "training_error"
    http_status = 500


class InvalidJobSpecError(TrainingError):
    """A job spec that cannot run; raised before anything is submitted."""

    code = "invalid_job_spec"
    http_status = 400


class JobSubmissionError(TrainingError):
    """Ray's job API refused or could not be reached."""

    code = "job_submission_failed"
    http_status = 502


class JobFailedError(TrainingError):
    """A job that was followed to its end failed or was stopped."""

    code = "job_failed"
    http_status = 500


class ResourcesUnavailableError(TrainingError):
    """The cluster could hold the workers but did not free them within
    ``resources.placement_timeout_s``."""

    code = "resources_unavailable"
    http_status = 503


class CheckpointNotFoundError(TrainingError):
    """``checkpoint.resume_from`` leads to no usable checkpoint."""

    code = "checkpoint_not_found"
    http_status = 404


class ExportMismatchError(TrainingError):
    """The exported ONNX model does not reproduce the torch model's outputs."""

    code = "export_mismatch"
    http_status = 500
