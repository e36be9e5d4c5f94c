"""The Python client for the control plane's REST API (httpx, typed results).

The CLI and training jobs use it; errors come back as the same exception classes the
server raised (``NotFoundError``, ``PermissionDeniedError`` …), with the server's message.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

import control_plane.errors as cp_errors
from control_plane.errors import ControlPlaneError, ControlPlaneUnavailableError, IntegrityError
from control_plane.idempotency import HEALTH_FLAG, KEY_HEADER, WRITES, new_key
from control_plane.replies import read_replies, read_reply
from control_plane.rollouts.schemas import (
    RolloutAction,
    RolloutCreate,
    RolloutEventOut,
    RolloutOut,
    RolloutPolicy,
)
from control_plane.schemas import (
    AliasSet,
    ApprovalCreate,
    ApprovalOut,
    ArtifactOut,
    BatchSettings,
    ClusterOut,
    DeployRequest,
    EndpointOut,
    ExperimentCreate,
    ExperimentOut,
    LeadershipOut,
    LineageOut,
    MetricBatch,
    MetricOut,
    MetricPoint,
    ModelCreate,
    ModelManifest,
    ModelOut,
    ModelPolicy,
    ModelUpdate,
    Page,
    ParamsUpdate,
    RejectVersion,
    Role,
    RunArtifactCreate,
    RunArtifactOut,
    RunComparison,
    RunCreate,
    RunOut,
    RunStatus,
    RunUpdate,
    ScaleSettings,
    Stage,
    StageChange,
    TokenCreate,
    TokenCreated,
    TokenOut,
    TrafficUpdate,
    VersionCreate,
    VersionOut,
)
from modelplane.errors import ModelplaneError
from modelplane.settings import Settings, get_settings
from serving.names import endpoint_url

M = TypeVar("M", bound=BaseModel)
_CHUNK = 1024 * 1024
# Registration waits for the registry's check: pip for the requirements, then the model
# loaded and run in a scratch process (control_plane.model_check, 180 s each at most).
REGISTER_TIMEOUT_S = 420.0
# The answer was lost after the request may have reached the control plane: a proxy
# reloaded under the connection, or it dropped. (A refused connection acted on nothing; the
# transport asks again itself.)
_ANSWER_LOST = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
ASK_AGAIN_TIMES = 3
# How long a control plane that lost an answer is asked whether it honors keys: a proxy
# reloading answers again within a second or two, and one that is down must not hold the
# caller for the whole of a long call's timeout (a registration's is minutes).
HEALTH_WAIT_S = 5.0
# Writes that may be sent again without a key: the artifact store is content-addressed,
# so an upload sent twice stores one file.
_REPEATABLE_WRITES = frozenset({("POST", "/artifacts")})
# A run's driver saying it is alive, once a minute: the same however often it lands, and a
# key would keep a stored reply a day for each.
_REPEATABLE_WRITE_ENDINGS = ("/alive",)
_ERRORS_BY_CODE: dict[str, type[ControlPlaneError]] = {
    cls.code: cls
    for cls in vars(cp_errors).values()
    if isinstance(cls, type) and issubclass(cls, ControlPlaneError)
}


class Client:
    """Typed access to a running control plane.

    ``url`` and ``token`` default to ``MODELPLANE_URL`` and ``MODELPLANE_TOKEN`` (or the
    local admin token file).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        settings: Settings | None = None,
        retries: int = 2,
    ) -> None:
        settings = settings or get_settings()
        self.url = (url or settings.url).rstrip("/")
        token = token or settings.resolved_token()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"{self.url}/api",
            headers=headers,
            timeout=timeout,
            transport=httpx.HTTPTransport(retries=retries),  # connections that failed
        )
        self._honors_keys = False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a call, and again where its answer was lost: a read as it is, a write with
        the idempotency key it was first sent with, so it acts once (control_plane.
        idempotency); then wait out the first call where it is still being answered."""
        repeatable = method not in WRITES or (method, path) in _REPEATABLE_WRITES or (
            method == "POST" and path.endswith(_REPEATABLE_WRITE_ENDINGS))
        if not repeatable:
            given = kwargs.get("headers", {})
            if not any(name.lower() == KEY_HEADER for name in given):
                kwargs["headers"] = {**given, KEY_HEADER: new_key()}
        timeout = kwargs.get("timeout", self._http.timeout.read)
        deadline = time.monotonic() + (timeout if isinstance(timeout, int | float) else 60.0)
        lost: httpx.TransportError | None = None
        losses = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except _ANSWER_LOST as error:
                lost, losses = error, losses + 1
                if losses > ASK_AGAIN_TIMES:
                    break
                time.sleep(0.2 * 2 ** (losses - 1))
                if not (repeatable or self._keys_honored(deadline)):
                    break
                continue
            except httpx.ReadTimeout as error:
                # The call reached the control plane, which did not answer in time: not
                # "cannot reach", and a write may have acted (or still will).
                raise self._not_answered_in_time(error, timeout, acted_maybe=not repeatable
                                                 ) from None
            except httpx.TransportError as error:
                # Refused after an answer was lost: whether the first acted is unknown.
                raise self._answer_lost(error, acted_maybe=lost is not None
                                        and not repeatable) from None
            if response.status_code < 400:
                return response
            error = _error_from(response)
            if isinstance(error, cp_errors.RequestInProgressError):
                wait = error.detail.get("retry_after_s")
                wait = min(max(wait, 0.1), 5.0) if isinstance(wait, int | float) else 1.0
                if time.monotonic() + wait < deadline:
                    time.sleep(wait)
                    continue
                if lost is not None:
                    break  # the first call still holds the key: it may have acted, or will
            raise error
        assert lost is not None  # every way out of the loop but a return or a raise lost one
        raise self._answer_lost(lost, acted_maybe=not repeatable)

    def _keys_honored(self, deadline: float) -> bool:
        """Whether the control plane answers a write sent again with its key once (one
        older than keys would act twice): known only from its health answer, asked again
        while the way to it is unsettled (a proxy reloading), for HEALTH_WAIT_S at most, and
        not at all where nothing listens any more."""
        deadline = min(deadline, time.monotonic() + HEALTH_WAIT_S)
        pause = 0.2
        while not self._honors_keys:
            try:
                answer = self._http.get("/health",
                                        timeout=max(deadline - time.monotonic(), 0.2))
                if answer.status_code == 200:
                    self._honors_keys = HEALTH_FLAG in answer.json()
                    return self._honors_keys
            except httpx.ConnectError:
                return False  # nothing listens (the transport asked again): down, not reloading
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() + pause >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        return True

    def _answer_lost(self, error: httpx.TransportError, *, acted_maybe: bool
                     ) -> ControlPlaneUnavailableError:
        if acted_maybe:
            return ControlPlaneUnavailableError(
                f"the control plane at {self.url} did not answer ({type(error).__name__}) and "
                "may have acted; look before sending the call again",
                detail={"url": self.url})
        return ControlPlaneUnavailableError(
            f"cannot reach the control plane at {self.url} ({type(error).__name__}); is it "
            "running? Start it with `modelplane up` or set MODELPLANE_URL",
            detail={"url": self.url},
        )

    def _not_answered_in_time(self, error: httpx.ReadTimeout, timeout: Any, *,
                              acted_maybe: bool) -> ControlPlaneUnavailableError:
        within = f" within {timeout:g} s" if isinstance(timeout, int | float) else ""
        why = (" and may have acted, or still will; look before sending the call again"
               if acted_maybe else "; it may be overloaded, stopped, or its store slow "
               "(`modelplane status` shows which)")
        return ControlPlaneUnavailableError(
            f"the control plane at {self.url} did not answer{within} ({type(error).__name__})"
            + why, detail={"url": self.url})

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        return read_reply(model, self._request("GET", path, params=params).json())

    def _send(self, method: str, path: str, body: BaseModel | None, model: type[M]) -> M:
        payload = body.model_dump(mode="json", exclude_unset=False) if body is not None else None
        return read_reply(model, self._request(method, path, json=payload).json())

    # ------------------------------------------------------------ admin

    def health(self) -> dict[str, str]:
        return self._request("GET", "/health").json()

    def whoami(self) -> dict[str, str]:
        return self._request("GET", "/whoami").json()

    def cluster(self) -> ClusterOut:
        """Ray's nodes and the node of every endpoint replica (``GET /cluster``)."""
        return read_reply(ClusterOut, self._request("GET", "/cluster").json())

    def leadership(self) -> LeadershipOut:
        """Which control plane runs the control loops (``GET /leadership``)."""
        return read_reply(LeadershipOut, self._request("GET", "/leadership").json())

    # ------------------------------------------------------------ artifacts

    def upload_artifact(self, source: str | os.PathLike[str] | bytes) -> ArtifactOut:
        """Stream a file (or bytes) to the artifact store; the server checks the digest."""
        if isinstance(source, bytes):
            digest, content, size = hashlib.sha256(source).hexdigest(), source, len(source)
        else:
            path = Path(source)
            digest, size = _file_digest(path), path.stat().st_size
            content = _FileChunks(path)
        response = self._request(
            "POST",
            "/artifacts",
            content=content,
            headers={
                "content-type": "application/octet-stream",
                "content-length": str(size),
                "x-artifact-digest": digest,
            },
        )
        return read_reply(ArtifactOut, response.json())

    def download_artifact(self, digest: str, destination: str | os.PathLike[str]) -> Path:
        """Stream an artifact to ``destination`` atomically, verifying its digest."""
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")
        hasher = hashlib.sha256()
        try:
            with self._http.stream("GET", f"/artifacts/{digest}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                with open(temp, "wb") as handle:
                    for chunk in response.iter_bytes(_CHUNK):
                        hasher.update(chunk)
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
            if hasher.hexdigest() != digest:
                raise IntegrityError(
                    f"downloaded artifact hashes to {hasher.hexdigest()}, not {digest}; retry",
                    detail={"expected": digest, "actual": hasher.hexdigest()},
                )
            os.replace(temp, target)
        except httpx.TransportError as error:
            raise ControlPlaneUnavailableError(
                f"download of {digest} from {self.url} failed ({type(error).__name__}); retry"
            ) from None
        finally:
            temp.unlink(missing_ok=True)
        return target

    # ------------------------------------------------------------ registry

    def create_model(
        self, name: str, *, description: str = "", tags: dict[str, str] | None = None,
        require_approval_for_production: bool = False,
    ) -> ModelOut:
        body = ModelCreate(
            name=name, description=description, tags=tags or {},
            policy=ModelPolicy(require_approval_for_production=require_approval_for_production),
        )
        return self._send("POST", "/models", body, ModelOut)

    def update_model(self, name: str, update: ModelUpdate) -> ModelOut:
        return self._send("PATCH", f"/models/{name}", update, ModelOut)

    def get_model(self, name: str) -> ModelOut:
        return self._get(f"/models/{name}", ModelOut)

    def list_models(self, *, limit: int = 50, offset: int = 0) -> Page[ModelOut]:
        return self._get("/models", Page[ModelOut], limit=limit, offset=offset)

    def register_version(
        self,
        name: str,
        model: str | os.PathLike[str] | bytes,
        manifest: ModelManifest | dict[str, Any],
        *,
        description: str = "",
        idempotency_key: str | None = None,
    ) -> VersionOut:
        """Upload a model and register it as the next version of ``name``: an ONNX or
        TorchScript file, or a folder (packed into a reproducible archive) or archive for
        a version with code, as ``manifest``'s kind and code say (docs/models.md).

        ``idempotency_key`` (8 to 64 of letters, digits and ``._:-``; a new random one per
        version): a call asked again with the same key, after an answer that never came,
        gets the version the first call registered rather than registering a second."""
        from control_plane.model_package import pack_folder

        if not isinstance(model, bytes) and Path(model).is_dir():
            model = pack_folder(Path(model))
        artifact = self.upload_artifact(model)
        body = VersionCreate(
            artifact_digest=artifact.digest,
            manifest=ModelManifest.model_validate(manifest),
            description=description,
            idempotency_key=idempotency_key,
        )
        # The registry loads the model (and installs its requirements) before it answers.
        # No key, no field: a control plane older than keys refuses fields it does not know.
        document = body.model_dump(mode="json", exclude={"idempotency_key"}
                                   if idempotency_key is None else set())
        response = self._request("POST", f"/models/{name}/versions", json=document,
                                 timeout=REGISTER_TIMEOUT_S)
        return read_reply(VersionOut, response.json())

    def get_version(self, name: str, version: int) -> VersionOut:
        return self._get(f"/models/{name}/versions/{version}", VersionOut)

    def list_versions(self, name: str, *, limit: int = 50, offset: int = 0) -> Page[VersionOut]:
        return self._get(f"/models/{name}/versions", Page[VersionOut], limit=limit, offset=offset)

    def resolve(self, ref: str) -> VersionOut:
        """The version ``name``, ``name:3`` or ``name@alias`` refers to."""
        return self._get(f"/refs/{ref}", VersionOut)

    def delete_version(self, name: str, version: int) -> None:
        self._request("DELETE", f"/models/{name}/versions/{version}")

    def set_alias(self, name: str, alias: str, version: int, *,
                  idempotency_key: str | None = None) -> VersionOut:
        """Point ``alias`` at ``version``. A caller that tries again after this raised
        passes one ``idempotency_key`` to every try: a move that landed, its answer lost,
        is then answered again rather than made again over a move made since."""
        headers = {KEY_HEADER: idempotency_key} if idempotency_key is not None else {}
        answer = self._request("PUT", f"/models/{name}/aliases/{alias}",
                               json=AliasSet(version=version).model_dump(mode="json"),
                               headers=headers)
        return read_reply(VersionOut, answer.json())

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/models/{name}/aliases/{alias}")

    def transition_stage(
        self, name: str, version: int, stage: Stage | str, *, reason: str = ""
    ) -> VersionOut:
        body = StageChange(stage=Stage(stage), reason=reason)
        return self._send("POST", f"/models/{name}/versions/{version}/stage", body, VersionOut)

    def reject_version(self, name: str, version: int, reason: str) -> VersionOut:
        body = RejectVersion(reason=reason)
        return self._send("POST", f"/models/{name}/versions/{version}/reject", body, VersionOut)

    def approve(
        self, name: str, version: int, *, decision: str = "approved", comment: str = ""
    ) -> ApprovalOut:
        body = ApprovalCreate(decision=decision, comment=comment)  # type: ignore[arg-type]
        return self._send("POST", f"/models/{name}/versions/{version}/approvals", body, ApprovalOut)

    def list_approvals(self, name: str, version: int) -> list[ApprovalOut]:
        data = self._request("GET", f"/models/{name}/versions/{version}/approvals").json()
        return read_replies(ApprovalOut, data)

    def lineage(self, name: str, version: int) -> LineageOut:
        return self._get(f"/models/{name}/versions/{version}/lineage", LineageOut)

    # ------------------------------------------------------------ benchmarks

    def start_benchmark(self, name: str, version: int, settings: Any = None) -> Any:
        """Start benchmarking a version on a scratch replica (``BenchmarkSettings`` or its
        dict: rate, duration_s, p99_target_ms, endpoint …); returns it running."""
        from control_plane.benchmarking.schemas import BenchmarkOut, BenchmarkSettings

        body = BenchmarkSettings.model_validate(settings or {})
        return self._send("POST", f"/models/{name}/versions/{version}/benchmarks", body, BenchmarkOut)

    def get_benchmark(self, name: str, version: int, benchmark_id: int) -> Any:
        from control_plane.benchmarking.schemas import BenchmarkOut

        return self._get(f"/models/{name}/versions/{version}/benchmarks/{benchmark_id}", BenchmarkOut)

    def list_benchmarks(self, name: str, version: int, *, limit: int = 50) -> list[Any]:
        """The version's benchmarks, newest first."""
        from control_plane.benchmarking.schemas import BenchmarkOut

        data = self._request("GET", f"/models/{name}/versions/{version}/benchmarks",
                             params={"limit": limit}).json()
        return read_replies(BenchmarkOut, data)

    def latest_benchmark(self, name: str, version: int) -> Any:
        """The version's newest benchmark that succeeded, None without one."""
        return next((b for b in self.list_benchmarks(name, version, limit=500)
                     if b.status == "succeeded"), None)

    def wait_benchmark(self, name: str, version: int, benchmark_id: int, *,
                       timeout_s: float = 1800.0, poll_s: float = 0.5,
                       progress: Any = None) -> Any:
        """Poll until the benchmark has finished (succeeded or failed) and return it;
        ``progress`` is called with each new progress line."""
        import time

        deadline, said = time.monotonic() + timeout_s, ""
        while True:
            found = self.get_benchmark(name, version, benchmark_id)
            if progress is not None and found.progress != said:
                said = found.progress
                progress(said)
            if found.status != "running":
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"benchmark #{benchmark_id} of {name}:{version} still runs "
                                   f"after {timeout_s:g}s ({found.progress})")
            time.sleep(poll_s)

    # ------------------------------------------------------------ tracking

    def create_experiment(
        self, name: str, *, description: str = "", tags: dict[str, str] | None = None
    ) -> ExperimentOut:
        body = ExperimentCreate(name=name, description=description, tags=tags or {})
        return self._send("POST", "/experiments", body, ExperimentOut)

    def list_experiments(self, *, limit: int = 50, offset: int = 0) -> Page[ExperimentOut]:
        return self._get("/experiments", Page[ExperimentOut], limit=limit, offset=offset)

    def start_run(
        self,
        experiment: str,
        *,
        name: str = "",
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        capture_environment: bool = True,
        environment: dict[str, Any] | None = None,
    ) -> RunOut:
        """Start a run; by default the client records this process's environment with it.

        ``environment`` replaces the captured one (a job records its cluster too).
        """
        from control_plane.environment import capture_environment as capture

        if environment is None:
            environment = capture() if capture_environment else {}
        body = RunCreate(
            experiment=experiment, name=name, params=params or {}, tags=tags or {},
            parent_run_id=parent_run_id, environment=environment,
        )
        return self._send("POST", "/runs", body, RunOut)

    def get_run(self, run_id: str) -> RunOut:
        return self._get(f"/runs/{run_id}", RunOut)

    def list_runs(self, experiment: str, *, limit: int = 50, offset: int = 0) -> Page[RunOut]:
        return self._get(f"/experiments/{experiment}/runs", Page[RunOut], limit=limit, offset=offset)

    def run_alive(self, run_id: str) -> None:
        """Say the run's job driver is alive (its job's drivers do, once a minute)."""
        self._request("POST", f"/runs/{run_id}/alive")

    def end_run(self, run_id: str, status: RunStatus | str = RunStatus.FINISHED) -> RunOut:
        return self._send("PATCH", f"/runs/{run_id}", RunUpdate(status=RunStatus(status)), RunOut)

    def report_training_submission(self, job_id: str, *, experiment: str, model: str,
                                   address: str = "") -> None:
        """Tell the control plane a training job was submitted (``training.submitted``)."""
        from control_plane.schemas import TrainingSubmission

        body = TrainingSubmission(job_id=job_id, experiment=experiment, model=model,
                                  address=address)
        self._request("POST", "/training/submissions", json=body.model_dump(mode="json"))

    def log_params(self, run_id: str, params: dict[str, Any]) -> RunOut:
        return self._send("POST", f"/runs/{run_id}/params", ParamsUpdate(params=params), RunOut)

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int = 0) -> int:
        """Log several metrics at one step in a single request."""
        return self.log_points(
            run_id, [MetricPoint(key=k, value=float(v), step=step) for k, v in metrics.items()])

    def log_points(self, run_id: str, points: list[MetricPoint], *, key: str | None = None) -> int:
        """Log metric points, each at its own step, in a single request; ``key``, the
        idempotency key of an earlier send of the same points (stored once whatever came
        of that one)."""
        batch = MetricBatch(metrics=points)
        headers = {KEY_HEADER: key} if key else {}
        response = self._request("POST", f"/runs/{run_id}/metrics",
                                 json=batch.model_dump(mode="json"), headers=headers)
        return int(response.json()["stored"])

    def metric_history(self, run_id: str, key: str, *, limit: int | None = None
                       ) -> list[MetricOut]:
        """The key's points by step; of a longer history than ``limit`` (10,000 unless
        given), every k-th point and the last."""
        params = {"limit": limit} if limit is not None else {}
        data = self._request("GET", f"/runs/{run_id}/metrics/{key}", params=params).json()
        return read_replies(MetricOut, data)

    def log_artifact(
        self, run_id: str, path: str, source: str | os.PathLike[str] | bytes
    ) -> RunArtifactOut:
        artifact = self.upload_artifact(source)
        body = RunArtifactCreate(path=path, digest=artifact.digest)
        return self._send("POST", f"/runs/{run_id}/artifacts", body, RunArtifactOut)

    def compare_runs(self, run_ids: list[str]) -> RunComparison:
        return self._get("/runs/compare", RunComparison, ids=",".join(run_ids))

    # ------------------------------------------------------------ serving

    def deploy(
        self,
        endpoint: str,
        model_ref: str,
        *,
        placement: str | None = None,
        scaling: ScaleSettings | dict[str, Any] | None = None,
        batching: BatchSettings | dict[str, Any] | None = None,
        weight: float | None = None,
    ) -> EndpointOut:
        """Serve ``model_ref`` on ``endpoint`` (new endpoint: all traffic; else added at 0%)."""
        body = DeployRequest(
            endpoint=endpoint, model_ref=model_ref, placement=placement,  # type: ignore[arg-type]
            scaling=ScaleSettings.model_validate(scaling) if scaling is not None else None,
            batching=BatchSettings.model_validate(batching or {}), weight=weight,
        )
        return self._send("POST", "/endpoints", body, EndpointOut)

    def set_traffic(
        self, endpoint: str, weights: dict[int, float], *, shadows: list[int] | None = None
    ) -> EndpointOut:
        body = TrafficUpdate(weights=weights, shadows=shadows or [])
        return self._send("PUT", f"/endpoints/{endpoint}/traffic", body, EndpointOut)

    def undeploy(self, endpoint: str) -> None:
        self._request("DELETE", f"/endpoints/{endpoint}")

    def get_endpoint(self, endpoint: str) -> EndpointOut:
        return self._get(f"/endpoints/{endpoint}", EndpointOut)

    def list_endpoints(self) -> list[EndpointOut]:
        return read_replies(EndpointOut, self._request("GET", "/endpoints").json())

    def endpoint_stats(self, endpoint: str, *, window_s: float = 60.0) -> dict[str, Any]:
        """Per-version live statistics (p50/p95/p99 ms, error rate, throughput, shadows)."""
        return self._request("GET", f"/endpoints/{endpoint}/stats", params={"window": window_s}).json()

    # ------------------------------------------------------------ monitoring and alerts

    def send_feedback(self, endpoint: str, labels: dict[str, Any] | list[tuple[str, Any]]) -> dict[str, Any]:
        """Ground truth for earlier requests: ``{request id: true label or value}`` (a list
        of labels for a request of several rows). Any time later; any replica joins it.

        The request id is the server's: each answer's ``x-modelplane-request-id`` header
        (also ``parameters["modelplane_request_id"]`` in its body, which tritonclient's
        ``InferResult.get_response()`` shows), never the ``id`` the request carried. The
        client's token needs role ``labeler`` or higher (a 401/403 otherwise)."""
        pairs = labels.items() if isinstance(labels, dict) else labels
        body = {"feedback": [{"request_id": rid, "label": label} for rid, label in pairs]}
        try:
            response = self._http.post(endpoint_url(self.url, endpoint, "feedback"), json=body)
        except httpx.ReadTimeout as error:  # taken: its labels may have been joined
            raise self._not_answered_in_time(error, self._http.timeout.read,
                                             acted_maybe=True) from None
        except httpx.TransportError as error:
            raise ControlPlaneUnavailableError(
                f"cannot reach {self.url} to send feedback ({type(error).__name__}); is it running?",
                detail={"url": self.url},
            ) from None
        if response.status_code >= 400:
            raise _inference_error_from(response)
        return response.json()  # type: ignore[no-any-return]

    def endpoint_monitoring(self, endpoint: str, *, window_s: float = 60.0) -> dict[str, Any]:
        """Per version: drift verdicts by feature, data quality, online accuracy, anomalies."""
        return self._request("GET", f"/endpoints/{endpoint}/monitoring",
                             params={"window": window_s}).json()

    def monitoring_signals(self) -> dict[str, str]:
        """The metrics alert rules can watch, with their meaning."""
        return self._request("GET", "/monitoring/signals").json()

    def alerts(self) -> list[Any]:
        """Alerts pending or firing now."""
        from control_plane.alerts.schemas import AlertOut

        return read_replies(AlertOut, self._request("GET", "/alerts").json())

    def alert_history(self, *, limit: int = 50, offset: int = 0, name: str | None = None,
                      endpoint: str | None = None) -> Any:
        """Firings, resolutions and events, newest first (a ``Page``)."""
        from control_plane.alerts.schemas import AlertEventOut

        params: dict[str, Any] = {"limit": limit, "offset": offset}
        params.update({k: v for k, v in (("name", name), ("endpoint", endpoint)) if v})
        return self._get("/alerts/history", Page[AlertEventOut], **params)

    def alert_rules(self) -> list[Any]:
        from control_plane.alerts.schemas import AlertRuleOut

        return read_replies(AlertRuleOut, self._request("GET", "/alerts/rules").json())

    def put_alert_rule(self, rule: Any) -> Any:
        """Create or replace a rule (an ``AlertRuleSpec`` or its dict)."""
        from control_plane.alerts.schemas import AlertRuleOut, AlertRuleSpec

        spec = AlertRuleSpec.model_validate(rule)
        return self._send("PUT", f"/alerts/rules/{spec.name}", spec, AlertRuleOut)

    def alerting_changes(self, *, receivers: bool = False, name: str | None = None,
                         limit: int = 50, offset: int = 0) -> Any:
        """Who changed which rule (or, for an admin, receiver), newest first (a ``Page``)."""
        from control_plane.alerts.schemas import AlertingChangeOut

        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if name:
            params["name"] = name
        path = "/alerts/receivers/changes" if receivers else "/alerts/changes"
        return self._get(path, Page[AlertingChangeOut], **params)

    def delete_alert_rule(self, name: str) -> None:
        self._request("DELETE", f"/alerts/rules/{name}")

    def silence_alert_rule(self, name: str, duration_s: float, reason: str = "") -> Any:
        """Notify no receiver of rule ``name``'s alerts for ``duration_s`` seconds."""
        from control_plane.alerts.schemas import AlertRuleOut, SilenceCreate

        return self._send("POST", f"/alerts/rules/{name}/silence",
                          SilenceCreate(duration_s=duration_s, reason=reason), AlertRuleOut)

    def unsilence_alert_rule(self, name: str) -> Any:
        from control_plane.alerts.schemas import AlertRuleOut

        return read_reply(AlertRuleOut,
                          self._request("DELETE", f"/alerts/rules/{name}/silence").json())

    def alert_receivers(self) -> list[Any]:
        from control_plane.alerts.schemas import ReceiverOut

        return read_replies(ReceiverOut, self._request("GET", "/alerts/receivers").json())

    def put_alert_receiver(self, receiver: Any) -> Any:
        """Create or replace a webhook receiver (a ``ReceiverSpec`` or its dict)."""
        from control_plane.alerts.schemas import ReceiverOut, ReceiverSpec

        spec = ReceiverSpec.model_validate(receiver)
        return self._send("PUT", f"/alerts/receivers/{spec.name}", spec, ReceiverOut)

    def delete_alert_receiver(self, name: str) -> None:
        self._request("DELETE", f"/alerts/receivers/{name}")

    def fire_alert_event(self, name: str, *, severity: str = "warning",
                         labels: dict[str, str] | None = None, summary: str = "",
                         data: dict[str, Any] | None = None) -> None:
        """Raise a one-shot alert through the control plane's notification path."""
        from control_plane.alerts.schemas import EventCreate

        body = EventCreate(name=name, severity=severity, labels=labels or {},  # type: ignore[arg-type]
                           summary=summary, data=data or {})
        self._request("POST", "/alerts/events", json=body.model_dump(mode="json"))

    # ------------------------------------------------------------ rollouts

    def start_rollout(self, spec: RolloutCreate | dict[str, Any]) -> RolloutOut:
        """Start a rollout (see ``RolloutCreate``: strategy, steps, analysis gates …)."""
        return self._send("POST", "/rollouts", RolloutCreate.model_validate(spec), RolloutOut)

    def get_rollout(self, rollout_id: int) -> RolloutOut:
        return self._get(f"/rollouts/{rollout_id}", RolloutOut)

    def list_rollouts(self, *, endpoint: str | None = None, active: bool | None = None,
                      limit: int = 50) -> list[RolloutOut]:
        params: dict[str, Any] = {"limit": limit}
        if endpoint is not None:
            params["endpoint"] = endpoint
        if active is not None:
            params["active"] = str(active).lower()
        return read_replies(RolloutOut, self._request("GET", "/rollouts", params=params).json())

    def rollout_events(self, rollout_id: int) -> list[RolloutEventOut]:
        return read_replies(RolloutEventOut,
                            self._request("GET", f"/rollouts/{rollout_id}/events").json())

    def rollout_action(self, rollout_id: int, action: str, reason: str = "") -> RolloutOut:
        """``pause``, ``resume``, ``promote``, ``rollback`` or ``abort``."""
        return self._send("POST", f"/rollouts/{rollout_id}/{action}", RolloutAction(reason=reason),
                          RolloutOut)

    def set_rollout_policy(self, endpoint: str, policy: RolloutPolicy | dict[str, Any] | None) -> None:
        """Start rollouts when the policy's tracked alias moves (None switches it off)."""
        if policy is None:
            self._request("DELETE", f"/endpoints/{endpoint}/rollout-policy")
        else:
            self._send("PUT", f"/endpoints/{endpoint}/rollout-policy",
                       RolloutPolicy.model_validate(policy), RolloutPolicy)

    # ------------------------------------------------------------ pipelines

    def apply_pipeline(self, spec: Any) -> Any:
        """Create or replace a pipeline (a ``PipelineSpec`` or its document)."""
        from control_plane.pipelines.records import PipelineOut
        from control_plane.pipelines.spec import PipelineSpec, parse_pipeline_spec

        body = spec if isinstance(spec, PipelineSpec) else parse_pipeline_spec(spec)
        return self._send("PUT", f"/pipelines/{body.name}", body, PipelineOut)

    def list_pipelines(self) -> list[Any]:
        from control_plane.pipelines.records import PipelineOut

        return read_replies(PipelineOut, self._request("GET", "/pipelines").json())

    def get_pipeline(self, name: str) -> Any:
        from control_plane.pipelines.records import PipelineOut

        return self._get(f"/pipelines/{name}", PipelineOut)

    def delete_pipeline(self, name: str) -> None:
        self._request("DELETE", f"/pipelines/{name}")

    def start_pipeline_run(self, name: str, reason: str = "") -> Any:
        from control_plane.pipelines.records import PipelineRunCreate, PipelineRunOut

        return self._send("POST", f"/pipelines/{name}/runs", PipelineRunCreate(reason=reason),
                          PipelineRunOut)

    def pipeline_run(self, name: str, number: int | None = None) -> Any:
        """Run ``number`` of ``name``, or its latest."""
        from control_plane.pipelines.records import PipelineRunOut

        return self._get(f"/pipelines/{name}/runs/{number if number is not None else 'latest'}",
                         PipelineRunOut)

    def pipeline_runs(self, name: str, *, limit: int = 50) -> list[Any]:
        from control_plane.pipelines.records import PipelineRunOut

        return read_replies(PipelineRunOut, self._request(
            "GET", f"/pipelines/{name}/runs", params={"limit": limit}).json())

    def pipeline_logs(self, name: str, number: int) -> str:
        return str(self._request("GET", f"/pipelines/{name}/runs/{number}/logs").json()["text"])

    def cancel_pipeline_run(self, name: str, reason: str = "") -> Any:
        from control_plane.pipelines.records import PipelineRunOut

        return self._send("POST", f"/pipelines/{name}/cancel", RolloutAction(reason=reason),
                          PipelineRunOut)

    # ------------------------------------------------------------ tokens

    def create_token(
        self, name: str, role: Role | str, *, expires_in_days: int | None = None,
        expires_in_minutes: int | None = None, subject: str | None = None,
        model: str | None = None, endpoint: str | None = None,
    ) -> TokenCreated:
        """A new token; ``subject`` is the person or service it is for (default: ``name``);
        ``model``: a trainer token's one model (a training job's); ``endpoint``: a labeler
        token's one endpoint (the only one whose feedback it posts)."""
        body = TokenCreate(name=name, role=Role(role), expires_in_days=expires_in_days,
                           expires_in_minutes=expires_in_minutes, subject=subject, model=model,
                           endpoint=endpoint)
        # Sent only when set: a control plane from before these fields refuses them.
        unset = {field for field, value in (("model", model), ("endpoint", endpoint))
                 if value is None}
        payload = body.model_dump(mode="json", exclude=unset)
        return read_reply(TokenCreated, self._request("POST", "/tokens", json=payload).json())

    def list_tokens(self) -> list[TokenOut]:
        return read_replies(TokenOut, self._request("GET", "/tokens").json())

    def revoke_token(self, name: str) -> TokenOut:
        return read_reply(TokenOut, self._request("DELETE", f"/tokens/{name}").json())


def _error_from(
    response: httpx.Response,
    classes: Mapping[str, type[ModelplaneError]] = _ERRORS_BY_CODE,
    fallback: type[ModelplaneError] = ControlPlaneError,
) -> ModelplaneError:
    """The error an answer carries (``modelplane.errors.error_body``) as its own class.

    Both planes send the same body, so one reader serves the control plane's answers and
    the data plane's (``classes`` then maps the serving codes).
    """
    try:
        body = response.json()
        message, code = str(body.get("error", response.text)), str(body.get("code", ""))
        detail = body.get("detail")
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        message, code, detail = response.text or response.reason_phrase, "", None
    detail = detail if isinstance(detail, dict) else {}
    return classes.get(code, fallback)(
        message, detail={**detail, "status": response.status_code, "code": code})


def _inference_error_from(response: httpx.Response) -> ModelplaneError:
    """The data plane's error as the ``serving.errors`` class its code names."""
    import serving.errors as serving_errors

    classes = {cls.code: cls for cls in vars(serving_errors).values()
               if isinstance(cls, type) and issubclass(cls, serving_errors.ServingError)}
    return _error_from(response, classes, serving_errors.ServingError)


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class _FileChunks:
    """A file's bytes, read afresh each time they are iterated: an upload sent again
    sends the whole file again."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
