"""Errors raised by training jobs and their submission.

::

    ModelplaneError
    └── TrainingError               training_error, HTTP 500
        ├── InvalidJobSpecError     invalid_job_spec, HTTP 400 (names the field)
        └── JobSubmissionError      job_submission_failed, HTTP 502
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
