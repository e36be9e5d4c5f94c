"""The stages that judge before anything takes traffic: the data, and the candidate against
the champion on held-out rows. Each reads and computes off the pipeline pass
(:mod:`control_plane.pipelines.offload`), within its own deadline, and stores its whole
report.

The champion is the version taking the most traffic on the pipeline's endpoint, unless
that is the run's own candidate: then the one that served when the run began
(:mod:`control_plane.pipelines.champion`); a pipeline whose endpoint serves nothing has
none, and its candidate is held to the absolute thresholds alone (the report says so).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from control_plane.pipelines.champion import PIN, pin_of, pinned_version, run_champion
from control_plane.pipelines.offload import Done, Offload, Pending, WorkOverdue
from control_plane.pipelines.records import StageState
from control_plane.pipelines.spec import job_data_uri
from control_plane.pipelines.stages import (
    PASSING_TROUBLE,
    VALIDATED_DIGEST,
    Outcome,
    StageContext,
    refused_at_apply,
    reject_candidate,
    stage_elapsed_s,
)

log = logging.getLogger(__name__)


def reject(services: Any, context: StageContext, reason: str) -> None:
    """Mark the run's candidate rejected with the gate's reason (``reject_candidate``)."""
    candidate = context.candidate
    if candidate is not None:
        reject_candidate(services, context, context.record.name, candidate, reason)


class ValidateDataStage:
    """Schema, missing values, ranges, categories, row count, and drift of the new data
    against the champion's reference profile (:mod:`control_plane.pipelines.data_validation`).

    The champion is looked up, and the data read and checked, off the pass: a read that
    hangs fails this stage at ``data.timeout_s`` and holds no other pipeline."""

    name = "validate_data"

    def __init__(self, services: Any, offload: Offload | None = None) -> None:
        self.services = services
        self.offload = offload or Offload()

    def advance(self, context: StageContext) -> Outcome:
        data = context.spec.data
        if data is None:
            return Outcome(StageState.SKIPPED, reason="no data section in the spec")
        refused = refused_at_apply(context)
        if refused is not None:
            return refused
        target = _target_column(context)

        def check() -> tuple[Any, str | None, bool, str]:
            from control_plane.pipelines.data_sources import read_dataset
            from control_plane.pipelines.data_validation import validate_data

            best = run_champion(self.services, context)
            profile = best.manifest.reference_profile if best is not None else None
            table, trained_digest = read_dataset(data.uri)
            # Without a champion's profile there is nothing to judge drift against: skipped.
            report = validate_data(table, data.expectations, profile, target=target)
            return report, pin_of(best), bool(profile), trained_digest

        answer = _offloaded(self.offload, context, check, deadline_s=data.timeout_s,
                            what=f"reading and checking {data.uri}", resource=data.uri)
        if not isinstance(answer, Done):
            return answer
        report, best, profiled, trained_digest = answer.value
        inputs = {"uri": data.uri, "digest": report.digest, "rows": report.rows,
                  "reference": best if profiled else None, PIN: best}
        # The digest a version trained on exactly these bytes records in its lineage: the
        # training stage holds the candidate to it (TrainStage._unchecked_data).
        outputs = {"digest": report.digest, VALIDATED_DIGEST: trained_digest, "rows": report.rows,
                   "drifted": len(report.drift.drifted) if report.drift else 0,
                   "report": report.model_dump(mode="json")}
        if not report.passed:
            return Outcome(StageState.FAILED, outputs=outputs, inputs=inputs, reason=report.reason,
                           progress={})
        return Outcome(StageState.PASSED, outputs=outputs, inputs=inputs, progress={})

    def cancel(self, context: StageContext) -> None:
        return None


def _offloaded(offload: Offload, context: StageContext, work: Any, *, deadline_s: float,
               what: str, resource: str) -> Done[Any] | Outcome:
    """The stage's work, started or looked at: its result, or the stage's outcome while it
    runs (its progress says so) or once it is overdue. The deadline counts from the
    stage's stored start, so a control plane restarted meanwhile does not grant it anew."""
    if stage_elapsed_s(context) >= deadline_s:
        return Outcome(StageState.FAILED, progress={},
                       reason=f"WorkOverdue: {what} did not finish within {deadline_s:g} s")
    key = (context.record.name, context.run.id, context.record.started_at)
    try:
        answer = offload.poll(key, work, deadline_s=deadline_s, what=what, resource=resource,
                              again_after=PASSING_TROUBLE)
    except WorkOverdue as error:
        return Outcome(StageState.FAILED, progress={}, reason=f"WorkOverdue: {error}")
    if isinstance(answer, Pending):
        # Shown in the stage's progress while the work is off the pass; cleared when it ends.
        return Outcome(StageState.RUNNING, progress={"offloaded": answer.describe(what)})
    return answer


def _target_column(context: StageContext) -> str:
    """The label column: the job spec's for a file, ``target`` for a bundled dataset."""
    from training.schemas import JobSpec

    return JobSpec.model_validate(context.spec.training.job).data.target or "target"


class EvaluateStage:
    """Held-out metrics against thresholds and against the champion scored on the same
    rows, with a paired test (:mod:`control_plane.pipelines.evaluation`).

    The held-out rows are ``evaluate.data_uri`` when given; otherwise the rows the
    training job itself kept out (its spec's split and seed): its test rows, which it
    neither trained nor stopped early on, or, for a job that does not stop early, its
    validation rows. They are read, and both models scored, off the pass
    (:mod:`control_plane.pipelines.offload`), within ``evaluate.timeout_s``."""

    name = "evaluate"

    def __init__(self, services: Any, offload: Offload | None = None) -> None:
        self.services = services
        self.offload = offload or Offload()

    def advance(self, context: StageContext) -> Outcome:
        settings = context.spec.evaluate
        if settings is None:
            return Outcome(StageState.SKIPPED, reason="no evaluate section in the spec")
        refused = refused_at_apply(context)
        if refused is not None:
            return refused
        candidate = context.candidate
        if candidate is None:
            return Outcome(StageState.FAILED, reason="the training stage registered no version")
        model, number = candidate
        services = self.services

        def score() -> tuple[Any, str, str | None]:
            from control_plane.errors import InvalidInputError
            from control_plane.pipelines.evaluation import evaluate
            from control_plane.pipelines.scoring import score_isolated
            from control_plane.pipelines.unseen_rows import unseen_rows

            version = services.registry.get_version(model, number)
            best = run_champion(services, context)
            features, truth, source = self._held_out(context, version.manifest)
            unseen = unseen_rows(services, version, best, features)
            scored = unseen.scored()
            if scored is None:
                raise InvalidInputError(
                    f"every one of the {len(truth)} held-out rows is one the candidate "
                    "trained on and the champion did not; set evaluate.data_uri to rows "
                    "it never saw", detail={"field": "evaluate.data_uri"})
            kept, champion_problem = scored
            features, truth = features[kept], truth[kept]
            read = services.artifacts.read_bytes
            report = evaluate(read(version.artifact_digest),
                              read(best.artifact_digest) if best is not None else None,
                              features, truth, version.manifest, settings.gates,
                              champion_manifest=best.manifest if best is not None else None,
                              score=functools.partial(score_isolated,
                                                      timeout_s=settings.timeout_s),
                              champion_problem=champion_problem)
            if note := unseen.note():
                report = report.model_copy(update={"note": "; ".join(
                    part for part in (report.note, note) if part)})
            return report, source, pin_of(best)

        answer = _offloaded(self.offload, context, score, deadline_s=settings.timeout_s,
                            what=f"scoring {model}:{number} on held-out rows",
                            resource=_held_out_source(context))
        if not isinstance(answer, Done):
            return answer
        report, source, compared_with = answer.value
        inputs = {"rows": report.rows, "held_out": source, PIN: compared_with}
        outputs = {"metric": report.metric, "candidate": report.candidate,
                   "champion": report.champion, "report": report.model_dump(mode="json")}
        if not report.passed:
            reject(self.services, context, report.reason)
            return Outcome(StageState.FAILED, outputs=outputs, inputs=inputs, reason=report.reason,
                           progress={})
        return Outcome(StageState.PASSED, outputs=outputs, inputs=inputs, progress={})

    def cancel(self, context: StageContext) -> None:
        return None

    @staticmethod
    def _held_out(context: StageContext, manifest: Any) -> tuple[Any, Any, str]:
        settings = context.spec.evaluate
        assert settings is not None
        if settings.data_uri is not None:
            from control_plane.pipelines.data_validation import load_dataset
            from control_plane.pipelines.evaluation import features_and_target

            features, truth = features_and_target(load_dataset(settings.data_uri), manifest,
                                                  target=_target_column(context))
            return features, truth, settings.data_uri
        from control_plane.errors import InvalidInputError
        from control_plane.pipelines.data_sources import check_data_uri, open_data
        from control_plane.schemas import ModelManifest
        from training.data import load_dataset as load_training_data
        from training.data import split_dataset
        from training.schemas import JobSpec

        job = JobSpec.model_validate(context.spec.training.job)
        if job.data.path:  # read here, in the control plane: held to the pipelines' rule
            check_data_uri(job.data.path)
        # Through the pipelines' reader: its size bound, host check and no redirects.
        dataset = load_training_data(job.data, job.task, text=job.model.reads_text,
                                     opener=open_data)
        trained_on = ModelManifest.model_validate(manifest).lineage.dataset_digest
        if trained_on is not None and trained_on != dataset.digest:
            # Split again, rows the candidate trained on would be held out: a file appended
            # to while it trained holds other rows, which a seeded split shuffles anew.
            raise InvalidInputError(
                f"{dataset.uri} changed since the candidate trained on it (its digest is "
                f"{dataset.digest[:12]}…, the candidate's lineage says {trained_on[:12]}…): "
                "the rows it held out can no longer be told from those it trained on; set "
                "evaluate.data_uri to rows it never saw", detail={"field": "evaluate.data_uri"})
        split = split_dataset(dataset, validation_split=job.data.validation_split,
                              seed=job.data.seed, test_split=job.data.test_split)
        # The test rows, which training never touched; without them (a job that does not
        # stop early: spec.held_out_problem) the validation rows.
        if split.x_test is not None and split.y_test is not None:
            rows, labels = split.x_test, split.y_test
            source = (f"the training job's test rows ({job.data.test_split:g} of the data, "
                      f"seed {job.data.seed})")
        else:
            rows, labels = split.x_val, split.y_val
            source = (f"the training job's own held-out rows "
                      f"({job.data.validation_split:g} of the data, seed {job.data.seed})")
        # As labels: training's indices are into the classes this read found, which are
        # the candidate's only if the data is unchanged since it trained.
        truth = (labels if dataset.class_labels is None
                 else np.asarray(dataset.class_labels, dtype=object)[labels])
        # A text model's rows as features_and_target gives them: one text per row.
        features = rows[:, 0] if job.model.reads_text else rows
        return features, truth, source


def _held_out_source(context: StageContext) -> str:
    """The data the held-out rows are read from (one thread reads one source at a time)."""
    settings = context.spec.evaluate
    if settings is not None and settings.data_uri is not None:
        return settings.data_uri
    return job_data_uri(context.spec.training.job)


class BenchmarkStage:
    """The candidate, then the champion, each on a scratch replica with the same settings
    (:mod:`control_plane.benchmarking`), one after the other so that neither's load or
    start-up disturbs the other's figures; the candidate fails when its p99 exceeds the champion's by more than
    ``benchmark.max_slowdown``. The figures stay on each version (``models show``)."""

    name = "benchmark"

    def __init__(self, services: Any) -> None:
        self.services = services

    def advance(self, context: StageContext) -> Outcome:
        from control_plane.pipelines.stages import run_principal

        settings = context.spec.benchmark
        if settings is None:
            return Outcome(StageState.SKIPPED, reason="no benchmark section in the spec")
        candidate = context.candidate
        if candidate is None:
            return Outcome(StageState.FAILED, reason="the training stage registered no version")
        model, number = candidate
        progress = dict(context.record.progress)
        if PIN not in progress:  # the champion this stage measures, kept for its passes
            progress[PIN] = pin_of(run_champion(self.services, context))
        best = pinned_version(self.services, progress[PIN])
        order = [("candidate", number)] + ([("champion", best.version)]
                                           if best is not None and best.version != number else [])
        measured: dict[str, Any] = {}
        for role, version in order:
            key = f"{role}_benchmark"
            if key not in progress:
                started = self._started(context, model, version) or self.services.benchmarks.start(
                    model, version, self._settings(context), run_principal(context.run))
                progress[key] = started.id
                return Outcome(StageState.RUNNING, progress=progress,
                               outputs={key: started.id, "measuring": f"{model}:{version}"})
            record = self.services.benchmarks.get(model, version, int(progress[key]))
            if record.status == "running":
                if _overdue(record, settings, context.now):
                    return Outcome(StageState.FAILED, progress=progress, reason=(
                        f"the benchmark of {model}:{version} (#{record.id}) never finished; "
                        "the control plane may have restarted during it"))
                return Outcome(StageState.RUNNING, progress=progress,
                               outputs={"measuring": f"{model}:{version}", "step": record.progress})
            if record.status != "succeeded" or record.figures is None:
                return Outcome(StageState.FAILED, progress=progress,
                               reason=f"the benchmark of {model}:{version} failed: {record.error}")
            measured[role] = record.figures
        outcome = self._judge(measured, settings.max_slowdown, model, number,
                              best.version if "champion" in measured else None, progress)
        if outcome.state is StageState.FAILED:
            reject(self.services, context, outcome.reason)
        return outcome

    def cancel(self, context: StageContext) -> None:
        return None  # a scratch replica is removed by its own benchmark when it ends

    def _started(self, context: StageContext, model: str, version: int) -> Any:
        """A benchmark of ``version`` this stage started before a crash (or a store error)
        kept it from saying so: asked again, the service refuses a second one as running."""
        return next((record for record in self.services.benchmarks.list(model, version, limit=5)
                     if context.made_here(record.created_by, record.started_at)), None)

    def _settings(self, context: StageContext) -> Any:
        from control_plane.errors import NotFoundError

        settings = context.spec.benchmark
        assert settings is not None
        endpoint = context.spec.deploy.endpoint
        try:
            self.services.deployments.get(endpoint)
        except NotFoundError:
            endpoint = None  # a first version: a fresh endpoint's settings
        return settings.measurement(endpoint)

    @staticmethod
    def _judge(measured: dict[str, Any], max_slowdown: float, model: str, number: int,
               champion_version: int | None, progress: dict[str, Any]) -> Outcome:
        cand = measured["candidate"]
        outputs: dict[str, Any] = {
            "candidate": _figures(cand), "benchmark_id": progress["candidate_benchmark"]}
        champ = measured.get("champion")
        if champ is not None:
            outputs["champion"] = _figures(champ)
        # Latency is of the answered requests: the ones that failed or timed out (the
        # slowest, often) are out of the p99, so they are judged on their own.
        if cand.errors and _error_share(cand) > (_error_share(champ) if champ else 0.0):
            against = (f", the champion {model}:{champion_version} {champ.errors} of "
                       f"{champ.requests}" if champ is not None else "")
            return Outcome(StageState.FAILED, progress=progress, outputs=outputs, reason=(
                f"{model}:{number} failed {cand.errors} of {cand.requests} benchmark requests "
                f"(no answer, or not a 200, in time){against}"))
        if champ is None:
            return Outcome(StageState.PASSED, progress=progress, outputs=outputs,
                           reason="no champion to compare with: figures recorded")
        ratio = cand.latency_ms.p99 / champ.latency_ms.p99 if champ.latency_ms.p99 else None
        outputs["p99_ratio"] = ratio
        judged = _slowdown_on_evidence(cand.latency_ms, champ.latency_ms)
        if judged == ("", None):  # no evidence either way is no pass
            return Outcome(StageState.FAILED, progress=progress, outputs=outputs, reason=(
                f"{model}:{number}'s latency cannot be judged against the champion "
                f"{model}:{champion_version}'s on {cand.latency_ms.count} and "
                f"{champ.latency_ms.count} answers: too few to bound even the p50; raise "
                "benchmark.rate or duration_s"))
        if judged is None:  # figures measured before bounds were: the p99s as they are
            name, bound = "p99", ratio
        else:
            name, bound = judged
            outputs.update(judged_quantile=name, slowdown_lower_bound=bound)
        if bound is not None and bound > max_slowdown:
            mine, theirs = getattr(cand.latency_ms, name), getattr(champ.latency_ms, name)
            evidence = "" if judged is None else (
                f", at least {bound:.2f}x on {cand.latency_ms.count} and "
                f"{champ.latency_ms.count} answers")
            return Outcome(StageState.FAILED, progress=progress, outputs=outputs, reason=(
                f"{model}:{number} answers at {name} {mine:.2f} ms, {mine / theirs:.2f}x the "
                f"champion {model}:{champion_version}'s {theirs:.2f} ms{evidence} "
                f"(benchmark.max_slowdown {max_slowdown:g})"))
        unjudged = "" if name == "p99" else (
            f"the p99 is not judged on {cand.latency_ms.count} and {champ.latency_ms.count} "
            f"answers (it needs {P99_ANSWERS}; raise benchmark.rate or duration_s), the "
            f"{name} is")
        return Outcome(StageState.PASSED, progress=progress, outputs=outputs, reason=unjudged)


# Answers a run needs for an upper bound on its p99 at 97.5% (1 - 0.99**n >= 0.975).
P99_ANSWERS = 367


def _slowdown_on_evidence(candidate: Any, champion: Any) -> tuple[str, float | None] | None:
    """The highest of p99, p95 and p50 both runs' answers bound, and the lower bound of
    the candidate's over the champion's (each bound at 97.5%, so the ratio's holds at
    95%): a p99 of forty answers is their slowest, one stall on a busy machine failed a
    candidate "6x slower" that was not. ("", None): too few answers for any; None:
    figures without bounds."""
    if not getattr(candidate, "bounds", None) or not getattr(champion, "bounds", None):
        return None
    for name in ("p99", "p95", "p50"):
        low = (candidate.bounds.get(name) or [None, None])[0]
        high = (champion.bounds.get(name) or [None, None])[1]
        if low is not None and high:
            return name, low / high
    return "", None


def _error_share(figures: Any) -> float:
    return figures.errors / figures.requests if figures.requests else 0.0


def _figures(figures: Any) -> dict[str, Any]:
    return {"p50_ms": figures.latency_ms.p50, "p95_ms": figures.latency_ms.p95,
            "p99_ms": figures.latency_ms.p99, "achieved_rps": figures.achieved_rps,
            "max_rate_within_p99": figures.max_rate_within_p99,
            "cpu_ms_per_request": figures.cpu_ms_per_request,
            "memory_rss_mb": figures.memory_rss_mb, "errors": figures.errors}


def _overdue(record: Any, settings: Any, now: Any) -> bool:
    """Longer than the benchmark could take: its load, its search, the model's load."""
    allowed = settings.timeout_s + settings.duration_s * 2 + settings.step_seconds * (
        settings.search_steps + 1) + 120
    return (now - record.started_at).total_seconds() > allowed
