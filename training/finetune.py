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

from training.errors import InvalidJobSpecError

MODEL_BUNDLE_ARTIFACT = "model/model.pt"


@dataclass(frozen=True)
class FineTuneSource:
    """Weights to start from, and the version they belong to."""

    model: str
    version: int
    state_dict: dict[str, Any]
    bundle_model: dict[str, Any]


def load_fine_tune_source(ref: str, client: Any, *, n_features: int, n_outputs: int) -> FineTuneSource:
    """Resolve ``ref`` (NAME:VERSION or NAME@ALIAS) to its trained weights; check they fit."""
    import torch

    from control_plane.errors import ControlPlaneError

    try:
        version = client.resolve(ref)
        run_id = version.manifest.lineage.run_id
        if not run_id:
            raise _error(f"{ref} records no training run, so its weights cannot be found")
        run = client.get_run(run_id)
    except ControlPlaneError as error:
        raise _error(f"cannot resolve {ref}: {error.message}") from None
    digest = next((a.digest for a in run.artifacts if a.path == MODEL_BUNDLE_ARTIFACT), None)
    if digest is None:
        raise _error(f"run {run_id} of {ref} has no {MODEL_BUNDLE_ARTIFACT} artifact; only "
                     "versions trained by a modelplane job can be fine-tuned")
    with tempfile.TemporaryDirectory() as directory:
        path = client.download_artifact(digest, Path(directory) / "model.pt")
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    if (bundle["n_features"], bundle["n_outputs"]) != (n_features, n_outputs):
        raise _error(f"{ref} takes {bundle['n_features']} features and has {bundle['n_outputs']} "
                     f"outputs; this job's data has {n_features} and {n_outputs}")
    return FineTuneSource(version.model, version.version, bundle["state_dict"], bundle["model"])


def check_architecture(source: FineTuneSource, model_spec: dict[str, Any]) -> None:
    """The job's network must have the parent's shape for its weights to load."""
    keys = ("architecture", "hidden_sizes", "channels", "kernel_size", "image_shape")
    parent = {k: source.bundle_model.get(k) for k in keys}
    wanted = {k: model_spec.get(k) for k in keys}
    if parent != wanted:
        diff = {k: (parent[k], wanted[k]) for k in keys if parent[k] != wanted[k]}
        raise _error(f"{source.model}:{source.version} has a different network; "
                     f"(parent, this job) differ in {diff}")


def _error(message: str) -> InvalidJobSpecError:
    return InvalidJobSpecError(f"model.init_from: {message}", detail={"field": "model.init_from"})
