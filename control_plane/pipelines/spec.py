"""The pipeline spec (``pipeline.yaml``): what a run does, stage by stage, and what starts one.

``load_pipeline_spec`` reads the file where the user is, resolves the training job spec
(inline, or a path relative to the file, loaded and resolved as ``train submit`` does),
and returns one self-contained document that the control plane stores; every problem is
one :class:`InvalidPipelineSpecError` naming each bad field by its dotted path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from control_plane.benchmarking.schemas import BenchmarkSettings
from control_plane.errors import InvalidInputError
from control_plane.pipelines.data_validation import DataExpectations
from control_plane.pipelines.evaluation import EvaluationGates
from control_plane.rollouts.schemas import RolloutTemplate
from control_plane.schemas import Name, Wire

STAGES = ("validate_data", "train", "evaluate", "benchmark", "approve", "deploy")
StageName = Literal["validate_data", "train", "evaluate", "benchmark", "approve", "deploy"]


class InvalidPipelineSpecError(InvalidInputError):
    """A pipeline spec that cannot be run; the message names every bad field."""


class TrainingStage(Wire):
    """The training job: a job spec document (``job``), resolved where the spec was read."""

    job: dict[str, Any] = Field(description="A training job spec (training.schemas.JobSpec).")
    timeout_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = Field(
        6 * 3600, description="A job still running after this long is stopped and the stage fails.")

    @field_validator("job")
    @classmethod
    def _a_job_spec(cls, job: dict[str, Any]) -> dict[str, Any]:
        from training.errors import InvalidJobSpecError
        from training.spec import parse_job_spec

        try:
            return parse_job_spec(job, source="the job").model_dump(mode="json")
        except InvalidJobSpecError as error:
            raise ValueError(error.message) from None


class DataStage(Wire):
    """Where the new data is and what it must look like (control_plane.pipelines.data_validation)."""

    uri: str = Field(min_length=1, max_length=2000, description=(
        "The dataset the job trains on: a file path or fsspec URI (CSV, Parquet), or "
        "sklearn://breast_cancer|digits|wine|diabetes."))
    expectations: DataExpectations = Field(default_factory=DataExpectations)
    timeout_s: Annotated[float, Field(gt=0, le=24 * 3600)] = Field(
        600, description="Reading and checking the data (and the trigger's look at it) "
                         "given up after this long: the stage fails, the trigger says why.")

    @field_validator("uri")
    @classmethod
    def _readable_here(cls, uri: str) -> str:
        from control_plane.pipelines.data_sources import check_data_uri

        return check_data_uri(uri)


class EvaluateStage(Wire):
    """Held-out metrics against thresholds and against the champion (control_plane.pipelines.evaluation)."""

    data_uri: str | None = Field(None, max_length=2000,
                                 description="Held-out rows the candidate never trained on "
                                             "(not the training job's data); default: the "
                                             "job's own test rows (data.test_split), or its "
                                             "validation rows when it does not stop early.")
    gates: EvaluationGates = Field(default_factory=EvaluationGates)
    timeout_s: Annotated[float, Field(gt=0, le=24 * 3600)] = Field(
        1800, description="Reading the held-out rows and scoring both models given up "
                          "after this long: the stage fails.")

    @field_validator("data_uri")
    @classmethod
    def _readable_here(cls, uri: str | None) -> str | None:
        from control_plane.pipelines.data_sources import check_data_uri

        return None if uri is None else check_data_uri(uri)


class BenchmarkStage(BenchmarkSettings):
    """The candidate and the champion each served on a scratch replica and measured under
    the same short load (control_plane.benchmarking); the endpoint's serving settings are
    used where it exists."""

    max_slowdown: Annotated[float, Field(ge=1, le=100)] = Field(
        1.5, description="The candidate's p99 over the champion's, at most.")

    def measurement(self, endpoint: str | None) -> BenchmarkSettings:
        """The benchmark's own settings, copying ``endpoint``'s serving settings."""
        document = self.model_dump(exclude={"max_slowdown"})
        return BenchmarkSettings.model_validate({**document, "endpoint": self.endpoint or endpoint})


class ApproveStage(Wire):
    """``policy``: wait where the model's policy asks; ``always``: wait in any case."""

    mode: Literal["policy", "always", "never"] = "policy"
    timeout_s: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] = 7 * 24 * 3600


class DeployStage(Wire):
    """The endpoint, and the rollout that takes the candidate to it (a first version is
    deployed directly)."""

    endpoint: Name
    rollout: RolloutTemplate = Field(default_factory=RolloutTemplate)
    timeout_s: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] = Field(
        7 * 24 * 3600, description="The rollout not ended after this long (waiting on an "
                                   "approval, paused, or never decided): aborted, the stage fails.")


class Triggers(Wire):
    """What starts a run besides a person."""

    schedule: str | None = Field(None, description="Cron syntax (minute hour day month weekday), UTC.")
    data_check_interval_s: Annotated[float, Field(ge=10, le=30 * 24 * 3600)] | None = Field(
        None, description="Start a run when the data uri's digest changes; checked this often.")
    on_drift_alert: bool = Field(False, description="A drift alert on the endpoint starts a run.")
    cooldown_s: Annotated[float, Field(ge=0, le=30 * 24 * 3600)] = Field(
        3600, description="No trigger starts a run sooner than this after the last started one.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from control_plane.pipelines.cron import CronSchedule

            try:
                CronSchedule.parse(value)
            except InvalidInputError as error:
                raise ValueError(error.message) from None
        return value


class PipelineSpec(Wire):
    """A whole pipeline."""

    name: Name
    description: str = Field("", max_length=2000)
    data: DataStage | None = None
    training: TrainingStage
    evaluate: EvaluateStage | None = None
    benchmark: BenchmarkStage | None = None
    approve: ApproveStage = Field(default_factory=ApproveStage)
    deploy: DeployStage
    triggers: Triggers = Field(default_factory=Triggers)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        if self.triggers.data_check_interval_s is not None and self.data is None:
            raise ValueError("triggers.data_check_interval_s watches data.uri; add a data section")
        if self.evaluate is not None and self.evaluate.data_uri is None and self.data is None:
            raise ValueError("evaluate needs held-out rows: set evaluate.data_uri or a data section")
        path = (self.training.job.get("data") or {}).get("path")
        if self.evaluate is not None and self.evaluate.data_uri is None and path:
            from control_plane.pipelines.data_sources import check_data_uri

            # The evaluate stage reads the job's own held-out rows in the control plane.
            check_data_uri(str(path))
        return self

    @property
    def model_name(self) -> str:
        from training.schemas import JobSpec

        return JobSpec.model_validate(self.training.job).model_name


def job_data_uri(job: dict[str, Any]) -> str:
    """The data a training job spec reads, as a pipeline names data: its ``data.path``, or
    ``sklearn://NAME`` for its bundled dataset."""
    from control_plane.pipelines.data_sources import BUNDLED_SCHEME

    data = job.get("data") or {}
    return str(data.get("path") or f"{BUNDLED_SCHEME}{data.get('dataset')}")


def data_mismatch(spec: PipelineSpec) -> str | None:
    """Why the data stage would check other data than the job trains on, or None.

    The stage's verdict, its digest and the data trigger all stand for the training data;
    checked where a spec is applied and where a run validates (a spec stored before the
    rule still loads)."""
    if spec.data is None:
        return None
    trained_on = job_data_uri(spec.training.job)
    if _same_data(spec.data.uri, trained_on):
        return None
    return (f"data.uri {spec.data.uri!r} is not the data the training job reads "
            f"({trained_on!r}): the data stage would check one dataset while the job trains "
            "on another; name the same data in both")


def held_out_problem(spec: PipelineSpec) -> tuple[str, str] | None:
    """Why the evaluate stage's held-out rows could not judge the candidate fairly: the
    field to change and what to do, or None. Checked where a spec is applied and where the
    stage runs (a spec stored before a rule still loads, and its runs end, saying why)."""
    if spec.evaluate is None:
        return None
    held_out = spec.evaluate.data_uri
    if held_out is not None:
        if _same_data(held_out, job_data_uri(spec.training.job)):
            return "evaluate.data_uri", (
                f"evaluate.data_uri {held_out!r} is the data the training job trains on: the "
                "candidate would be scored on rows it learned from; leave evaluate.data_uri "
                "out (the job's own test rows) or name rows it never saw")
        return None
    from training.schemas import JobSpec

    job = JobSpec.model_validate(spec.training.job)
    if job.early_stopping is not None and not job.data.test_split:
        return "training.job.data.test_split", (
            "the training job stops early, choosing its epoch on its validation rows, so "
            "those rows would judge the candidate in its own favour; set "
            "training.job.data.test_split (such as 0.2) to keep rows out of training "
            "altogether, or evaluate.data_uri to rows it never saw")
    return None


def spec_problem(spec: PipelineSpec) -> tuple[str, str] | None:
    """What ``modelplane pipeline apply`` refuses in a spec: the field, and why (None:
    nothing). A spec stored before a rule still loads; each stage the rule guards fails
    its run instead (``stages.refused_at_apply``)."""
    mismatch = data_mismatch(spec)
    if mismatch is not None:
        return "data.uri", mismatch
    return held_out_problem(spec)


def _same_data(first: str, second: str) -> bool:
    def canonical(uri: str) -> str:
        local = uri.removeprefix("file://") if uri.startswith("file://") else uri
        return os.path.normpath(local) if "://" not in local else uri

    return canonical(first) == canonical(second)


def parse_pipeline_spec(raw: Any, *, source: str = "pipeline spec") -> PipelineSpec:
    """Validate a spec document; every bad field named by its dotted path."""
    if not isinstance(raw, dict):
        raise InvalidPipelineSpecError(f"{source} must be a mapping of sections (name, training, "
                                       "deploy, …)", detail={"field": "spec"})
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "spec"
            problems.append((where, item["msg"].removeprefix("Value error, ")))
        listed = "; ".join(f"{where}: {message}" for where, message in problems)
        raise InvalidPipelineSpecError(f"{source} is not a valid pipeline: {listed}",
                                       detail={"field": problems[0][0]}) from None


def load_pipeline_spec(path: str | os.PathLike[str]) -> PipelineSpec:
    """Read ``path``; ``training.job`` may be a path (relative to the file) or a mapping,
    and local paths in the job spec are resolved against the file that holds them."""
    from training.errors import InvalidJobSpecError
    from training.spec import load_job_spec, parse_job_spec, resolve_paths

    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as error:
        raise InvalidPipelineSpecError(f"cannot read the pipeline spec {source}: "
                                       f"{error.strerror or error}", detail={"field": "config"}) from None
    except yaml.YAMLError as error:
        raise InvalidPipelineSpecError(f"{source} is not valid YAML: {error}",
                                       detail={"field": "config"}) from None
    training = raw.get("training") if isinstance(raw, dict) else None
    job = training.get("job") if isinstance(training, dict) else None
    try:
        if isinstance(job, str):
            resolved = load_job_spec(source.parent / job)
        elif isinstance(job, dict):
            resolved = resolve_paths(parse_job_spec(job, source="training.job"), source.parent)
        else:
            resolved = None
    except InvalidJobSpecError as error:
        field = str((error.detail or {}).get("field") or "")
        raise InvalidPipelineSpecError(
            f"{source}: training.job: {error.message}",
            detail={"field": f"training.job.{field}" if field else "training.job"}) from None
    if resolved is not None:
        raw = {**raw, "training": {**training, "job": resolved.model_dump(mode="json")}}
    # Local data paths are relative to the file, as the job's are (not to the control
    # plane's folder, where the stages read them).
    for section, field in (("data", "uri"), ("evaluate", "data_uri")):
        part = raw.get(section) if isinstance(raw, dict) else None
        location = part.get(field) if isinstance(part, dict) else None
        if isinstance(location, str) and location and "://" not in location:
            absolute = (source.parent / Path(location).expanduser()).absolute()
            raw = {**raw, section: {**part, field: str(absolute)}}
    return parse_pipeline_spec(raw, source=str(source))
