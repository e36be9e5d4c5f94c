"""The training job spec: one YAML file, validated as pydantic models before anything runs.

Every section refuses unknown keys, so a typo (``learnin_rate``) is an error naming the
field rather than a silently ignored setting. Checks that need the data or the cluster
(does the target column exist, are there enough GPUs) live in :mod:`training.preflight`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from control_plane.schemas import MAX_RUN_METRIC_POINTS, AliasName, Name
from modelplane.wire import ClosedModel
from serving.schemas import CustomResources, check_custom_resources

BUNDLED_DATASETS = ("digits", "breast_cancer", "wine", "diabetes", "reviews")
# Datasets of texts (one text per row): generated in code (training/text.py).
TEXT_DATASETS = ("reviews",)
# Which task each bundled dataset is: a classifier on diabetes makes no sense.
BUNDLED_TASKS = {
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "diabetes": "regression",
    "reviews": "classification",
}
ARCHITECTURE_TASKS = {
    "mlp_classifier": "classification",
    "cnn_classifier": "classification",
    "mlp_regressor": "regression",
    "text_classifier": "classification",
}
# Metrics every epoch reports, per task; early stopping may watch any of them.
EPOCH_METRICS = {
    "classification": {"train_loss": "min", "val_loss": "min", "val_accuracy": "max"},
    "regression": {"train_loss": "min", "val_loss": "min", "val_mae": "min", "val_rmse": "min"},
}

# What one epoch logs to its run beside EPOCH_METRICS: training.loop's throughput, learning
# rate, time and stop flag, the checkpoint marker and training.callbacks' report count.
EPOCH_BOOKKEEPING = ("samples_per_s", "learning_rate", "epoch_time_s", "stopped_early",
                     "checkpoint_epoch", "train_reports")
# The run's points that are not an epoch's: the held-out evaluation's, with room to spare.
RUN_POINTS_BESIDES_EPOCHS = 1_000

PositiveInt = Annotated[int, Field(ge=1)]

# Ray Train's own wait was 60 s per try, retried forever; ten minutes covers another job
# finishing on a small cluster without leaving a job waiting all night.
DEFAULT_PLACEMENT_TIMEOUT_S = 600.0
DEFAULT_STALL_TIMEOUT_S = 1800.0  # no epoch for half an hour: stuck (a job with longer epochs sets more)
# Reading a large table from a remote store takes minutes; half an hour before the run
# even starts is a read or a connection that hung.
DEFAULT_SETUP_TIMEOUT_S = 1800.0
# The export, its checks and uploads (which wait out a control plane restarting) take
# minutes; an hour past training is a step that hung.
DEFAULT_FINISH_TIMEOUT_S = 3600.0
DEFAULT_MAX_WORKERS = 4
MAX_WORKERS = 4096


class Section(ClosedModel):
    pass


class ExperimentSpec(Section):
    """Where the run is tracked."""

    name: Name = Field(description="Experiment name; created if it does not exist.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags put on every run.")
    run_name: str = Field("", max_length=200, description="Run name (default: generated).")


class ModelSpec(Section):
    """The network: an MLP for tabular data, a small CNN for images, or a bag of embedded
    words for texts."""

    architecture: Literal["mlp_classifier", "mlp_regressor", "cnn_classifier",
                          "text_classifier"] = Field(
        description="mlp_classifier, mlp_regressor, cnn_classifier or text_classifier (one "
                    "text per row; served behind its tokenizer, a builtin:tokenize step)."
    )
    hidden_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64],
        description="MLP: width of each hidden layer. CNN: width of the dense layers after the convolutions.",
    )
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32], description="CNN: output channels of each conv block."
    )
    kernel_size: Annotated[int, Field(ge=1, le=15)] = Field(3, description="CNN: conv kernel size.")
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = Field(
        None,
        description="CNN: [channels, height, width] the flat feature row is reshaped to.",
    )
    vocabulary_size: int = Field(5000, ge=10, le=100_000, description=(
        "text_classifier: at most this many words, the most frequent in the training rows "
        "(seen at least twice); others count as unknown."))
    max_length: int = Field(64, ge=1, le=4096, description=(
        "text_classifier: tokens read per text; the rest is cut."))
    embedding_dim: int = Field(32, ge=1, le=1024, description=(
        "text_classifier: width of each word's embedding (averaged over the text)."))
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    activation: Literal["relu", "gelu", "tanh", "silu", "leaky_relu"] = "relu"
    init_from: str | None = Field(
        None,
        description="Fine-tune: start from a registered version's weights (NAME:VERSION or "
        "NAME@ALIAS); it becomes the new version's parent.",
    )

    @property
    def task(self) -> str:
        return ARCHITECTURE_TASKS[self.architecture]

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd, so each convolution keeps the image's size")
        return value

    @property
    def reads_text(self) -> bool:
        return self.architecture == "text_classifier"

    @model_validator(mode="after")
    def _cnn_needs_an_image(self) -> ModelSpec:
        if self.architecture == "cnn_classifier" and self.image_shape is None:
            raise _at(
                "image_shape",
                "required for cnn_classifier: [channels, height, width], e.g. [1, 8, 8] for digits",
            )
        return self


class DataSpec(Section):
    """A bundled scikit-learn dataset, or a CSV/Parquet file by path or fsspec URI."""

    dataset: str | None = Field(
        None, description=f"Bundled dataset: {', '.join(BUNDLED_DATASETS)} (scikit-learn's, "
        "and reviews: texts generated in code)."
    )
    path: str | None = Field(
        None,
        description="CSV or Parquet file: a local path (relative to the spec file) or an "
        "fsspec URI (s3://, gs://, https://).",
    )
    format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="File format; auto goes by the file extension."
    )
    features: list[str] | None = Field(
        None, description="Feature columns (default: every column but the target)."
    )
    target: str | None = Field(None, description="Target column (files only).")
    validation_split: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of rows held out for validation."
    )
    test_split: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of rows kept out of training altogether: "
        "neither fitted nor used to stop early or pick the best epoch. A pipeline's evaluate "
        "stage scores the candidate on them by default. 0: none."
    )
    seed: int = Field(0, ge=0, description="Seed for the split, initialisation and shuffling.")
    digest: str | None = Field(
        None, pattern="^[0-9a-f]{64}$",
        description="The sha256 the data must have, as a version's lineage records it "
        "(dataset_digest: of a file's bytes, or of a bundled dataset's arrays): a job whose "
        "data has changed refuses before it trains. A pipeline's training stage sets it to "
        "the data its data stage checked.")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        if value is not None and value not in BUNDLED_DATASETS:
            raise ValueError(
                f"unknown dataset {value!r}; choose one of {', '.join(BUNDLED_DATASETS)}, "
                "or give data.path to a CSV/Parquet file"
            )
        return value

    @field_validator("features")
    @classmethod
    def _distinct_features(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("features must list at least one column (or be left out)")
            if len(set(value)) != len(value):
                raise ValueError("features lists a column more than once")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.dataset is None) == (self.path is None):
            raise _at("dataset", "give exactly one of data.dataset (bundled) or data.path (a file)")
        if self.path is not None and not self.target:
            raise _at("target", "required with data.path: name the target column")
        if self.dataset is not None and self.target is not None:
            raise _at("target", f"cannot be set for the bundled dataset {self.dataset!r}; "
                                "its target is fixed")
        if self.target is not None and self.features and self.target in self.features:
            raise _at("features", f"lists the target column {self.target!r}")
        if self.validation_split + self.test_split >= 1:
            raise _at("test_split", f"with validation_split {self.validation_split:g} leaves no "
                                    "rows to train on; the two must sum to less than 1")
        return self

    @property
    def uri(self) -> str:
        """The dataset's URI as recorded in lineage (before relative paths are resolved)."""
        if self.dataset is None:
            return str(self.path)
        return f"{'generated' if self.dataset in TEXT_DATASETS else 'sklearn'}://{self.dataset}"


class SchedulerSpec(Section):
    """Learning-rate schedule, stepped once per epoch."""

    type: Literal["none", "step", "cosine", "exponential"] = "none"
    step_size: PositiveInt = Field(10, description="step: epochs between decays.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step/exponential: decay factor.")


class HyperparametersSpec(Section):
    """Optimisation settings; batch_size is per worker."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Initial learning rate.")
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        64, description="Rows per step on each worker."
    )
    epochs: Annotated[int, Field(ge=1, le=100_000)] = Field(20, description="Most epochs to run.")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (decoupled for adamw).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        # `scheduler: cosine` is the common case; the mapping form carries options.
        return {"type": value} if isinstance(value, str) else value


class ResourcesSpec(Section):
    """How many Ray Train workers, what each reserves, and how long to wait for them."""

    num_workers: int | Literal["auto"] = Field(
        1,
        description="Workers; data is sharded across them and gradients averaged (DDP). "
        "auto: as many as the cluster can ever hold beside its Serve replicas, from 1 up to "
        "max_workers, decided when the job starts.",
    )
    max_workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] | None = Field(
        None, description=f"With num_workers: auto, the most workers to start "
        f"(default {DEFAULT_MAX_WORKERS})."
    )
    use_gpu: bool = Field(False, description="Train on GPUs (NCCL); CPUs and gloo otherwise.")
    cpus_per_worker: float = Field(1.0, gt=0.0, le=512)
    gpus_per_worker: float | None = Field(
        None, ge=0.0, le=64, description="GPUs each worker reserves (default 1 with use_gpu)."
    )
    memory_per_worker_gb: float | None = Field(
        None, gt=0.0, le=65536,
        description="Memory each worker reserves in Ray's scheduler, in GB (default: none).",
    )
    custom_per_worker: CustomResources = Field(
        default_factory=dict,
        description="Custom Ray resources each worker reserves: node labels given to `ray "
        "start --resources`, e.g. {trainer: 1} for the nodes that carry it.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="Where the workers go: PACK fills one node before the next, SPREAD puts "
        "them on different nodes where it can; STRICT_PACK (all on one node) and "
        "STRICT_SPREAD (each on its own node) wait rather than place them otherwise.",
    )
    placement_timeout_s: float = Field(
        DEFAULT_PLACEMENT_TIMEOUT_S, gt=0.0, le=7 * 24 * 3600,
        description="How long the job waits for its workers to be placed when the cluster is "
        "busy; then it fails, saying what it needed and what was free.",
    )
    stall_timeout_s: float | None = Field(
        DEFAULT_STALL_TIMEOUT_S, gt=0.0, le=7 * 24 * 3600,
        description="Stop the job, failed, when no epoch is reported for this long from the "
        "start of training (a worker stuck: Ray Train checks that workers live, not that they "
        "progress); null: no limit.",
    )
    max_run_time_s: float | None = Field(
        None, gt=0.0, le=30 * 24 * 3600,
        description="Stop the job, failed, once training has run this long; null: no limit.",
    )
    setup_timeout_s: float = Field(
        DEFAULT_SETUP_TIMEOUT_S, gt=0.0, le=7 * 24 * 3600,
        description="Stop the job, failed, when the work before training (the control "
        "plane's check, reading and preparing the data, the model to fine-tune from, the "
        "checkpoint to resume from, joining Ray, the checkpoint store's check) takes longer "
        "than this, saying which step hung; a job whose data takes longer to read and "
        "prepare sets more. The wait for free workers that follows has its own, "
        "placement_timeout_s.",
    )
    finish_timeout_s: float = Field(
        DEFAULT_FINISH_TIMEOUT_S, gt=0.0, le=7 * 24 * 3600,
        description="Stop the job, failed, when the work after training (loading its last "
        "checkpoint, evaluation, the ONNX export and its checks, uploads, up to the "
        "registration) takes longer than this, saying which step hung.",
    )
    max_failures: Annotated[int, Field(ge=0, le=100)] = Field(
        0,
        description="Times the workers are started again, from the latest checkpoint, after "
        "one of them or its node dies; one failure more fails the job.",
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _whole_workers_or_auto(cls, value: Any) -> Any:
        # One message for both forms (pydantic would report each member of the union).
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
            raise ValueError(f"must be a whole number greater than or equal to 1 and at most "
                             f"{MAX_WORKERS}, or auto (got {value!r})")
        return value

    @field_validator("custom_per_worker")
    @classmethod
    def _own_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(
            resources, "cpus_per_worker, gpus_per_worker and memory_per_worker_gb")

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> ResourcesSpec:
        if self.gpus_per_worker and not self.use_gpu:
            raise _at("gpus_per_worker", "is set but use_gpu is false; set use_gpu: true")
        if self.use_gpu and self.gpus_per_worker == 0:
            raise _at("gpus_per_worker", "is 0 but use_gpu is true")
        if self.max_workers is not None and self.num_workers != "auto":
            raise _at("max_workers", "only applies with num_workers: auto; set one or the other")
        return self

    @property
    def gpus(self) -> float:
        """GPUs each worker reserves."""
        if not self.use_gpu:
            return 0.0
        return 1.0 if self.gpus_per_worker is None else self.gpus_per_worker

    @property
    def worker_bundle(self) -> dict[str, float]:
        """What one worker reserves, in Ray's resource names (memory in bytes)."""
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus:
            bundle["GPU"] = self.gpus
        if self.memory_per_worker_gb:
            bundle["memory"] = self.memory_per_worker_gb * 1e9
        return bundle | self.custom_per_worker


class EarlyStoppingSpec(Section):
    """Stop when the watched metric has not improved by min_delta for patience epochs."""

    metric: str = Field("val_loss", description="An epoch metric, e.g. val_loss or val_accuracy.")
    mode: Literal["min", "max"] | None = Field(
        None, description="min or max (default: max for accuracy, min otherwise)."
    )
    patience: Annotated[int, Field(ge=1, le=100_000)] = 5
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as better.")
    restore_best: bool = Field(
        True, description="Register the best epoch's weights rather than the last epoch's."
    )


class CheckpointSpec(Section):
    """Checkpoints go through Ray Train's storage; resume picks the latest."""

    every_n_epochs: PositiveInt = Field(1, description="Checkpoint every N epochs (and the last).")
    keep: PositiveInt = Field(2, description="Checkpoints kept; older ones are deleted.")
    storage_path: str | None = Field(
        None,
        description="Where checkpoints live: a local folder or a URI every node can reach "
        "(s3://…). Default: Ray's ~/ray_results.",
    )
    resume_from: str | None = Field(
        None,
        description="Resume from a tracked run (its id) or a checkpoint path: the latest "
        "checkpoint there sets the starting epoch, weights and optimizer.",
    )


class RegistrationSpec(Section):
    """The registered version the job ends with."""

    model_name: Name | None = Field(None, description="Registry model (default: experiment name).")
    alias: AliasName | None = Field(None, description="Alias to point at the new version.")
    description: str = Field("", max_length=2000)
    preprocessing: Literal["in_graph", "step"] = Field("in_graph", description=(
        "in_graph: the fitted standardisation is part of the ONNX graph; step: the graph "
        "takes standardised rows and the version carries the fitted scaler as a "
        "builtin:standardize step before it (docs/models.md). A text_classifier always "
        "takes texts through its fitted tokenizer, a builtin:tokenize step."))


class JobSpec(Section):
    """A whole training job."""

    experiment: ExperimentSpec
    model: ModelSpec
    data: DataSpec
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    early_stopping: EarlyStoppingSpec | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    registration: RegistrationSpec = Field(default_factory=RegistrationSpec)

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def model_name(self) -> str:
        return self.registration.model_name or self.experiment.name

    @property
    def stopping_mode(self) -> str:
        """``min`` or ``max`` for the early-stopping metric."""
        assert self.early_stopping is not None
        return self.early_stopping.mode or EPOCH_METRICS[self.task][self.early_stopping.metric]

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        task = self.model.task
        if self.data.dataset is not None and BUNDLED_TASKS[self.data.dataset] != task:
            raise _at(
                "model.architecture",
                f"{self.model.architecture} is a {task} model but {self.data.dataset} is a "
                f"{BUNDLED_TASKS[self.data.dataset]} dataset",
            )
        text_data = self.data.dataset in TEXT_DATASETS
        if self.data.dataset is not None and text_data != self.model.reads_text:
            raise _at("model.architecture", (
                f"{self.data.dataset} is a text dataset; use text_classifier" if text_data else
                f"text_classifier reads texts, and {self.data.dataset} is not a text dataset "
                f"(text: {', '.join(TEXT_DATASETS)}, or a file whose one feature column is text)"))
        if self.model.reads_text and self.model.init_from:
            raise _at("model.init_from", "not available for text_classifier: each job fits its "
                      "own vocabulary, so another version's embeddings would not line up")
        if self.early_stopping is not None and self.early_stopping.metric not in EPOCH_METRICS[task]:
            raise _at(
                "early_stopping.metric",
                f"unknown metric {self.early_stopping.metric!r} for {task}; choose one of "
                f"{', '.join(EPOCH_METRICS[task])}",
            )
        self._within_the_runs_metric_points()
        return self

    def _within_the_runs_metric_points(self) -> None:
        """Every epoch the job may log fits in its run. Past the run's cap the tracker
        refuses the epochs' figures, and the stall watch, which reads them, would stop a
        healthy job as stuck."""
        epochs = self.hyperparameters.epochs
        # A restart after a failure runs again the epochs since the latest checkpoint.
        again = self.resources.max_failures * min(self.checkpoint.every_n_epochs, epochs)
        per_epoch = len(epoch_metric_keys(self.model.task))
        budget = MAX_RUN_METRIC_POINTS - RUN_POINTS_BESIDES_EPOCHS
        if per_epoch * (epochs + again) <= budget:
            return
        restarts, every = self.resources.max_failures, self.checkpoint.every_n_epochs
        # The most epochs that fit: past `every` epochs a restart runs `every` again at most.
        most = budget // per_epoch - restarts * every
        if most < every:
            most = min(every, budget // per_epoch // (1 + restarts))
        raise _at("hyperparameters.epochs", (
            f"{epochs:,} epochs" + (f", and up to {again:,} run again after "
                                    f"{restarts} restarts,"
                                    if again else "")
            + f" log {per_epoch * (epochs + again):,} metric points ({per_epoch} an epoch), more "
            f"than a run holds ({MAX_RUN_METRIC_POINTS:,}); ask for at most {max(most, 0):,} "
            "epochs" + (", or checkpoint more often (checkpoint.every_n_epochs) or allow "
                        "fewer restarts (resources.max_failures)" if again else "")))


def epoch_metric_keys(task: str) -> tuple[str, ...]:
    """Every metric one epoch of a ``task`` job logs to its run."""
    return (*EPOCH_METRICS[task], *EPOCH_BOOKKEEPING)


class FieldError(ValueError):
    """A check across fields that knows which one is wrong, relative to where it is raised.

    :mod:`training.spec` joins ``field`` to the error's location, so a ``DataSpec`` check
    raising ``FieldError("target", …)`` is reported as ``data.target``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _at(field: str, message: str) -> FieldError:
    return FieldError(field, message)
