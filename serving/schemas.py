"""Wire objects of the data plane: what the reconciler hands each endpoint.

An :class:`EndpointConfig` travels as a Serve ``user_config``; a change to it reaches
every replica through ``reconfigure`` without a restart. Serving never imports the control
plane: these models carry everything a replica needs (artifact URL, digest, signature).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from modelplane.wire import ClosedModel
from serving.monitoring.feedback import MAX_LABELS_PER_REQUEST
from serving.names import MONITOR_NAME, MONITOR_NAMESPACE

STICKY_HEADER = "x-modelplane-key"


class Wire(ClosedModel):
    pass


class TensorSignature(Wire):
    """One input or output as the model declares it; ``None`` dims are dynamic."""

    name: str
    dtype: str = Field(description="numpy spelling: float32, int64, string …")
    shape: list[int | None]


ModelKind = Literal["onnx", "python", "torchscript", "torch_export"]
# ``module:attribute`` inside a version's archive (modules relative to its root), or
# ``builtin:name`` for a step that ships with modelplane (serving.runners.builtin_steps).
CODE_REF = r"^(builtin:[a-z_]+|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*)$"
CodeRef = Annotated[str, Field(pattern=CODE_REF, max_length=200)]


# A pip requirement by name, extras and version bounds only: no URLs, paths or pip options,
# so a manifest cannot point an installer at another index or at local files.
REQUIREMENT = (r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9._,-]{1,100}\])?"
               r"( ?(==|>=|<=|~=|!=|>|<) ?[A-Za-z0-9.*+!_-]{1,50}( ?, ?(==|>=|<=|~=|!=|>|<) ?"
               r"[A-Za-z0-9.*+!_-]{1,50})*)?$")
Requirement = Annotated[str, Field(pattern=REQUIREMENT, max_length=300)]
# pip installs a "name" ending so as a local file: never a package name.
_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".egg")


class ModelCode(Wire):
    """The Python a version runs, packed in its archive: a whole model (``entrypoint``), or
    steps before and after an ONNX graph (``graph``) whose own signature is ``graph_inputs``
    and ``graph_outputs``; the version's signature is then the outer one, as clients see it."""

    entrypoint: CodeRef | None = Field(None, description=(
        "python kind: the model class, `module:Class` (see docs/models.md)."))
    preprocess: CodeRef | None = Field(None, description="onnx kind: inputs as sent → graph inputs.")
    postprocess: CodeRef | None = Field(None, description="onnx kind: graph outputs → outputs returned.")
    graph: str = Field("model.onnx", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$",
                       description="onnx kind with steps: the graph's path in the archive.")
    graph_inputs: list[TensorSignature] | None = None
    graph_outputs: list[TensorSignature] | None = None
    requirements: list[Requirement] = Field(default_factory=list, max_length=64, description=(
        "pip requirements the code needs beyond the platform's own packages, installed for "
        "the version alone (placement isolated; see docs/models.md)."))

    @field_validator("graph")
    @classmethod
    def _inside_the_archive(cls, graph: str) -> str:
        if ".." in graph.split("/"):
            raise ValueError("the graph's path must stay inside the archive (no '..')")
        return graph

    @field_validator("requirements")
    @classmethod
    def _plain_requirements(cls, requirements: list[str]) -> list[str]:
        for requirement in requirements:
            name = requirement.split("[", 1)[0].split(" ", 1)[0]
            name = next((name.split(op, 1)[0] for op in ("==", ">=", "<=", "~=", "!=", ">", "<")
                         if op in name), name)
            if name.lower().endswith(_ARCHIVE_SUFFIXES):
                raise ValueError(f"{requirement!r} names a file; a requirement is a package name "
                                 "with optional extras and version bounds")
        return requirements

    @property
    def is_steps(self) -> bool:
        return self.preprocess is not None or self.postprocess is not None

    @property
    def refs(self) -> list[str]:
        return [r for r in (self.entrypoint, self.preprocess, self.postprocess) if r is not None]

    @property
    def runs_archive_code(self) -> bool:
        """Whether any of its code comes from the archive (not only modelplane's own steps)."""
        return any(not ref.startswith("builtin:") for ref in self.refs)


class BatchingConfig(Wire):
    """Dynamic batching for one version (``max_batch_size`` 1 turns it off)."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 1
    batch_wait_timeout_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0


class AutoscalingConfig(Wire):
    """Serve autoscaling bounds; ``min_replicas`` 0 allows scale to zero."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 2
    target_ongoing_requests: Annotated[float, Field(gt=0, le=10_000)] = 16.0
    # How long the wanted count must stay above (below) the current one before Serve adds
    # (removes) replicas: a short burst does not start replicas, a short lull does not stop them.
    upscale_delay_s: Annotated[float, Field(ge=0, le=3600)] = 3.0
    downscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    # The window Serve averages ongoing requests over before each decision: shorter
    # follows load sooner, longer rides out bursts.
    look_back_period_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


# What a request refused for a full queue is told to wait (``Retry-After``, seconds): about
# the time a replica takes to work through a full queue, or autoscaling to add one.
RETRY_AFTER_S = 1


# A custom Ray resource a replica asks for: a node label (``node:gpu-a``, ``zone-b``) that
# only the matching nodes provide, with a share small enough to fit many replicas.
ResourceName = Annotated[str, Field(min_length=1, max_length=128,
                                    pattern=r"^[A-Za-z0-9_.:/\-]+$")]
CustomResources = Annotated[dict[ResourceName, Annotated[float, Field(gt=0, le=1_000_000)]],
                            Field(max_length=16)]
# Ray's own resources: each has its own setting, never a custom resource.
RAY_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def check_custom_resources(resources: dict[str, float], set_with: str) -> dict[str, float]:
    """``resources`` unchanged; raise when one of them is Ray's own (set with ``set_with``)."""
    reserved = sorted(set(resources) & RAY_RESOURCES)
    if reserved:
        raise ValueError(f"{', '.join(reserved)} are set with {set_with}, not as custom "
                         "resources")
    return resources


class ScalingConfig(Wire):
    """Fixed replicas or autoscaling, what each replica reserves, and where replicas go."""

    replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    autoscaling: AutoscalingConfig | None = None
    num_cpus: Annotated[float, Field(ge=0, le=512)] = 0.5
    num_gpus: Annotated[float, Field(ge=0, le=64)] = 0.0
    memory_mb: Annotated[int, Field(ge=0)] = 0
    max_ongoing_requests: Annotated[int, Field(ge=1, le=100_000)] = 64
    # Requests a replica holds waiting for a slot beyond max_ongoing_requests; past it the
    # replica answers 503 with Retry-After at once instead of letting latency grow. None:
    # no bound.
    max_queued_requests: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # At most this many replicas on one node (1 spreads them, one per node); None: no cap.
    max_replicas_per_node: Annotated[int, Field(ge=1, le=1000)] | None = None
    # Custom Ray resources each replica needs (node labels, ``ray start --resources``).
    resources: CustomResources = Field(default_factory=dict)
    # Ray's accelerator type (``A100``, ``L4`` …): replicas go only to nodes with that GPU.
    accelerator_type: Annotated[str, Field(min_length=1, max_length=64,
                                           pattern=r"^[A-Za-z0-9_.-]+$")] | None = None

    @field_validator("resources")
    @classmethod
    def _own_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(resources, "num_cpus, num_gpus and memory_mb")

    @model_validator(mode="after")
    def _placement_fits(self) -> ScalingConfig:
        if self.accelerator_type is not None and not self.num_gpus:
            raise ValueError("accelerator_type needs num_gpus > 0: it chooses the GPU type")
        return self


class VersionConfig(Wire):
    """One model version an endpoint can route to."""

    version: Annotated[int, Field(ge=1)]
    model: str
    artifact_url: str = Field(description="HTTP URL the replica downloads the artifact from.")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: ModelKind = "onnx"
    code: ModelCode | None = None
    inputs: list[TensorSignature] = Field(min_length=1)
    outputs: list[TensorSignature] = Field(min_length=1)
    task: Literal["classification", "regression", "other"] = "other"
    reference_profile: dict[str, Any] | None = Field(
        None, description="Drift reference (serving.monitoring.profiles.build_reference_profile)."
    )
    class_labels: list[str] | None = Field(
        None, description="Classification: class names by index, for ground-truth labels."
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    scaling: ScalingConfig = Field(
        default_factory=ScalingConfig, description="Isolated placement only."
    )
    intra_op_threads: Annotated[int, Field(ge=1, le=64)] = 1

    @field_validator("reference_profile", mode="before")
    @classmethod
    def _profile_from_wire(cls, value: Any) -> Any:
        if isinstance(value, str):  # the wire form, see _profile_to_wire
            try:
                return json.loads(value)
            except ValueError as error:
                raise ValueError(f"reference_profile is not a JSON document: {error}") from None
        return value

    @field_serializer("reference_profile", when_used="json")
    def _profile_to_wire(self, profile: dict[str, Any] | None) -> str | None:
        # On the wire (a Serve user_config, a model server's arguments) a profile is one
        # string: Serve's controller deep-copies and compares every deployment's
        # user_config on each control-loop step, ten times a second, and a profile's
        # sample rows as Python numbers (65,000 for 64 features) took it 13 ms a copy,
        # half a core for two profiled versions in two applications.
        return None if profile is None else json.dumps(profile, separators=(",", ":"))


class RouteTable(Wire):
    """Which versions answer and in what share; shadows get a copy after the answer."""

    weights: dict[int, Annotated[float, Field(ge=0)]]
    shadows: list[int] = Field(default_factory=list)
    sticky_header: str = STICKY_HEADER

    @model_validator(mode="after")
    def _has_traffic(self) -> RouteTable:
        if self.weights and sum(self.weights.values()) <= 0:
            raise ValueError("at least one version needs a positive weight")
        if set(self.shadows) & {v for v, w in self.weights.items() if w > 0}:
            raise ValueError("a version cannot both take traffic and shadow it")
        return self


class EndpointConfig(Wire):
    """Everything an endpoint's replicas need: versions, routes, placement, scaling."""

    endpoint: str
    placement: Literal["colocated", "isolated"] = "colocated"
    versions: list[VersionConfig]
    routes: RouteTable
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    monitor_actor: str = MONITOR_NAME
    monitor_namespace: str = MONITOR_NAMESPACE
    stats_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    monitoring: bool = Field(True, description="Record latency and status statistics.")
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024 * 1024, description="Largest request body, checked before it is read (413).")
    control_plane_url: str | None = Field(
        None, description="Where replicas check feedback tokens (GET /api/whoami).")
    feedback_allows_anonymous: bool = Field(
        False, description="Accept feedback without a token (MODELPLANE_FEEDBACK_ALLOWS_ANONYMOUS).")
    link_address: str | None = Field(
        None, description="host:port of the node's HTTP ingress (HAProxy), where an isolated "
                          "endpoint's router reaches its versions' own listeners "
                          "(serving.version_link); None: through Serve's handles.")
    generation: int = 0
    # Which creation of this endpoint name the configuration belongs to (the store row's
    # creation time and id): sortable, so the Monitor starts afresh for a newer one and
    # ignores the last shipments of an older one instead of merging two endpoints.
    incarnation: str = ""
    caller_key_sha256: str | None = Field(
        None, description="Where set, inference is answered only to callers sending the key "
                          "whose sha256 this is (header x-modelplane-caller-key): a version "
                          "benchmark's scratch endpoint, which nobody else may load.")

    @model_validator(mode="after")
    def _routes_name_known_versions(self) -> EndpointConfig:
        known = {v.version for v in self.versions}
        routed = set(self.routes.weights) | set(self.routes.shadows)
        unknown = routed - known
        if unknown:
            raise ValueError(f"route table names versions {sorted(unknown)} that are not loaded")
        return self

    def version(self, number: int) -> VersionConfig | None:
        for candidate in self.versions:
            if candidate.version == number:
                return candidate
        return None


MAX_FEEDBACK_ITEMS = 10_000
MAX_FEEDBACK_LABELS = 100_000
FiniteLabel = Annotated[float, Field(allow_inf_nan=False, ge=-1e15, le=1e15)]
# Bounded: a label is a class index or a measured value, and a 400-digit integer would
# overflow the float the error is computed in.
IntegerLabel = Annotated[int, Field(ge=-(2**53), le=2**53)]
Label = Annotated[IntegerLabel | FiniteLabel | Annotated[str, Field(max_length=256)],
                  Field(union_mode="smart")]


class FeedbackItem(Wire):
    """The true label (class index or name) or value of an earlier request."""

    request_id: str = Field(min_length=1, max_length=256,
                            description="The server's id of the answer: its "
                            "`x-modelplane-request-id` header (also in the response's "
                            "`parameters`), not the client's `id`.")
    label: Label | Annotated[list[Label], Field(min_length=1, max_length=MAX_LABELS_PER_REQUEST)] = Field(
        description="One label per row of the request; a single value for one-row requests."
    )


class FeedbackRequest(Wire):
    """``POST /v2/models/{endpoint}/feedback``: ground truth for requests, any time later."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)

    @field_validator("feedback")
    @classmethod
    def _bounded_labels(cls, items: list[FeedbackItem]) -> list[FeedbackItem]:
        # Items and labels per item are bounded apart; their product must be too.
        total = sum(len(i.label) if isinstance(i.label, list) else 1 for i in items)
        if total > MAX_FEEDBACK_LABELS:
            raise ValueError(f"{total} labels in one batch, at most {MAX_FEEDBACK_LABELS}; "
                             "send them in several batches")
        return items
