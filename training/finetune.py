"""Fine-tuning: start from the weights of a registered version.

A job saves its network as the run artifact ``model/model.pt`` (a model bundle); a
version's lineage names that run, so ``model.init_from: digits@champion`` finds the
weights through the registry and the tracker, with no shared disk.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import InvalidJobSpecError, TrainingError

MODEL_BUNDLE_ARTIFACT = "model/model.pt"


@dataclass(frozen=True)
class FineTuneSource:
    """Weights to start from, and the version they belong to."""

    model: str
    version: int
    state_dict: dict[str, Any]
    bundle_model: dict[str, Any]


def load_fine_tune_source(ref: str, client: Any, *, model_spec: dict[str, Any], n_features: int,
                          n_outputs: int) -> FineTuneSource:
    """Resolve ``ref`` (NAME:VERSION or NAME@ALIAS) to its trained weights; check they fit."""
    import torch

    from control_plane.errors import ControlPlaneError, cannot_answer_now
    from training.patience import patiently

    try:
        # Asked again while the control plane restarts: an outage is not a bad spec.
        version = patiently(lambda: client.resolve(ref))
        run_id = version.manifest.lineage.run_id
        if not run_id:
            raise _error(f"{ref} records no training run, so its weights cannot be found")
        run = patiently(lambda: client.get_run(run_id))
        digest = next((a.digest for a in run.artifacts if a.path == MODEL_BUNDLE_ARTIFACT), None)
        if digest is None:
            raise _error(f"run {run_id} of {ref} has no {MODEL_BUNDLE_ARTIFACT} artifact; "
                         "only versions trained by a modelplane job can be fine-tuned")
        with tempfile.TemporaryDirectory() as directory:
            path = patiently(lambda: client.download_artifact(digest, Path(directory) / "model.pt"))
            bundle = torch.load(path, map_location="cpu", weights_only=True)
    except ControlPlaneError as error:
        if cannot_answer_now(error):
            raise TrainingError(
                f"cannot fetch the weights of {ref} (model.init_from): {error.message}; the "
                "spec may be right: submit the job again once the control plane answers",
                detail={"field": "model.init_from"}) from None
        raise _error(f"cannot resolve {ref}: {error.message}") from None
    problem = bundle_mismatch(bundle, model_spec, n_features, n_outputs)
    if problem:
        raise _error(f"{version.model}:{version.version} {problem}")
    return FineTuneSource(version.model, version.version, bundle["state_dict"], bundle["model"])


def bundle_mismatch(bundle: dict[str, Any], model_spec: dict[str, Any], n_features: int,
                    n_outputs: int) -> str | None:
    """Why a saved network's weights cannot load into this job's network (None if they can)."""
    if (bundle["n_features"], bundle["n_outputs"]) != (n_features, n_outputs):
        return (f"takes {bundle['n_features']} features and has {bundle['n_outputs']} outputs; "
                f"this job's data has {n_features} and {n_outputs}")
    keys = ("architecture", "hidden_sizes", "channels", "kernel_size", "image_shape")
    saved = {k: _plain(bundle["model"].get(k)) for k in keys}
    wanted = {k: _plain(model_spec.get(k)) for k in keys}
    differ = {k: (saved[k], wanted[k]) for k in keys if saved[k] != wanted[k]}
    if differ:
        return f"has a different network; (saved, this job) differ in {differ}"
    return None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _error(message: str) -> InvalidJobSpecError:
    return InvalidJobSpecError(f"model.init_from: {message}", detail={"field": "model.init_from"})
