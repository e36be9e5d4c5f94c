"""Run one job from a validated spec: data → Ray Train → evaluation → ONNX → registered version.

The driver (this module, in the ``ray job submit`` entrypoint or ``modelplane train run``)
loads and splits the data once and puts it in Ray's object store, starts a tracked run,
fits a ``TorchTrainer``, then evaluates the final (or best) weights on the held-out rows,
exports them to ONNX, checks ONNX Runtime against torch, and registers the version with
its manifest. The run ends ``finished``, ``failed`` or ``killed`` whatever happens.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.schemas import JOB_TAG, PROCESS_TAG
from modelplane.process_names import new_process_name
from training import trained_rows
from training.alive import AliveSignal
from training.capacity import ClusterCapacity, Placement, plan_placement, wait_for_placement
from training.checkpoints import CHECKPOINT_DIR_TAG, load_state, resolve_resume
from training.data import Dataset, Split, load_dataset, split_dataset
from training.errors import InvalidJobSpecError, TrainingError
from training.finetune import MODEL_BUNDLE_ARTIFACT, bundle_mismatch, load_fine_tune_source
from training.job import EXIT_STOPPED
from training.patience import patiently
from training.schemas import DEFAULT_MAX_WORKERS, JobSpec
from training.spec import dump_job_spec
from training.storage import check_storage, checkpoint_storage
from training.text import TextEncoding, fit_vocabulary
from training.watchdog import FinishDeadline, SetupDeadline, Watchdog

# Set when the job is asked to stop (SIGTERM from `ray job stop`): whatever exception the
# interrupted Ray call turns that into, the run ends "killed", not "failed".
STOP_REQUESTED = threading.Event()
# Set when a deadline of the training passed (training.watchdog): why the job was stopped.
OVERDUE: list[str] = []
_handle_stop_signal = False

# Ray Train's controller polls workers this often, and a worker's report waits for the
# poll that takes its last one: Ray's 2 s default stretched every short epoch to 2 s, and
# 0.25 s to 0.32 s (40 epochs of a small tabular model, 10 ms of training each, took 13 s).
# A poll is an actor call to each worker, about 1.3 ms of CPU there and back: at this rate
# 1.3% of a core per worker, most of it on the controller's node.
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.1"
# Ray Train's own wait for the workers' placement group. The job has already waited for
# free resources itself; this bounds the rest (another job may take them first), and the
# floor gives Ray a moment to create the group even when the budget is nearly spent.
WORKER_GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
MIN_WORKER_GROUP_START_S = 5.0
# Ray Train starts an actor per run that watches for nodes being drained (spot preemption)
# and logs it; the training loop does not read what it finds. On a one-node cluster (a
# laptop's head, `train run`'s private Ray) no node is drained, and the actor is a process
# and about 1.6 s of CPU per job for nothing. Set to 1 to keep it there too.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@dataclass(frozen=True)
class JobResult:
    """What a finished job produced."""

    run_id: str
    model: str
    version: int | None
    epochs: int
    stopped_early: bool
    metrics: dict[str, float]
    max_abs_diff: float


def run_job(spec: JobSpec, *, address: str | None = None, num_cpus: int | None = None,
            register: bool = True, echo: Callable[[str], None] = print) -> JobResult:
    """Run the whole job; ``address="local"`` starts a private Ray instead of joining one."""
    from control_plane.client import Client
    from control_plane.ray_auth import apply_ray_auth_env
    from modelplane.settings import get_settings

    # A stop or deadline of an earlier job in this process (a notebook's) is not this one's.
    STOP_REQUESTED.clear()
    OVERDUE.clear()
    apply_ray_auth_env()
    # Nothing else watches the work before training: no run exists yet to beat or sweep.
    setup = SetupDeadline(spec.resources.setup_timeout_s, _interrupt_main,
                          functools.partial(_give_up, None, None)).start()
    try:
        settings = get_settings()
        token = settings.resolved_token()
        client = Client(settings.url, token, settings=settings)
        setup.enter("checking the control plane")
        client.health()  # fail now, not after an hour of training, if the tracker is unreachable
        refuse_crowning(spec)

        setup.enter("loading the data")
        dataset = load_dataset(spec.data, spec.task, text=spec.model.reads_text)
        split = split_dataset(dataset, validation_split=spec.data.validation_split, seed=spec.data.seed,
                              test_split=spec.data.test_split)
        tested = len(split.x_test) if split.x_test is not None else 0
        echo(f"data {dataset.uri}: {len(split.x_train)} training and {len(split.x_val)} validation "
             f"rows" + (f", {tested} test rows kept out of training" if tested else "")
             + f", {len(dataset.feature_names)} features"
             + (f", {dataset.n_outputs} classes" if dataset.class_labels else ""))
        texts = None
        if spec.model.reads_text:
            setup.enter("fitting the tokenizer")
            texts = TextSplit.fitted(spec, split, dataset.feature_names[0])
            split = texts.encoded()
            echo(f"tokenizer: {len(texts.encoding.vocabulary)} words from the training texts "
                 f"(of at most {spec.model.vocabulary_size}), {spec.model.max_length} tokens a text")
        shape = {"model_spec": spec.model.model_dump(mode="json"),
                 "n_features": int(split.x_train.shape[1]), "n_outputs": dataset.n_outputs}
        init = None
        if spec.model.init_from:
            setup.enter(f"fetching {spec.model.init_from} to fine-tune from")
            init = load_fine_tune_source(spec.model.init_from, client, **shape)
            echo(f"fine-tuning from {init.model}:{init.version}")
        resume, resume_epoch = None, None
        if spec.checkpoint.resume_from:
            setup.enter(f"reading the checkpoint {spec.checkpoint.resume_from} to resume from")
            resume = resolve_resume(spec.checkpoint.resume_from, client)
            resume_epoch = _resumable_epoch(resume, shape)
            echo(f"resuming from {resume} (after epoch {resume_epoch})")

        setup.enter("joining Ray")
        cluster = _connect_ray(address, num_cpus)
        where = cluster["address"]
        placement = _plan(spec, where)  # a job the cluster can never hold stops here, unrun
        if spec.resources.num_workers == "auto":
            echo(f"num_workers auto: {placement.num_workers} worker(s), the most this cluster can "
                 f"hold beside its Serve replicas (max_workers "
                 f"{spec.resources.max_workers or DEFAULT_MAX_WORKERS})")

        from training.tracking import flat_params, run_environment

        train_run_name = f"{spec.experiment.name}-{uuid.uuid4().hex[:8]}"
        storage = checkpoint_storage(spec)
        setup.enter(f"checking the checkpoint store {storage}")
        check_storage(storage, len(cluster["nodes"]), echo)
        params = flat_params(spec) | {
            "n_features": shape["n_features"], "n_outputs": dataset.n_outputs,
            "train_rows": len(split.x_train), "validation_rows": len(split.x_val), "test_rows": tested,
            "resources.num_workers": placement.num_workers,
        }
        if spec.resources.num_workers == "auto":
            params["resources.num_workers_requested"] = "auto"
        if resume is not None:
            params |= {"resumed_from_checkpoint": resume, "resumed_from_epoch": resume_epoch}
        if texts is not None:
            params["vocabulary_words"] = len(texts.encoding.vocabulary)
        tags = {**spec.experiment.tags, "architecture": spec.model.architecture,
                "dataset": dataset.uri, "ray_train_run": train_run_name,
                CHECKPOINT_DIR_TAG: f"{storage.rstrip('/')}/{train_run_name}"}
        if submission := _submission_id():
            tags[JOB_TAG] = submission
        else:  # ended by the control plane's sweep once this process is gone, if it is killed
            tags[PROCESS_TAG] = new_process_name()
        # Here, not only below: an interrupt from a deadline that fired meanwhile lands in
        # this try, as the deadline's failure, never once the run exists.
        setup.stop()
    except BaseException:
        if OVERDUE and not STOP_REQUESTED.is_set():
            raise TrainingError(OVERDUE[0]) from None
        raise
    finally:
        setup.stop()
    # Bounded by the client's own timeout and its few tries; from here the run is ended
    # whatever happens (below), or swept by the control plane if this process dies.
    run = client.start_run(spec.experiment.name, name=spec.experiment.run_name or train_run_name,
                           params=params, tags=tags, environment=run_environment(cluster["summary"]))
    echo(f"run {run.id} in experiment {spec.experiment.name}")
    alive = AliveSignal(functools.partial(client.run_alive, run.id)).start()
    finishing = FinishDeadline(spec.resources.finish_timeout_s, _interrupt_main,
                               functools.partial(_give_up, client, run.id))
    try:
        placement, left_s = wait_for_placement(lambda: _plan(spec, where),
                                               spec.resources.placement_timeout_s, echo)
        result = _finish(spec, client, token, run.id, dataset, split, train_run_name, storage,
                         init=init, resume=resume, register=register, echo=echo,
                         placement=placement, placement_left_s=left_s, texts=texts,
                         finishing=finishing)
    except BaseException as error:
        finishing.stop()
        alive.stop()
        if OVERDUE and not STOP_REQUESTED.is_set():
            _end_quietly(client, run.id, "failed", OVERDUE[0])
            client.close()
            raise TrainingError(OVERDUE[0], detail={"run_id": run.id}) from None
        stopped = STOP_REQUESTED.is_set() or isinstance(error, KeyboardInterrupt)
        _end_quietly(client, run.id, "killed" if stopped else "failed",
                     None if stopped else _reason(error))
        client.close()
        raise
    alive.stop()
    try:
        _end_finished(client, run.id, result, echo)
    finally:
        client.close()
    return result


def refuse_crowning(spec: JobSpec) -> None:
    """Refuse, before anything is trained, a job that would point ``champion`` at its own
    version (a promotion's alias, which a job's token may not move). Checked here, not by
    the spec's schema, so that pipelines stored with such a spec still read."""
    from control_plane.schemas import CHAMPION_ALIAS

    if spec.registration.alias == CHAMPION_ALIAS:
        raise InvalidJobSpecError(
            f"registration.alias: {CHAMPION_ALIAS!r} is the alias a promotion moves (a rollout "
            "that passes its gates); a job's version takes another, such as challenger, which "
            "an endpoint may track", detail={"field": "registration.alias"})


def _finish(spec: JobSpec, client: Any, token: str | None, run_id: str, dataset: Dataset, split: Split,
            train_run_name: str, storage: str, *, init: Any, resume: str | None, register: bool,
            echo: Callable[[str], None], placement: Placement,
            placement_left_s: float, finishing: FinishDeadline,
            texts: TextSplit | None = None) -> JobResult:
    from training.early_stopping import EarlyStopping
    from training.evaluation import classification_metrics, regression_metrics
    from training.export import (
        check_parity,
        export_onnx,
        runner_outputs,
        serving_form,
        text_serving_form,
        torch_outputs,
    )
    from training.models import from_bundle, to_bundle
    from training.registration import (
        AliasNotMovedError,
        build_manifest,
        code_version,
        reference_profile,
        text_reference_profile,
    )
    from training.registration import register as register_version

    state = _fit(spec, client, token, run_id, dataset, split, train_run_name, storage,
                 init_state=init.state_dict if init else None, resume=resume, echo=echo,
                 placement=placement, placement_left_s=placement_left_s,
                 n_ids=texts.encoding.id_count if texts is not None else 0, finishing=finishing)
    finishing.enter("evaluating on the validation rows")
    network = from_bundle(state["network"])
    best = state.get("best_weights")
    if best is not None:
        best_epoch = state["early_stopping"]["best_epoch"]
        network.load_state_dict(best)
        echo(f"using the weights of epoch {best_epoch}, the best "
             f"{spec.early_stopping.metric if spec.early_stopping else 'val_loss'}")
    epochs = int(state["epoch"])
    stopped = EarlyStopping.from_state(state["early_stopping"]).should_stop \
        and epochs < spec.hyperparameters.epochs
    outputs = torch_outputs(network, split.x_val)
    import numpy as np

    if not all(np.isfinite(values).all() for values in outputs.values()):
        raise TrainingError(
            "training diverged: the model answers NaN or infinity on the held-out rows "
            f"(after {epochs} epochs); lower hyperparameters.learning_rate (now "
            f"{spec.hyperparameters.learning_rate:g}) or scale the features",
            detail={"field": "hyperparameters.learning_rate"})
    if spec.task == "classification":
        metrics = classification_metrics(split.y_val, outputs["probabilities"])
    else:
        metrics = regression_metrics(split.y_val, outputs["prediction"])
    echo("held-out evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    # Hours of work done: from here on a control plane restarting is waited for, not a
    # reason to fail (each call is the same when repeated: uploads are by content, a run
    # artifact replaces its path's, parameters and a step's metrics are set again).
    patiently(lambda: client.log_metrics(run_id, {f"eval_{k}": v for k, v in metrics.items()},
                                         step=epochs))

    finishing.enter("exporting to ONNX and checking it against torch")
    if texts is not None:
        assert dataset.class_labels is not None
        onnx_model = export_onnx(network)
        artifact, signature, steps = text_serving_form(onnx_model, texts.encoding,
                                                       dataset.class_labels)
        served = runner_outputs(artifact, signature, steps,
                                {texts.encoding.input_name: texts.x_val[:, 0]})
        behind = " behind its fitted tokenizer (builtin:tokenize) and class names"
    else:
        as_step = spec.registration.preprocessing == "step"
        onnx_model = export_onnx(network, standardize=not as_step)
        artifact, signature, steps = serving_form(network, onnx_model, as_step=as_step)
        served = runner_outputs(artifact, signature, steps, split.x_val) if steps else None
        behind = " behind its fitted scaler (builtin:standardize)" if steps else ""
    diff = check_parity(onnx_model, network, split.x_val, served=served)
    echo(f"exported ONNX ({len(onnx_model) / 1024:.0f} KiB){behind}"
         + f"; {'the served steps and graph match' if steps else 'ONNX Runtime matches'} "
         f"torch on {len(split.x_val)} rows (max abs diff {diff:.2g})")
    bundle = io.BytesIO()
    import torch

    torch.save(to_bundle(network), bundle)
    # The rows it trained on, and those it chose its epoch on where it stopped early, as
    # the evaluate stage reads rows (texts as texts): no later comparison scores this model
    # on them. Without early stopping the validation rows are untouched, and may be the
    # very rows a pipeline holds out to judge it (spec.held_out_problem).
    chose_on = spec.early_stopping is not None
    seen = (trained_rows.build(texts.x_train[:, 0], texts.x_val[:, 0] if chose_on else None)
            if texts is not None
            else trained_rows.build(split.x_train, split.x_val if chose_on else None))
    kept = [(MODEL_BUNDLE_ARTIFACT, bundle.getvalue()), ("model/model.onnx", onnx_model),
            *([("model/model.zip", artifact)] if steps else []),
            ("job.yaml", dump_job_spec(spec).encode()), (trained_rows.ARTIFACT_PATH, seen)]
    finishing.enter("uploading the run's artifacts")
    for path, content in kept:
        patiently(functools.partial(client.log_artifact, run_id, path, content))
    patiently(lambda: client.log_params(run_id, {"epochs_run": epochs, "stopped_early": stopped,
                                                 "onnx_max_abs_diff": diff}))
    if not register:
        finishing.stop()
        return JobResult(run_id, spec.model_name, None, epochs, stopped, metrics, diff)

    finishing.enter("profiling the training rows")
    first_output = next(iter(torch_outputs(network, split.x_train).values()))
    if texts is not None:
        profile = text_reference_profile(spec, texts.encoding, texts.x_train[:, 0], first_output)
    else:
        profile = reference_profile(spec, split.x_train, dataset.feature_names, first_output)
    manifest = build_manifest(
        spec=spec, dataset=dataset, signature=signature, steps=steps, profile=profile,
        metrics=metrics, run_id=run_id,
        parent_version=init.version if init and init.model == spec.model_name else None,
        code=code_version(),
    )
    # Each try of the registration has its deadline and the tries their limit (patiently):
    # not cut short here, where a slow but live registration would land for a failed run.
    finishing.stop()
    try:
        version = register_version(client, spec, artifact, manifest)
    except AliasNotMovedError as error:
        _note_registered(client, run_id, f"{error.version.model}:{error.version.version}", echo)
        raise
    alias = f" (alias {spec.registration.alias})" if spec.registration.alias else ""
    echo(f"registered {version.model}:{version.version}{alias}")
    _note_registered(client, run_id, f"{version.model}:{version.version}", echo)
    return JobResult(run_id, version.model, version.version, epochs, stopped, metrics, diff)


def _fit(spec: JobSpec, client: Any, token: str | None, run_id: str, dataset: Dataset, split: Split,
         train_run_name: str, storage: str, *, init_state: Any, resume: str | None,
         echo: Callable[[str], None], placement: Placement,
         placement_left_s: float, finishing: FinishDeadline,
         n_ids: int = 0) -> dict[str, Any]:
    """Train on Ray Train; returns the state in the final checkpoint (loaded under
    ``finishing``, which starts as the training ends)."""
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    from training.callbacks import TrackerCallback
    from training.loop import train_worker

    resources = spec.resources
    start_s = worker_group_start_s(resources, placement_left_s)
    os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = f"{start_s:g}"
    data = ray.put({"x_train": split.x_train, "y_train": split.y_train,
                    "x_val": split.x_val, "y_val": split.y_val})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "data": data,
                           "n_outputs": dataset.n_outputs, "n_ids": n_ids, "init_state": init_state,
                           "resume_from": resume},
        scaling_config=ScalingConfig(num_workers=placement.num_workers, use_gpu=resources.use_gpu,
                                     resources_per_worker=dict(placement.bundle),
                                     placement_strategy=resources.placement_strategy),
        run_config=RunConfig(
            name=train_run_name, storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            # Ray Train retries a worker group that fails to start (or to be placed) forever,
            # a traceback each time: fail once instead, in one line (see training_failure).
            # A worker (or its node) dying mid-run restarts the group from the latest
            # checkpoint, as often as the spec allows.
            failure_config=FailureConfig(max_failures=resources.max_failures,
                                         controller_failure_limit=0),
            callbacks=[TrackerCallback(client.url, token, run_id, spec.hyperparameters.epochs,
                                       stall_s=resources.stall_timeout_s)],
            # Ray Train narrates every report at INFO; the callback prints one line an epoch.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    device = "GPU" if resources.use_gpu else "CPU"
    echo(f"training on {placement.num_workers} {device} worker(s) for up to "
         f"{spec.hyperparameters.epochs} epochs; checkpoints in {storage}/{train_run_name}")
    watchdog = Watchdog(lambda: _progress(client, run_id), _interrupt_main,
                        stall_s=resources.stall_timeout_s, max_s=resources.max_run_time_s,
                        start_s=start_s,
                        on_stuck=functools.partial(_give_up, client, run_id)).start()
    try:
        result = fit_noting_stops(trainer)
    except TrainingFailedError as error:
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt from None  # Ctrl-C aborted the run: a stop
        raise training_failure(error, spec, placement, run_id) from None
    except ray.exceptions.RayActorError as error:
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt from None
        # Ray Train's controller died (or was never started): one line, not a traceback.
        raise TrainingError(f"Ray Train's controller died: {_first_line(error)}; the "
                            "checkpoints so far are kept, resubmit the job (with "
                            "checkpoint.resume_from: the run's id) to go on",
                            detail={"run_id": run_id}) from None
    finally:
        watchdog.stop()
    finishing.start()
    if result.checkpoint is None:
        raise TrainingError("training ended without a checkpoint", detail={"run_id": run_id})
    return load_state(result.checkpoint)


@dataclass(frozen=True)
class TextSplit(Split):
    """A text job's split as texts (``[rows, 1]``), with the tokenizer fitted on its
    training rows."""

    encoding: TextEncoding = field(kw_only=True)

    @classmethod
    def fitted(cls, spec: JobSpec, split: Split, column: str) -> TextSplit:
        vocabulary = fit_vocabulary(split.x_train[:, 0], spec.model.vocabulary_size)
        encoding = TextEncoding(vocabulary, spec.model.max_length, input_name=column)
        return cls(split.x_train, split.y_train, split.x_val, split.y_val, encoding=encoding)

    def encoded(self) -> Split:
        """The same rows as token ids, as the network reads them."""
        return Split(self.encoding.encode(self.x_train[:, 0]), self.y_train,
                     self.encoding.encode(self.x_val[:, 0]), self.y_val)


def fit_noting_stops(trainer: Any) -> Any:
    """``trainer.fit()``, where Ctrl-C (SIGINT) is a stop, as SIGTERM is.

    Ray Train's ``fit()`` installs its own SIGINT handler, which aborts the run and may
    ``sys.exit(0)``, so no KeyboardInterrupt says the user stopped it, and the handler stays
    after ``fit()`` (swallowing Ctrl-C during export and registration). Here a SIGINT that
    no deadline sent sets ``STOP_REQUESTED``, the run's end raises KeyboardInterrupt, and
    the handler from before is put back. A deadline's SIGINT that Train returns from ends
    the same way (no stop: ``OVERDUE`` says why the run failed)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    register = getattr(trainer, "_register_sigint_handler", None)
    if main and callable(register):
        def register_noting_stops(controller: Any) -> None:
            register(controller)
            train_handler = signal.getsignal(signal.SIGINT)

            def on_sigint(signum: int, frame: Any) -> None:
                if not OVERDUE:  # a deadline interrupts through SIGINT too: not a stop
                    STOP_REQUESTED.set()
                if callable(train_handler):
                    train_handler(signum, frame)

            signal.signal(signal.SIGINT, on_sigint)

        trainer._register_sigint_handler = register_noting_stops
    try:
        result = trainer.fit()
    except SystemExit:
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
    if STOP_REQUESTED.is_set() or OVERDUE:
        # Aborted (by a stop or a deadline): what it returned is no finished training.
        raise KeyboardInterrupt
    return result


def _progress(client: Any, run_id: str) -> tuple[tuple[str, float], ...]:
    """The run's latest metrics as the control plane holds them: they change every epoch."""
    return tuple(sorted(client.get_run(run_id).latest_metrics.items()))


GIVE_UP_WAIT_S = 30.0  # a stuck job's last calls (the run's end, its token's revocation)


def _give_up(client: Any, run_id: str | None, reason: str) -> None:
    """The main thread is stuck past an interrupt's reach (native code, a hung read): end
    the run (where one exists yet) from here, one try each, and the process with it, which
    ends the job. Killed, as the main thread would have ended it, where a person asked it
    to stop meanwhile."""
    import sys

    stopped = STOP_REQUESTED.is_set()
    # Its calls wait on a control plane that may not answer either (60 s each, and their
    # tries): the process ends GIVE_UP_WAIT_S from here whatever they do.
    ending = threading.Timer(GIVE_UP_WAIT_S, os._exit, args=(EXIT_STOPPED if stopped else 1,))
    ending.daemon = True
    ending.start()
    # First: the job's last line is its failure's reason (a pipeline's stage shows it).
    print(f"{'stopped' if stopped else 'error'}: {reason}", file=sys.stderr, flush=True)
    if run_id is not None:
        with contextlib.suppress(Exception):
            client.log_params(run_id, {"failure_reason": reason[:2000]})
        with contextlib.suppress(Exception):
            client.end_run(run_id, "killed" if stopped else "failed")
    with contextlib.suppress(Exception):  # the job's own token dies with it, as on any exit
        from training.job_token import revoke_own_token

        revoke_own_token()
    os._exit(EXIT_STOPPED if stopped else 1)


def _interrupt_main(reason: str) -> None:
    # KeyboardInterrupt in the main thread unwinds fit() as a stop would; run_job then
    # ends the run failed with the deadline's reason (OVERDUE), not killed.
    import _thread

    OVERDUE.append(reason)
    _thread.interrupt_main()


def handle_stop_signal() -> None:
    """Turn SIGTERM into KeyboardInterrupt (and set ``STOP_REQUESTED``) in this process."""
    global _handle_stop_signal
    _handle_stop_signal = True
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    STOP_REQUESTED.set()
    raise KeyboardInterrupt


def _connect_ray(address: str | None, num_cpus: int | None) -> dict[str, Any]:
    """Join (or start) Ray; returns the alive nodes' resources and a summary for the run."""
    import ray

    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)
    if not ray.is_initialized():
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus, logging_level="WARNING")
        else:
            # None: RAY_ADDRESS (set by `ray job submit`) or a running local cluster.
            ray.init(address=address, logging_level="WARNING")
        if _handle_stop_signal:
            # ray.init replaces SIGTERM's handler with one that exits at once.
            signal.signal(signal.SIGTERM, _on_sigterm)
    every = ray.nodes()
    nodes = [node["Resources"] for node in every if node.get("Alive")]
    if len(nodes) == 1:  # Ray Train passes it from this driver to its controller
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    from control_plane.ray_clusters import this_ray_cluster

    # Where and which start of the cluster: the sweep of abandoned runs ends a run whose
    # cluster restarted under it (control_plane.ray_clusters.RayCluster).
    cluster = this_ray_cluster(every)
    assert cluster is not None
    summary = {"ray_version": ray.__version__, **cluster._asdict(), "nodes": len(nodes),
               "resources": ray.cluster_resources()}
    return {"nodes": nodes, "address": cluster.address, "summary": summary}


def _resumable_epoch(location: str, shape: dict[str, Any]) -> int:
    """The epoch a checkpoint was taken after; raise naming the field if it cannot resume this job."""
    from ray.train import Checkpoint

    state = load_state(Checkpoint(location))
    problem = bundle_mismatch(state["network"], **shape)
    if problem:
        raise InvalidJobSpecError(f"checkpoint.resume_from: the checkpoint at {location} {problem}",
                                  detail={"field": "checkpoint.resume_from"})
    return int(state["epoch"])


def _submission_id() -> str | None:
    # The job supervisor hands the driver its job config (with the submission id) here.
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return config.get("metadata", {}).get("job_submission_id") or None
    except ValueError:
        return None


def _plan(spec: JobSpec, where: str) -> Placement:
    from training.cluster import cluster_here

    return plan_placement(spec.resources, cluster_here(where))


def worker_group_start_s(resources: Any, placement_left_s: float) -> float:
    """How long Ray Train may take to start the worker group: what is left of the placement
    wait for a job that starts its workers once; the whole of it where workers may restart
    (``max_failures``), since Ray Train reads one figure for every start, and a restart
    after a worker died had only the first start's remainder (5 s, after a long wait)."""
    if resources.max_failures > 0:
        return float(resources.placement_timeout_s)
    return max(placement_left_s, MIN_WORKER_GROUP_START_S)


def training_failure(error: BaseException, spec: JobSpec, placement: Placement, run_id: str,
                     read_cluster: Callable[[str], ClusterCapacity] | None = None) -> TrainingError:
    """One line for a failed ``fit``: what went wrong, and for a worker group that could not
    start, what to do (Ray's own error is a traceback meant for Ray's developers).
    ``read_cluster`` reads the cluster's figures now (default: the one this process joined)."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import (
        WorkerGroupStartupFailedError,
        WorkerGroupStartupTimeoutError,
    )

    from training.cluster import cluster_here

    read_cluster = read_cluster or cluster_here
    cause = getattr(error, "controller_failure", None) if isinstance(error, ControllerError) else None
    if isinstance(cause, WorkerGroupStartupTimeoutError):
        # Free when the job looked, taken before Ray Train placed the group: report now's figures.
        fresh = Placement(placement.num_workers, placement.bundle, False,
                          read_cluster(placement.cluster.where))
        return fresh.timeout_error(spec.resources.placement_timeout_s)
    if isinstance(cause, WorkerGroupStartupFailedError):
        reason = _first_line(cause.__cause__ or cause)
        return TrainingError(f"the {placement.needs} did not start: {reason}; the Ray logs of "
                             "the job's workers say why (`ray logs`, or the dashboard)",
                             detail={"run_id": run_id})
    if cause is not None:
        return TrainingError(f"Ray Train's controller failed: {_first_line(cause)}",
                             detail={"run_id": run_id})
    return TrainingError(f"training failed: {_first_lines(error)}", detail={"run_id": run_id})


def _reason(error: BaseException) -> str:
    """Why a run failed, as kept on it (the ``failure_reason`` param)."""
    from modelplane.errors import ModelplaneError

    if isinstance(error, ModelplaneError):
        return error.message[:2000]
    return f"{type(error).__name__}: {_first_line(error)}"


def _note_registered(client: Any, run_id: str, registered: str,
                     echo: Callable[[str], None]) -> None:
    """Note the version on its run. Registered (and its alias moved), the job has done its
    work: this is bookkeeping, and its failing must not call the job failed while its
    version stands."""
    try:
        patiently(lambda: client.log_params(run_id, {"registered_version": registered}))
    except Exception as error:
        echo(f"warning: could not note {registered} on run {run_id}: {_first_line(error)}")


def _end_finished(client: Any, run_id: str, result: JobResult,
                  echo: Callable[[str], None]) -> None:
    """End the run finished. Where the control plane stays away, a job that registered its
    version still succeeds: the control plane's sweep of abandoned runs ends the run
    finished, seeing the job succeeded and the version registered from its run."""
    try:
        _end_run(client, run_id, "finished")
    except Exception as error:
        if result.version is None:
            raise
        echo(f"warning: could not end run {run_id} ({_first_line(error)}); the control "
             "plane ends it once it sees the job ended")


def _end_quietly(client: Any, run_id: str, status: str, reason: str | None = None) -> None:
    # The original error matters more than this bookkeeping.
    with contextlib.suppress(Exception):
        if reason:
            patiently(lambda: client.log_params(run_id, {"failure_reason": reason}))
    with contextlib.suppress(Exception):
        _end_run(client, run_id, status)


# A control plane restarting, or its store failing over, answers again within this
# (about a minute); a run left running reads as a live job until the leader's sweep of
# abandoned runs ends it (control_plane.abandoned_runs).
def _end_run(client: Any, run_id: str, status: str) -> None:
    """End the run, asking again while the control plane cannot answer."""
    patiently(lambda: client.end_run(run_id, status))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _first_lines(error: BaseException, limit: int = 20) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return "\n".join(lines[-limit:]) if lines else type(error).__name__

