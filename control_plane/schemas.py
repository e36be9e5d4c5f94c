"""Every wire object of the control plane: REST bodies and the model manifest.

All are pydantic v2 models that refuse unknown fields, so a typo in a request is a 422
naming the field rather than a silently ignored setting.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from control_plane.storable import UNSTORABLE_TEXT
from modelplane.wire import ClosedModel

# Serving settings are the data plane's own wire objects: one definition, two packages.
from serving.schemas import BatchingConfig as BatchSettings
from serving.schemas import ModelCode, ModelKind
from serving.schemas import ScalingConfig as ScaleSettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Letters, digits, '.', '_', '-'.")]
AliasName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
# The alias a promotion moves to the version it crowns (what `name@champion` deploys).
CHAMPION_ALIAS = "champion"
# A person or service a token is issued to: a user name or an e-mail address.
Subject = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$",
                               description="Letters, digits, '.', '_', '@', '+', '-'.")]
# Bounded to what every backend's INTEGER holds, so huge numbers are a 422, not an overflow.
MAX_INT = 2**31 - 1
VersionNumber = Annotated[int, Field(ge=1, le=MAX_INT)]
# JSON has no NaN or infinity, and a stored one could never be served back.
Finite = Annotated[float, Field(allow_inf_nan=False)]
RUN_ID_CHARS = 32  # a run's id is uuid4 hex; the store holds no longer one


def _finite_everywhere(value: Any, path: str = "") -> Any:
    """``value`` unchanged, or a ValueError naming where a NaN or an infinity sits in it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'} is {value}; JSON numbers must be finite "
                         "(send a string such as \"nan\" to record one)")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_everywhere(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite_everywhere(item, f"{path}[{index}]")
    return value


# Free-form JSON (run params, environment) with no NaN or infinity anywhere inside.
FiniteJson = Annotated[dict[str, Any], AfterValidator(_finite_everywhere)]
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256, lowercase hex.")]


class Wire(ClosedModel):
    pass


class Stage(StrEnum):
    """Lifecycle of a model version: none → staging → production → archived."""

    NONE = "none"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class Role(StrEnum):
    """Token roles, each including the powers of those before it."""

    READER = "reader"
    # A training job's own token: a reader's reads plus tracking runs, uploading artifacts,
    # registering versions and moving aliases; never deploying, approving or minting tokens.
    TRAINER = "trainer"
    # A label source: a reader's reads plus posting feedback (ground truth) to endpoints.
    LABELER = "labeler"
    DEPLOYER = "deployer"
    APPROVER = "approver"
    ADMIN = "admin"


JOB_TAG = "ray_job_submission_id"  # a submitted job's driver tags its run with its Ray job id
# A job run in a process of its own (`train run`, `python -m training.job`) tags its run with
# that process (modelplane.process_names.new_process_name's shape).
PROCESS_TAG = "modelplane_job_process"


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"


# ---------------------------------------------------------------- manifest


TensorDType = Literal[
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "string",
]


class TensorSpec(Wire):
    """One input or output of a model."""

    name: str = Field(min_length=1, description="Tensor name as in the ONNX graph.")
    dtype: TensorDType = Field(description="Element type, numpy spelling.")
    shape: list[Annotated[int, Field(ge=0, le=MAX_INT)] | None] = Field(
        description="Dimensions; null marks a dynamic one (the batch axis)."
    )


class Signature(Wire):
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)


class Lineage(Wire):
    """Where a version came from."""

    parent_version: VersionNumber | None = Field(None, description="Version this one was tuned from.")
    dataset_uri: str | None = None
    dataset_digest: str | None = None
    # Bounded where a version is registered (Registry.register_version), not here: this
    # model also reads back versions stored before the bound.
    run_id: str | None = Field(None, description="Experiment run that produced it.")
    code_commit: str | None = None
    code_branch: str | None = None
    packages: dict[str, str] = Field(default_factory=dict, description="Package versions.")


MAX_EXAMPLE_VALUES = 100_000


class ModelManifest(Wire):
    """What the registry knows about an artifact besides its bytes (docs/models.md)."""

    format_version: Literal[1] = 1
    kind: ModelKind = Field("onnx", description=(
        "onnx: an ONNX graph (a file, or an archive with code.preprocess/postprocess around "
        "code.graph); python: an archive with code.entrypoint; torchscript: torch.jit.save's "
        "file; torch_export: torch.export.save's file."))
    code: ModelCode | None = Field(None, description="The Python the version runs (archives only).")
    signature: Signature
    example_inputs: dict[str, list[Any]] | None = Field(None, description=(
        "Inputs (name → rows, nested lists) the registration check runs the model on; "
        "without them it runs on two rows drawn from the signature."))
    task: Literal["classification", "regression", "other"] = "other"
    feature_names: list[str] | None = None
    class_labels: list[str] | None = None
    reference_profile: dict[str, Any] | None = Field(
        None, description="Drift reference as produced by kernels.ReferenceProfile.to_dict()."
    )
    metrics: dict[str, Finite] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)

    @model_validator(mode="after")
    def _kind_and_code_agree(self) -> ModelManifest:
        code = self.code
        if self.kind == "python":
            if code is None or code.entrypoint is None:
                raise ValueError("code.entrypoint: a python model names its class "
                                 "(`module:Class` in the archive)")
            if code.entrypoint.startswith("builtin:"):
                raise ValueError("code.entrypoint: builtin: names a step; a python model's "
                                 "class is `module:Class` in its archive")
            if code.is_steps:
                raise ValueError("code.preprocess/postprocess: a python model does its own "
                                 "steps in predict; steps go around an onnx graph")
        elif code is not None:
            if self.kind in ("torchscript", "torch_export"):
                raise ValueError(f"code: a {self.kind} model is a single file without code; "
                                 "use kind python for code around it")
            if code.entrypoint is not None:
                raise ValueError("code.entrypoint: only a python model has one (kind: python)")
            if not code.is_steps:
                raise ValueError("code: an onnx model with code needs code.preprocess or "
                                 "code.postprocess")
        if code is not None and code.requirements and not code.runs_archive_code:
            raise ValueError("code.requirements: only code from the archive has requirements "
                             "(builtin: steps need none)")
        if code is not None:
            allowed = set(TensorDType.__args__)  # type: ignore[attr-defined]
            for side in ("graph_inputs", "graph_outputs"):
                for spec in getattr(code, side) or ():
                    if spec.dtype not in allowed:
                        raise ValueError(f"code.{side}.{spec.name}.dtype: {spec.dtype!r} is not "
                                         f"one of {sorted(allowed)}")
        if self.example_inputs is not None:
            names = {spec.name for spec in self.signature.inputs}
            unknown = set(self.example_inputs) - names
            if unknown:
                raise ValueError(f"example_inputs.{sorted(unknown)[0]}: not an input of the "
                                 f"signature ({sorted(names)})")
            size = sum(len(str(v)) for v in self.example_inputs.values())
            if size > 20 * MAX_EXAMPLE_VALUES:
                raise ValueError("example_inputs: too large; a few rows are enough")
        return self

    @property
    def runs_archive_code(self) -> bool:
        """Whether its archive holds code of the registrant's own that replicas import."""
        return self.code is not None and self.code.runs_archive_code

    @property
    def runs_code(self) -> bool:
        """Whether registering it puts code of the registrant's own on the replicas: a
        python model, steps from its archive, or a torch program (TorchScript can call
        operators that touch the replica's files)."""
        return self.runs_archive_code or self.kind in ("torchscript", "torch_export")


# ---------------------------------------------------------------- registry


class ModelPolicy(Wire):
    """What a model's versions must pass before they serve or reach production."""

    require_approval_for_production: bool = Field(
        False, description="An approver whose subject differs from the registrant's must "
                           "approve a version before it is promoted or takes more traffic "
                           "than max_unapproved_weight.")
    max_unapproved_weight: float | None = Field(
        None, ge=0, lt=100,
        description="The most traffic (percent) an unapproved version may take when approval "
                    "is required. Default: a rollout's last step below 100%; 50 for "
                    "`deploy`/`traffic`.")




def _storable_text(value: str) -> str:
    """``value`` unchanged, or a ValueError saying what in it no store can hold: a NUL
    (PostgreSQL's text refuses it) or a lone surrogate (no driver encodes it)."""
    found = UNSTORABLE_TEXT.search(value)
    if found is not None:
        what = "a NUL character" if found.group() == "\x00" else "a lone surrogate"
        raise ValueError(f"contains {what} ({found.group()!r}) at position {found.start()}, "
                         "which is not text the store can hold")
    return value


# Text a request writes into a column of the store (control_plane.storable).
StoredText = AfterValidator(_storable_text)
FreeText = Annotated[str, StoredText]
# Written by deployers and read by anyone: bounded, so that no listing or answer carries
# megabytes of one writer's text.
Description = Annotated[FreeText, Field(max_length=10_000)]
Reason = Annotated[FreeText, Field(max_length=2_000)]
Tags = Annotated[dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1_024)]],
                 Field(max_length=64)]


class ModelCreate(Wire):
    name: Name
    description: Description = ""
    tags: Tags = Field(default_factory=dict)
    policy: ModelPolicy = Field(default_factory=ModelPolicy)


class ModelUpdate(Wire):
    description: Description | None = None
    tags: Tags | None = None
    policy: ModelPolicy | None = None


class ModelOut(Wire):
    name: str
    description: str
    owner: str
    tags: dict[str, str]
    policy: ModelPolicy
    latest_version: int | None
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime


class VersionCreate(Wire):
    artifact_digest: Digest
    manifest: ModelManifest
    description: Description = ""
    idempotency_key: str | None = Field(
        None, min_length=8, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description=(
            "A key of the registrant's for this registration (a random one per version, "
            "kept across its retries): asked again with the same key and artifact, the "
            "registry answers the version it registered instead of registering another."))


class VersionOut(Wire):
    model: str
    version: int
    stage: Stage
    status: Literal["ready", "rejected"]
    status_reason: str
    description: str
    aliases: list[str]
    artifact_digest: str
    artifact_size: int
    manifest: ModelManifest
    created_by: str
    created_by_subject: str = Field(description="The registrant's subject (person or service).")
    created_at: datetime
    abridged: bool = Field(False, description=(
        "True in listings: the manifest's reference_profile and example_inputs (megabytes, "
        "at times) are left out; GET the version for them."))


class AliasSet(Wire):
    version: VersionNumber


class StageChange(Wire):
    stage: Stage
    reason: Reason = ""


class RejectVersion(Wire):
    reason: Reason = Field(min_length=1)


class ApprovalCreate(Wire):
    decision: Literal["approved", "rejected"]
    comment: Reason = ""


class ApprovalOut(Wire):
    model: str
    version: int
    approver: str
    approver_subject: str = Field(description="The approver's subject (person or service).")
    decision: str
    comment: str
    created_at: datetime


class Deployment(Wire):
    endpoint: str
    weight: float
    shadow: bool


class LineageOut(Wire):
    model: str
    version: int
    lineage: Lineage
    run: RunOut | None
    parents: list[int] = Field(description="Parent chain, nearest first.")
    deployments: list[Deployment]
    approvals: list[ApprovalOut]


# ---------------------------------------------------------------- tracking

# A run holds at most this many metric points, every key together (a job's token logging
# without end would fill the store); training specs are held to it (training.schemas).
MAX_RUN_METRIC_POINTS = 1_000_000


class ExperimentCreate(Wire):
    name: Name
    # Bounded in bytes by the tracker, with the run's tags and params (tracking.py).
    description: FreeText = ""
    tags: dict[str, str] = Field(default_factory=dict)


class ExperimentOut(Wire):
    name: str
    description: str
    tags: dict[str, str]
    created_by: str
    created_at: datetime
    run_count: int


class RunCreate(Wire):
    experiment: Name = Field(description="Created if it does not exist.")
    name: FreeText = Field("", max_length=128)
    params: FiniteJson = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    parent_run_id: str | None = Field(None, max_length=RUN_ID_CHARS)
    environment: FiniteJson = Field(default_factory=dict)


class RunUpdate(Wire):
    status: RunStatus


class TrainingSubmission(Wire):
    """A training job handed to Ray (``modelplane train submit``), for the notifications."""

    job_id: str = Field(min_length=1, max_length=128, description="Ray's submission id.")
    experiment: Name
    model: Name = Field(description="The registry model the job will register a version of.")
    address: FreeText = Field("", max_length=2000, description="Ray's job API the job went to.")


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once in UTC") from None


# A time a request gives the store: with its zone (the store keeps UTC), within range in UTC.
StoredTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class MetricPoint(Wire):
    key: FreeText = Field(min_length=1, max_length=128)
    value: Finite
    step: int = Field(0, ge=0, le=MAX_INT)
    timestamp: StoredTime | None = None


class MetricBatch(Wire):
    metrics: list[MetricPoint] = Field(min_length=1, max_length=10_000)


class ParamsUpdate(Wire):
    params: FiniteJson


class RunArtifactCreate(Wire):
    path: FreeText = Field(min_length=1, max_length=512)
    digest: Digest


class RunArtifactOut(Wire):
    path: str
    digest: str
    size: int


class RunOut(Wire):
    id: str
    experiment: str
    name: str
    status: RunStatus
    parent_run_id: str | None
    params: dict[str, Any]
    tags: dict[str, str]
    environment: dict[str, Any]
    created_by: str
    start_time: datetime
    end_time: datetime | None
    latest_metrics: dict[str, float]
    children: list[str]
    artifacts: list[RunArtifactOut]
    abridged: bool = Field(False, description=(
        "True in listings: children and artifacts (up to 10,000 a run) are left out; GET "
        "the run for them."))


class MetricOut(Wire):
    key: str
    value: float
    step: int
    timestamp: datetime


class RunComparison(Wire):
    runs: list[str]
    params: dict[str, dict[str, Any]] = Field(description="param → run id → value")
    last_metrics: dict[str, dict[str, float]] = Field(description="metric → run id → last value")
    best_metrics: dict[str, dict[str, float]] = Field(
        description="metric → run id → best value (max, or min for names with loss/error)"
    )


# ---------------------------------------------------------------- tokens and misc


class TokenCreate(Wire):
    name: Name
    role: Role
    subject: Subject | None = Field(
        None, description="The person or service the token is issued to (default: its name); "
                          "approvals compare subjects, so one person's tokens share one.")
    expires_in_days: int | None = Field(None, ge=1, le=3650)
    expires_in_minutes: int | None = Field(
        None, ge=1, le=3650 * 24 * 60,
        description="Lifetime in minutes, for short-lived tokens (a training job's); "
        "give this or expires_in_days, not both.")
    model: Name | None = Field(
        None, description="A trainer token's one model (a training job's): the only one whose "
        "versions it registers and whose aliases it points.")
    endpoint: Name | None = Field(
        None, description="A labeler token's one endpoint: the only one whose feedback it "
        "posts, so a leaked label source's token steers no other endpoint's accuracy gate.")

    @model_validator(mode="after")
    def _one_lifetime(self) -> TokenCreate:
        if self.expires_in_days is not None and self.expires_in_minutes is not None:
            raise ValueError("give expires_in_days or expires_in_minutes, not both")
        if self.model is not None and self.role is not Role.TRAINER:
            raise ValueError("model: only a trainer token is limited to one model")
        if self.endpoint is not None and self.role is not Role.LABELER:
            raise ValueError("endpoint: only a labeler token is limited to one endpoint")
        return self


class TokenOut(Wire):
    name: str
    prefix: str
    role: Role
    subject: str
    model: str | None = None  # a trainer token's one model
    endpoint: str | None = None  # a labeler token's one endpoint
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(Wire):
    token: str = Field(description="The secret; shown once, stored only hashed.")
    info: TokenOut


class ArtifactOut(Wire):
    digest: str
    size: int


class IntegrityProblem(Wire):
    """One thing wrong in the store (see control_plane.integrity)."""

    kind: str = Field(description="artifact_missing, artifact_size, artifact_corrupt, alias, "
                      "stage, orphan_route, orphan_rollout or orphan_lineage.")
    subject: str = Field(description="What it concerns: a version ref, alias, endpoint or rollout.")
    message: str


class IntegrityReport(Wire):
    """The result of ``modelplane db check``."""

    ok: bool
    problems: list[IntegrityProblem]
    artifacts_checked: int
    unreferenced_artifacts: list[str] = Field(
        description="Digests in the artifact store that no version or run references.")


class NodeOut(Wire):
    """One Ray node, alive or lost, and how many endpoint replicas run on it."""

    node_id: str
    address: str = Field(description="The node's IP address.")
    alive: bool = Field(description="False once Ray has lost the node (its raylet died).")
    head: bool
    cpus: float
    gpus: float
    resources: dict[str, float] = Field(description=(
        "Custom resources the node offers (its labels, from `ray start --resources`)."))
    endpoint_replicas: int = Field(description="Endpoint replicas Serve runs on it now.")


class ReplicaOut(Wire):
    """One replica of an endpoint (or of one version, isolated placement) and its node."""

    endpoint: str
    version: int | None = Field(description="Isolated placement's version; None: the "
                                            "endpoint's own replicas (all its versions).")
    deployment: str
    replica_id: str
    state: str = Field(description="Serve's replica state: STARTING, RUNNING, STOPPING …")
    node_id: str | None = None
    node_address: str | None = None
    pid: int | None = None


class ClusterOut(Wire):
    """The Ray cluster as the control plane sees it (``GET /api/cluster``)."""

    nodes: list[NodeOut]
    replicas: list[ReplicaOut]


class LeadershipOut(Wire):
    """Who runs the control loops (control_plane.leadership), as the store has it."""

    holder: str | None = Field(
        default=None, description="The lease's holder (host:pid-namespace.boot:pid:id), None if "
                                  "never held.")
    term: int | None = Field(default=None,
                             description="Counts the holders: one more at each takeover.")
    acquired_at: datetime | None = None
    renewed_at: datetime | None = None
    expires_at: datetime | None = Field(
        default=None, description="Another control plane takes over once this has passed "
                                  "without a renewal.")
    this_process: str | None = Field(
        description="The holder id of the control plane that answered (None without loops).")
    leading: bool = Field(description="Whether the control plane that answered runs the loops.")


class ErrorBody(Wire):
    """Every error answer of both planes, as ``modelplane.errors.error_body`` builds it."""

    error: str = Field(description="What was wrong and what to do (the Open Inference "
                       "Protocol's field, which tritonclient prints).")
    code: str = Field(description="Stable machine-readable error code, e.g. not_found.")
    request_id: str = Field(description="The server's id for the request, also in a header "
                            "(x-request-id on /api, x-modelplane-request-id on /v2); the "
                            "server logs failures with it.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Structured context: "
                                   "the field at fault, the allowed values, the limit.")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    model_config = ConfigDict(extra="forbid")

    items: list[T]
    total: int
    limit: int
    offset: int


LineageOut.model_rebuild()


# ---------------------------------------------------------------- deployments


class DeployRequest(Wire):
    """Put a model version on an endpoint (creating the endpoint when it is new)."""

    endpoint: Name
    model_ref: str = Field(description="NAME, NAME:VERSION or NAME@ALIAS.")
    placement: Literal["colocated", "isolated"] | None = Field(
        None, description="Only for a new endpoint; colocated by default."
    )
    scaling: ScaleSettings | None = Field(
        None, description="Endpoint replicas (colocated) or this version's (isolated)."
    )
    batching: BatchSettings = Field(default_factory=BatchSettings)
    weight: float | None = Field(
        None, ge=0, le=100,
        description="Traffic share; default 100 for a new endpoint, 0 for an added version.",
    )


class TrafficUpdate(Wire):
    """The whole route table: weights in percent summing to 100, plus shadow versions."""

    weights: dict[VersionNumber, float] = Field(min_length=1, max_length=64)
    shadows: list[VersionNumber] = Field(default_factory=list, max_length=64)


class RouteOut(Wire):
    version: int
    weight: float
    shadow: bool
    batching: BatchSettings
    scaling: ScaleSettings | None


class EndpointServing(Wire):
    """How applying an endpoint to Ray Serve went, as the reconciler last saw it."""

    state: Literal["applied", "pending", "failed"] = Field(description=(
        "applied: Serve runs it; pending: submitted, not running yet; failed: see error."))
    error: str | None = Field(None, description="Why it is pending or failed (Serve's message).")
    retry_at: datetime | None = Field(None, description="When a failed endpoint is tried again.")
    since: datetime | None = Field(None, description="When it entered this state.")


class EndpointOut(Wire):
    name: str
    model: str
    placement: str
    scaling: ScaleSettings
    generation: int
    routes: list[RouteOut]
    url: str = Field(description="Inference URL prefix (Open Inference Protocol v2).")
    created_at: datetime
    updated_at: datetime
    serving: EndpointServing | None = Field(None, description=(
        "How applying it to Ray Serve went; absent before the reconciler's first pass."))
