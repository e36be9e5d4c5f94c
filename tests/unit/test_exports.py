"""Pin each package's public face: adding or dropping a public name is a deliberate change."""

from __future__ import annotations

import control_plane
import kernels
import modelplane
import serving
import serving.monitoring
import training

EXPECTED = {
    modelplane: {"ConfigurationError", "ModelplaneError", "Settings", "__version__", "get_settings"},
    serving: {
        "InferenceFailedError", "InvalidRequestError", "ModelNotFoundError",
        "ModelNotReadyError", "PayloadTooLargeError", "ServingError",
    },
    serving.monitoring: {
        "Accuracy", "Anomalies", "Drift", "DriftVerdict", "Latency", "Quality", "Quantiles",
        "Replicas", "ShadowComparison", "Traffic", "VersionSnapshot", "VersionTotals",
    },
    training: {
        "CheckpointNotFoundError", "ExportMismatchError", "InvalidJobSpecError", "JobFailedError",
        "JobSpec", "JobSubmissionError", "ResourcesUnavailableError", "TrainingError", "load_job_spec", "run_job", "submit_spec",
    },
}


def test_public_names_are_pinned() -> None:
    for package, names in EXPECTED.items():
        assert set(package.__all__) == names, package.__name__


def test_every_exported_name_exists() -> None:
    for package in (modelplane, serving, training, kernels, control_plane):
        for name in package.__all__:
            assert hasattr(package, name), f"{package.__name__}.{name}"
