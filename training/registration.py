"""Build the version's manifest (signature, reference profile, metrics, lineage) and register it.

The manifest is the control plane's :class:`~control_plane.schemas.ModelManifest`; the
signature is read back from the exported file by ONNX Runtime, so it cannot disagree
with what the registry will check.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from control_plane.client import REGISTER_TIMEOUT_S
from control_plane.schemas import Lineage, ModelManifest, VersionOut
from training.data import Dataset
from training.errors import TrainingError
from training.patience import PATIENCE_S, patiently
from training.schemas import JobSpec

# Packages whose versions decide what a trained model is; recorded in lineage.
LINEAGE_PACKAGES = ("modelplane", "torch", "ray", "numpy", "scikit-learn", "pandas", "onnx",
                    "onnxruntime")
# Reference samples per feature: KS and Wasserstein stay within 1/(2*256) of the full
# data's CDF, and the profile stays small enough to travel in every endpoint's config.
PROFILE_SAMPLE_SIZE = 256
# `modelplane train submit` passes the submitter's checkout here: a job's working
# directory on the cluster is an unpacked copy without .git.
COMMIT_ENV = "MODELPLANE_CODE_COMMIT"
BRANCH_ENV = "MODELPLANE_CODE_BRANCH"


@dataclass(frozen=True)
class CodeVersion:
    commit: str | None
    branch: str | None


def code_version() -> CodeVersion:
    """The git commit and branch of the code that trained the model, as far as is known.

    First the checkout this package runs from (an editable install, or a working
    directory shipped with the job, which has no .git), then what the submitter passed,
    then the current directory's checkout.
    """
    from control_plane.environment import git_info

    for found in (git_info(Path(__file__).parent),
                  {"commit": os.environ.get(COMMIT_ENV), "branch": os.environ.get(BRANCH_ENV)},
                  git_info()):
        if found.get("commit"):
            return CodeVersion(found["commit"], found.get("branch") or None)
    return CodeVersion(None, None)


def lineage_packages() -> dict[str, str]:
    versions = {}
    for name in LINEAGE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def reference_profile(spec: JobSpec, features: np.ndarray, feature_names: list[str],
                      first_output: np.ndarray) -> dict[str, Any]:
    """The drift reference from the training rows and the model's first output on them.

    Built by the serving stack's own builder, so the live windows replicas keep derive
    their prediction features exactly as the reference did.
    """
    from serving.monitoring.profiles import build_reference_profile

    return build_reference_profile(features, first_output, task=spec.task,
                                   feature_names=feature_names, sample_size=PROFILE_SAMPLE_SIZE)


def text_reference_profile(spec: JobSpec, encoding: Any, texts: np.ndarray,
                           first_output: np.ndarray) -> dict[str, Any]:
    """The drift reference of a text version: the raw training texts' derived features
    (length, tokens, unknown-word rate against the fitted vocabulary) and the model's first
    output on them."""
    from serving.monitoring.profiles import build_text_reference_profile

    return build_text_reference_profile(encoding.input_name, list(texts), first_output,
                                        task=spec.task, vocabulary=encoding.vocabulary,
                                        sample_size=PROFILE_SAMPLE_SIZE)


def build_manifest(
    *,
    spec: JobSpec,
    dataset: Dataset,
    signature: dict[str, Any],
    steps: dict[str, Any] | None,
    profile: dict[str, Any],
    metrics: dict[str, float],
    run_id: str,
    parent_version: int | None,
    code: CodeVersion,
) -> ModelManifest:
    return ModelManifest(
        signature=signature,  # type: ignore[arg-type]
        code=steps,  # type: ignore[arg-type]
        task=spec.task,  # type: ignore[arg-type]
        feature_names=dataset.feature_names,
        class_labels=dataset.class_labels,
        reference_profile=profile,
        metrics=metrics,
        lineage=Lineage(
            parent_version=parent_version,
            dataset_uri=dataset.uri,
            dataset_digest=dataset.digest,
            run_id=run_id,
            code_commit=code.commit,
            code_branch=code.branch,
            packages=lineage_packages(),
        ),
    )


def register(client: Any, spec: JobSpec, artifact: bytes, manifest: ModelManifest) -> VersionOut:
    """Register the next version of the spec's model and point its alias at it."""
    registration = spec.registration
    description = registration.description or (
        f"{spec.model.architecture} trained by experiment {spec.experiment.name}")
    # One key for every try: a registration whose answer was lost (a restart, a store
    # blip after the commit) is answered with its version when asked again, not twice.
    key = f"job-{uuid.uuid4().hex}"
    # A try may wait for the registry's model check (REGISTER_TIMEOUT_S): a second try,
    # no more, is started after one that timed out.
    version = patiently(lambda: client.register_version(
        spec.model_name, artifact, manifest, description=description, idempotency_key=key),
        give_up_after_s=REGISTER_TIMEOUT_S + PATIENCE_S)
    if registration.alias:  # registered: the alias must follow, whatever the weather
        number, alias = version.version, registration.alias
        # One key for its tries too: a move that landed unanswered, tried again after
        # another job moved the alias on, would move it back to this older version.
        try:
            version = patiently(lambda: client.set_alias(spec.model_name, alias, number,
                                                         idempotency_key=f"{key}-alias"))
        except Exception as error:
            raise AliasNotMovedError(version, alias, error) from error
    return version


class AliasNotMovedError(TrainingError):
    """The version is registered, but its alias could not be pointed at it: the job failed,
    and training again would register a second version of the same work."""

    code = "alias_not_moved"

    def __init__(self, version: VersionOut, alias: str, cause: BaseException) -> None:
        text = str(cause).strip()
        why = (text.splitlines()[0] if text else type(cause).__name__)[:300]
        super().__init__(
            f"registered {version.model}:{version.version}, but could not point alias "
            f"{alias!r} at it ({why}); do not train again: once that is settled, run "
            f"`modelplane models alias {version.model} {alias} {version.version}`",
            detail={"registered_version": f"{version.model}:{version.version}",
                    "alias": alias})
        self.version = version
