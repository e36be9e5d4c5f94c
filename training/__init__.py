"""Ray Train jobs: spec, entrypoint for ``ray job submit``, ONNX export, registration."""

from training.errors import InvalidJobSpecError, JobSubmissionError, TrainingError

__all__ = ["InvalidJobSpecError", "JobSubmissionError", "TrainingError"]
