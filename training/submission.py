"""Submit training jobs to a Ray cluster through Ray's job API, and follow, inspect or stop them.

``submit_spec`` checks the spec (fields, data columns, the cluster's CPUs and GPUs)
before anything reaches the cluster, then submits ``python -m training.job --config …``
with the control plane's address, a token minted for this job alone (see
:mod:`training.job_token`; never the caller's own) and the local code commit in the job's
environment. Each call carries this machine's Ray token where the cluster's dashboard
says it requires one (control_plane.ray_auth), so users never handle it.

Without ``--working-dir`` the job gets a fresh working directory holding only the
resolved spec, and runs the modelplane installed beside Ray on the cluster. With one,
the spec must lie inside it and the directory's code is what runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.ray_auth import dashboard_auth_headers
from modelplane.errors import ConfigurationError
from training.errors import InvalidJobSpecError, JobFailedError, JobSubmissionError
from training.job_token import (
    DEFAULT_LIFETIME_MINUTES,
    JOB_TOKEN_METADATA,
    mint_job_token,
    revoke_if_ended,
    revoke_job_token,
)
from training.registration import BRANCH_ENV, COMMIT_ENV
from training.spec import dump_job_spec, load_job_spec

# Seconds to connect, then to wait for each answer. Ray's client sets no deadline, so a
# dashboard that takes the connection and never answers (frozen, or behind a stalled
# proxy) held its caller for good: the pipeline loop, a cancel, `train submit --wait`.
JOB_API_TIMEOUT_S = (5.0, 30.0)
UPLOAD_TIMEOUT_S = (5.0, 300.0)  # a working directory's package is stored before the answer
TERMINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
# How long `train submit --wait` and `train logs --follow` ask again a job API that cannot
# answer, in a row, before saying so (the job runs on meanwhile).
FOLLOW_PATIENCE_S = 300.0
SPEC_NAME = "job.yaml"


def dashboard_address(address: str | None = None) -> str:
    """``--address``, else Ray's own variables, else the head `modelplane up` started.

    Never Ray's default port on its own: another user of the machine may listen there, and
    would be sent the job (its token, the control plane's address) and Ray's token."""
    if address:
        return address
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        # RAY_ADDRESS often holds a GCS address (host:6379), which the job API does not speak.
        if value.startswith(("http://", "https://")):
            return value
    from control_plane.platform import recorded_dashboard
    from modelplane.settings import get_settings

    settings = get_settings()
    recorded = recorded_dashboard(settings)
    if recorded is None:
        raise ConfigurationError(
            f"no Ray cluster to submit to: none is recorded in {settings.home} (`modelplane "
            "up` records the head it starts; run from the folder holding .modelplane or set "
            "MODELPLANE_HOME); for another cluster pass --address http://HEAD:8265 or set "
            "RAY_ADDRESS=http://HEAD:8265")
    return recorded


class JobClient:
    """Ray's ``JobSubmissionClient`` with token auth handled and errors that say what to do."""

    def __init__(self, address: str | None = None) -> None:
        import logging

        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        # Ray narrates the working-directory upload at INFO; submit prints its own line.
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)

        import requests

        self.address = dashboard_address(address).rstrip("/")
        try:
            # Per client, not per process: one process may talk to clusters in both modes.
            self.headers = dashboard_auth_headers(self.address)
        except ConfigurationError as error:  # this machine's settings: no retry mends them
            raise JobSubmissionError(error.message, detail={
                **error.detail, "answered": True, "refused": True}) from None
        try:
            self._client = _bounded(JobSubmissionClient)(self.address, headers=self.headers)
        except AuthenticationError as error:
            raise self._refused(error) from None
        except (ConnectionError, RuntimeError, ValueError, requests.RequestException) as error:
            raise JobSubmissionError(
                f"cannot reach Ray's job API at {self.address} ({_first_line(error)}); is a Ray "
                "head running with its dashboard? Pass --address http://HEAD:8265 or set "
                "RAY_API_SERVER_ADDRESS",
                detail={"address": self.address, "answered": False},
            ) from None

    def submit(self, entrypoint: str, runtime_env: dict[str, Any], *,
               submission_id: str | None = None, metadata: dict[str, str] | None = None) -> str:
        return self._call(self._client.submit_job, entrypoint=entrypoint,
                          runtime_env=runtime_env, submission_id=submission_id,
                          metadata=metadata or {})

    def info(self, job_id: str) -> Any:
        """The job's Ray ``JobInfo``; a job seen ended has its job token revoked."""
        info = self._call(self._client.get_job_info, job_id)
        revoke_if_ended(info, TERMINAL_STATES)
        return info

    def status(self, job_id: str) -> str:
        return str(self._call(self._client.get_job_status, job_id).value)

    def logs(self, job_id: str) -> str:
        return self._call(self._client.get_job_logs, job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; its token is revoked by the job on exit, or here once ended."""
        stopped = bool(self._call(self._client.stop_job, job_id))
        self.info(job_id)
        return stopped

    def list(self) -> list[Any]:
        return self._call(self._client.list_jobs)

    def follow(self, job_id: str, echo: Callable[[str], None], *, poll_s: float = 1.0,
               patience_s: float = FOLLOW_PATIENCE_S,
               clock: Callable[[], float] = time.monotonic) -> str:
        """Print the job's output as it grows until the job ends; returns its final status.

        A job API that cannot answer (a timeout, a 5xx: the head busy) is asked again, up to
        ``patience_s`` of failures in a row: the job runs on meanwhile, and a follower that
        quit on one hiccup said a job failed that then succeeded."""
        from training.errors import JobSubmissionError

        shown, failing_since = 0, None
        while True:
            try:
                status = self.status(job_id)  # read before the logs, so no tail is missed
                text = self.logs(job_id)
            except JobSubmissionError as error:
                now = clock()
                failing_since = now if failing_since is None else failing_since
                if job_missing(error) or error.detail.get("refused") or \
                        now - failing_since > patience_s:
                    raise JobSubmissionError(
                        f"{error.message}; job {job_id} may still run: follow it with "
                        f"`modelplane train logs {job_id} --follow`, stop it with "
                        f"`modelplane train stop {job_id}`",
                        detail={**error.detail, "job_id": job_id}) from None
                time.sleep(min(poll_s * 5, 10.0))
                continue
            failing_since = None
            if len(text) > shown:
                echo(text[shown:].rstrip("\n"))
                shown = len(text)
            if status in TERMINAL_STATES:
                # Revokes the job's token; unanswered, the job's end still stands (and the
                # token still ends with its lifetime).
                with contextlib.suppress(JobSubmissionError):
                    self.info(job_id)
                return status
            time.sleep(poll_s)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            return method(*args, **kwargs)
        except AuthenticationError as error:
            raise self._refused(error) from None
        except requests.Timeout as error:
            connect, answer = JOB_API_TIMEOUT_S
            waited = (f"took no connection within {connect:g} s"
                      if isinstance(error, requests.ConnectTimeout) else
                      f"did not answer within {answer:g} s ({UPLOAD_TIMEOUT_S[1]:g} s after an "
                      "upload)")
            raise JobSubmissionError(
                f"Ray's job API at {self.address} {waited}; is the head overloaded or its "
                "dashboard stuck?", detail={"address": self.address, "answered": False}) from None
        except (RuntimeError, ConnectionError, requests.RequestException) as error:
            message = _first_line(error)
            if _says_no_such_job(error, message):
                raise no_such_job(str(args[0]) if args else "", self.address) from None
            # A connection that failed carried no request: Ray did nothing with it.
            answered = not isinstance(error, ConnectionError | requests.ConnectionError)
            raise JobSubmissionError(f"Ray's job API at {self.address} failed: {message}",
                                     detail={"address": self.address,
                                             "answered": answered}) from None

    def _refused(self, error: Exception) -> JobSubmissionError:
        said = _first_line(error).removeprefix("Authentication required: ").removeprefix(
            "Authentication failed: ")
        return JobSubmissionError(
            f"Ray's job API at {self.address} refused this machine's Ray token ({said}); the "
            "token must be the one on the cluster's head: copy its ~/.ray/auth_token here (or "
            "set RAY_AUTH_TOKEN)", detail={"address": self.address, "answered": True,
                                          "refused": True})


def no_such_job(job_id: str, address: str) -> JobSubmissionError:
    """The job API's answer that it has no job ``job_id`` (:func:`job_missing` says so)."""
    return JobSubmissionError(
        f"no job {job_id} on the cluster at {address}; `modelplane train list` shows the jobs "
        "there", detail={"address": address, "answered": True, "missing": True})


def job_missing(error: JobSubmissionError) -> bool:
    """Whether the job API answered that it has no such job (not that it could not answer)."""
    return bool(error.detail.get("missing"))


def _says_no_such_job(error: Exception, message: str) -> bool:
    """Whether the job API answered 404 for the job (Ray's SDK raises its answer as a
    RuntimeError). Read from the answer alone: a failed connection's message holds the
    request's URL, and a job id such as ``pipeline-nightly-404-…`` holds "404"."""
    return (type(error) is RuntimeError
            and message.startswith("Request failed with status code 404")
            and "does not exist" in message)


@functools.cache
def _bounded(client_class: type) -> type:
    """``client_class`` with a deadline on every request it makes."""

    class BoundedJobSubmissionClient(client_class):  # type: ignore[misc, valid-type]
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", UPLOAD_TIMEOUT_S if method == "PUT" else JOB_API_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    return BoundedJobSubmissionClient


@dataclass(frozen=True)
class Submission:
    job_id: str
    address: str
    status: str | None = None


def unwatched_training(spec: Any) -> str | None:
    """What to say of a spec whose training nothing bounds (no stall timeout and no run
    time limit): a worker stuck in native code then holds the job and its workers until
    someone stops it. An explicit choice, said once at submission rather than refused."""
    resources = spec.resources
    if resources.stall_timeout_s is not None or resources.max_run_time_s is not None:
        return None
    return ("resources.stall_timeout_s and resources.max_run_time_s are both null, so nothing "
            "stops a training that hangs: a stuck worker holds the job and its workers until "
            "`modelplane train stop JOB_ID`; set either to bound it")


def submit_spec(spec_path: str | os.PathLike[str], *, address: str | None = None,
                working_dir: str | os.PathLike[str] | None = None, wait: bool = False,
                check_resources: bool = True, submission_id: str | None = None,
                echo: Callable[[str], None] = print,
                token_minutes: int = DEFAULT_LIFETIME_MINUTES,
                overrides: Sequence[str] = ()) -> Submission:
    """Check the spec (with ``overrides``, ``section.field=value``, applied), submit it with
    a job token living ``token_minutes`` at most, and (with ``wait``) follow it to the end."""
    from training.capacity import plan_placement
    from training.cluster import cluster_from_dashboard
    from training.preflight import check_data_within

    path = Path(spec_path)
    spec = load_job_spec(path, overrides)
    check_data_within(spec)
    client = JobClient(address)
    if check_resources:
        # Never fits: refused here. Busy: say the job will wait (it checks again, exactly).
        placement = plan_placement(spec.resources, cluster_from_dashboard(client.address,
                                                                           client.headers))
        if not placement.fits_now:
            echo(f"the cluster is busy: the job will wait for its workers (needs "
                 f"{placement.needs}, free now {placement.free}), "
                 f"{spec.resources.placement_timeout_s:g} s at most (resources.placement_timeout_s)")
    unwatched = unwatched_training(spec)
    if unwatched:
        echo(f"warning: {unwatched}")
    token = mint_job_token(spec.experiment.name, model=spec.model_name,
                           lifetime_minutes=token_minutes)
    env = {**job_environment(path.parent), **token.env()}
    metadata = {"experiment": spec.experiment.name, "model": spec.model_name,
                JOB_TOKEN_METADATA: token.name}
    try:
        job_id = _submit(client, path, spec, working_dir, env, submission_id, metadata,
                         overrides)
    except BaseException:
        revoke_job_token(token.name)  # no job will ever use it
        raise
    echo(f"submitted job {job_id} to {client.address} (experiment {spec.experiment.name})")
    _report_submitted(job_id, spec, client.address)
    if not wait:
        echo(f"follow it with: modelplane train logs {job_id} --follow")
        return Submission(job_id, client.address)
    status = client.follow(job_id, echo)
    if status != "SUCCEEDED":
        raise JobFailedError(f"job {job_id} ended {status}; `modelplane train logs {job_id}` "
                             "shows why", detail={"job_id": job_id, "status": status})
    echo(f"job {job_id} {status}")
    return Submission(job_id, client.address, status)


def submit_resolved(client: JobClient, spec: Any, env: dict[str, str], *, submission_id: str,
                    metadata: dict[str, str]) -> str:
    """Hand a resolved spec to Ray in a fresh working directory (the control plane's own
    submissions, such as a pipeline's training stage, which have no spec file)."""
    return _submit(client, Path(SPEC_NAME), spec, None, env, submission_id, metadata)


def _report_submitted(job_id: str, spec: Any, address: str) -> None:
    """Tell the control plane (best effort: the job runs whether it hears or not), so the
    receivers that chose ``training.submitted`` are notified."""
    import logging

    from control_plane.client import Client
    from modelplane.errors import ModelplaneError

    try:
        with Client() as api:
            api.report_training_submission(job_id, experiment=spec.experiment.name,
                                           model=spec.model_name, address=address)
    except (ModelplaneError, OSError) as error:
        logging.getLogger(__name__).warning("the control plane was not told of job %s: %s",
                                            job_id, error)


def _submit(client: JobClient, path: Path, spec: Any, working_dir: str | os.PathLike[str] | None,
            env: dict[str, str], submission_id: str | None, metadata: dict[str, str],
            overrides: Sequence[str] = ()) -> str:
    """Hand the job to Ray: in a fresh working directory holding the resolved spec, or in
    ``working_dir`` (which must hold the spec; the job applies ``overrides`` to it again)."""
    if working_dir is None:
        with tempfile.TemporaryDirectory(prefix="modelplane-job-") as staging:
            # The resolved spec: local paths in it are absolute, so they mean the same there.
            (Path(staging) / SPEC_NAME).write_text(dump_job_spec(spec))
            job_id = client.submit(_entrypoint(SPEC_NAME), {"working_dir": staging, "env_vars": env},
                                   submission_id=submission_id, metadata=metadata)
    else:
        root = Path(working_dir).resolve()
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            raise InvalidJobSpecError(
                f"the spec {path} is not inside --working-dir {root}; put it there so the job "
                "can read it", detail={"field": "config"},
            ) from None
        job_id = client.submit(_entrypoint(relative.as_posix(), overrides),
                               {"working_dir": str(root), "env_vars": env},
                               submission_id=submission_id, metadata=metadata)
    return job_id


def job_environment(code_dir: Path) -> dict[str, str]:
    """What the job needs from here besides its token: the control plane and the code
    version. The caller's own token never goes in: the job's environment is readable by
    whoever can list the cluster's jobs."""
    from control_plane.environment import git_info
    from modelplane.settings import get_settings

    env = {"MODELPLANE_URL": get_settings().url}
    git = git_info(code_dir)
    if git.get("commit"):
        env[COMMIT_ENV] = git["commit"]
    if git.get("branch"):
        env[BRANCH_ENV] = git["branch"]
    return env


def _entrypoint(spec_path: str, overrides: Sequence[str] = ()) -> str:
    settings = "".join(f" --set {shlex.quote(item)}" for item in overrides)
    return f"python -m training.job --config {shlex.quote(spec_path)}{settings}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
