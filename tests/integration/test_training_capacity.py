"""Training jobs never hang: on a real 2-CPU head running the platform, a job the cluster can
never hold is refused before it runs, a job that fits only later waits and then runs, a job
that never gets its workers within ``resources.placement_timeout_s`` ends ``failed`` with
the reason, and every example in examples/ runs to a registered version.

The head (`ray start --head --num-cpus=2`, every port free, a private RAY_TMPDIR) is the
issue's laptop: `modelplane up` puts the platform's replicas on it. As in
tests/integration/jobs/, this process never connects to Ray: every Ray client is a subprocess.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from control_plane.client import Client
from tests.ray_head import BIN, RayHead
from tests.waiting import wait_for
from training.submission import TERMINAL_STATES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOB_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.yaml") if "experiment:" in p.read_text())


@dataclass
class Laptop:
    head: RayHead
    env: dict[str, str]
    url: str

    @property
    def token(self) -> str:
        return (Path(self.env["MODELPLANE_HOME"]) / "admin.token").read_text().strip()

    def client(self) -> Client:
        return Client(self.url, self.token)

    def modelplane(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelplane.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ray_job_submit(self, working_dir: Path, *job_args: str,
                       timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Ray's own CLI, as the README shows it, following the job to its end."""
        return subprocess.run(self._submit_command(working_dir, *job_args), env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ray_job_submit_started(self, working_dir: Path, *job_args: str,
                               log: Path) -> subprocess.Popen[bytes]:
        """The same, running in the background, its output going to ``log``."""
        with open(log, "wb") as output:
            return subprocess.Popen(self._submit_command(working_dir, *job_args), env=self.env,
                                    stdout=output, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def hold_a_cpu(self) -> str:
        """A job whose driver holds 1 CPU and sleeps: other work on the cluster, held as a
        training job's workers would hold it, but leaving the cores to the jobs under test.
        Returns its job id."""
        submitted = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", self.head.dashboard, "--no-wait",
             "--entrypoint-num-cpus", "1", "--", "python", "-c", "import time; time.sleep(900)"],
            env=self.env, capture_output=True, text=True, timeout=120)
        found = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr)
        assert submitted.returncode == 0 and found, submitted.stdout + submitted.stderr
        return found.group(0)

    def _submit_command(self, working_dir: Path, *job_args: str) -> list[str]:
        runtime_env = {"env_vars": {"MODELPLANE_URL": self.url, "MODELPLANE_TOKEN": self.token}}
        return [str(BIN / "ray"), "job", "submit", "--address", self.head.dashboard,
                "--working-dir", str(working_dir), "--runtime-env-json", json.dumps(runtime_env),
                "--", "python", "-m", "training.job", *job_args]


@pytest.fixture(scope="module")
def laptop() -> Iterator[Laptop]:
    head = RayHead(num_cpus=2, extra_env={"RAY_JOB_STOP_WAIT_TIME_S": "30"})
    try:
        head.start()
        env = head.up_platform()
        yield Laptop(head, env, env["MODELPLANE_URL"])
    finally:
        head.stop()


def test_a_job_the_cluster_can_never_hold_is_refused_before_it_runs(laptop: Laptop) -> None:
    """The issue's case: 2 workers of 1 CPU on 2 CPUs, some held by Serve replicas."""
    spec = _write_spec(laptop.head.root / "never" / "job.yaml", laptop, experiment="t-never",
                       workers=2)
    result = laptop.modelplane("train", "submit", str(spec), "--address", laptop.head.dashboard)
    assert result.returncode == 1, result.stdout + result.stderr
    error = " ".join(result.stderr.split())
    assert "submitted" not in result.stdout, result.stdout
    assert "resources.num_workers: the job asks 2 CPU for its workers" in error, error
    assert re.search(r"has 2 CPU, of which 0\.\d+ are held by Serve replicas", error), error
    assert re.search(r"lower resources\.cpus_per_worker to 0\.\d or resources\.num_workers to 1",
                     error), error
    listed = laptop.modelplane("train", "list", "--address", laptop.head.dashboard, "--json")
    assert "t-never" not in {job["experiment"] for job in json.loads(listed.stdout)}

    # Ray's own CLI skips `train submit`: the job itself refuses, before any run starts.
    submitted = laptop.ray_job_submit(spec.parent, "--config", "job.yaml")
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode != 0, output
    assert "error: resources.num_workers: the job asks 2 CPU" in output, output
    assert "Traceback" not in output, output
    assert _runs(laptop.client(), "t-never") == []

    # `train run` on a private local Ray of 1 CPU: the same check, the same kind of answer.
    env = {**laptop.env, "RAY_TMPDIR": str(laptop.head.root / "local-ray")}
    local = subprocess.run([sys.executable, "-m", "modelplane.cli", "train", "run", str(spec),
                            "--num-cpus", "1"], env=env, capture_output=True, text=True, timeout=300)
    error = " ".join((local.stdout + local.stderr).split())
    assert local.returncode == 2, error
    assert re.search(r"error: resources\.num_workers: the job asks 2 CPU for its workers .* has "
                     r"1 CPU; lower resources\.cpus_per_worker to 0\.5 or resources\.num_workers "
                     r"to 1, set num_workers: auto, or add a node", error), error
    assert _runs(laptop.client(), "t-never") == []


@pytest.fixture
def stopped_at_the_end(laptop: Laptop) -> Iterator[list[str]]:
    """Job ids the test started; any still running when it ends (a failed assertion) is
    stopped, so it does not hold the laptop's CPU from the module's later tests."""
    started: list[str] = []
    yield started
    for job_id in started:
        if laptop.head.jobs.status(job_id) not in TERMINAL_STATES:
            laptop.head.jobs.stop(job_id)


def test_a_busy_cluster_makes_jobs_wait_and_the_wait_is_bounded(
        laptop: Laptop, stopped_at_the_end: list[str]) -> None:
    """Another job holds 1 CPU: a job with a 5 s placement timeout fails saying why, one with
    time to spare waits (and says so in `train status` and `train list`) and runs once the
    other job is stopped."""
    root, client = laptop.head.root / "busy", laptop.client()
    holder = laptop.hold_a_cpu()
    stopped_at_the_end.append(holder)
    wait_for(lambda: _job_status(laptop, holder) == "RUNNING", 180, "the holder to run")

    hasty = _write_spec(root / "hasty.yaml", laptop, experiment="t-hasty", workers=1,
                        placement_timeout_s=5)
    patient = _write_spec(root / "patient.yaml", laptop, experiment="t-patient", workers=1,
                          placement_timeout_s=300, epochs=2)
    (hasty_id, said), (patient_id, _) = _submit(laptop, hasty), _submit(laptop, patient)
    stopped_at_the_end.extend((hasty_id, patient_id))
    assert re.search(r"the cluster is busy: the job will wait for its workers \(needs 1 worker "
                     r"x 1 CPU, free now 0\.\d+ CPU\), 5 s at most", said), said

    # The one with 5 s ends failed, its run too, with the reason; one line, no traceback.
    wait_for(lambda: _job_status(laptop, hasty_id) in TERMINAL_STATES, 180, "the hasty job to end")
    assert _status(laptop, hasty_id) == "FAILED"
    logs = laptop.modelplane("train", "logs", hasty_id, "--address", laptop.head.dashboard).stdout
    assert logs.count("could not be placed within 5 s") == 1, logs
    assert "Traceback" not in logs and "WorkerGroupStartup" not in logs, logs
    failed = client.get_run(_runs(client, "t-hasty")[0].id)
    assert failed.status == "failed"
    reason = failed.params["failure_reason"]
    assert reason.startswith("resources.placement_timeout_s: the workers (1 worker x 1 CPU) "
                             "could not be placed within 5 s"), reason
    assert re.search(r"2 CPU, of which 0\.\d+ are held by Serve replicas and 1 by other work",
                     reason), reason

    # The patient one waits and says so where a user looks.
    note = re.compile(r"waiting for resources \(needs 1 worker x 1 CPU, free 0\.\d+ CPU\)")
    wait_for(lambda: _waiting_note(laptop, patient_id), 180, "the patient job to say it waits")
    status = _status_text(laptop, patient_id)
    assert note.search(status), status
    assert "RUNNING" in status, status
    listed = json.loads(laptop.modelplane("train", "list", "--address", laptop.head.dashboard,
                                          "--json").stdout)
    row = next(job for job in listed if job["job_id"] == patient_id)
    assert row["status"] == "RUNNING" and note.fullmatch(row["waiting"] or ""), row
    table = " ".join(laptop.modelplane("train", "list", "--address",
                                       laptop.head.dashboard).stdout.split())
    assert "RUNNING, waiting" in table and f"{patient_id}: {row['waiting']}" in table, table

    stopped = laptop.modelplane("train", "stop", holder, "--address", laptop.head.dashboard)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for(lambda: _job_status(laptop, patient_id) in TERMINAL_STATES, 300, "the patient job to end")
    logs = laptop.modelplane("train", "logs", patient_id, "--address", laptop.head.dashboard).stdout
    assert _status(laptop, patient_id) == "SUCCEEDED", logs
    assert re.search(r"resources free after \d+ s: starting 1 worker x 1 CPU", logs), logs
    assert "registered t-patient:1" in logs, logs
    assert client.get_run(_runs(client, "t-patient")[0].id).status == "finished"
    assert _status_text(laptop, patient_id).count("waiting for resources") == 0


@pytest.fixture(scope="module")
def example_jobs(laptop: Laptop) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    """Every example submitted at once, as several users would: their workers queue for
    the laptop's one free CPU, and their drivers' start-up, export and registration
    overlap. Each `ray job submit` follows its own job; each test below reads one."""
    checkpoints = laptop.head.root / "example-checkpoints"
    started = {}
    for example in JOB_EXAMPLES:
        log = laptop.head.root / f"example-{example.stem}.log"
        started[example.stem] = (laptop.ray_job_submit_started(
            EXAMPLES, "--config", example.name, "--set", "hyperparameters.epochs=2",
            "--set", f"checkpoint.storage_path={checkpoints}", log=log), log)
    yield started
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("example", JOB_EXAMPLES, ids=lambda p: p.stem)
def test_every_example_runs_to_a_registered_version_with_ray_job_submit(
        laptop: Laptop, example_jobs: dict[str, tuple[subprocess.Popen[bytes], Path]],
        example: Path) -> None:
    """Unchanged but for two epochs (`--set`, as the README documents) and where checkpoints go."""
    spec = yaml.safe_load(example.read_text())
    model = spec["registration"]["model_name"]
    process, log = example_jobs[example.stem]
    returncode = process.wait(timeout=900)
    output = log.read_text(errors="replace")
    assert returncode == 0, output
    assert re.search(rf"registered {model}:\d+", output), output
    assert "num_workers auto: 1 worker(s)" in output, output
    version = laptop.client().resolve(f"{model}@{spec['registration']['alias']}"
                                      if spec["registration"].get("alias") else f"{model}:1")
    assert version.manifest.metrics
    if spec["model"]["architecture"] == "text_classifier":
        _serves_texts(laptop, version)


def _serves_texts(laptop: Laptop, version: Any) -> None:
    """The trained text version, deployed, answers texts with the names of its classes."""
    from control_plane.platform import wait_serving

    assert version.manifest.code.preprocess == "builtin:tokenize"
    client = laptop.client()
    client.deploy(version.model, f"{version.model}:{version.version}", scaling={"num_cpus": 0.05})
    try:
        wait_serving(laptop.url, version.model, version.version, timeout_s=180)
        texts = ["Really great, i love it. works so far", "It broke after a week. awful value"]
        body = {"inputs": [{"name": "review", "datatype": "BYTES", "shape": [2], "data": texts}]}
        answer = httpx.post(f"{laptop.url}/v2/models/{version.model}/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["label"]["datatype"] == "BYTES"
        assert outputs["label"]["data"] == ["positive", "negative"], outputs
    finally:
        client.undeploy(version.model)


# ---------------------------------------------------------------- helpers


def _write_spec(path: Path, laptop: Laptop, *, experiment: str, workers: int, epochs: int = 2,
                placement_timeout_s: float | None = None) -> Path:
    resources: dict[str, Any] = {"num_workers": workers, "cpus_per_worker": 1}
    if placement_timeout_s is not None:
        resources["placement_timeout_s"] = placement_timeout_s
    spec = {
        "experiment": {"name": experiment},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": [16]},
        "data": {"dataset": "breast_cancer"},
        "hyperparameters": {"epochs": epochs, "batch_size": 64},
        "resources": resources,
        "checkpoint": {"every_n_epochs": 1000, "storage_path": str(laptop.head.root / "checkpoints")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def _submit(laptop: Laptop, spec: Path) -> tuple[str, str]:
    """The job id `train submit` printed, and all it printed."""
    result = laptop.modelplane("train", "submit", str(spec), "--address", laptop.head.dashboard)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"submitted job (\S+)", result.stdout)
    assert match, result.stdout
    return match.group(1), result.stdout


def _job_status(laptop: Laptop, job_id: str) -> str:
    """For polling: Ray's job API in this process, not a CLI process (seconds each)."""
    return laptop.head.jobs.status(job_id)


def _waiting_note(laptop: Laptop, job_id: str) -> str | None:
    """What `train status` says a job waits for, read in this process: a CLI process per
    poll took a core from the jobs being waited on."""
    from training.capacity import waiting_note

    return waiting_note(laptop.head.jobs.logs(job_id))


def _status(laptop: Laptop, job_id: str) -> str:
    result = laptop.modelplane("train", "status", job_id, "--address", laptop.head.dashboard, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["status"]


def _status_text(laptop: Laptop, job_id: str) -> str:
    result = laptop.modelplane("train", "status", job_id, "--address", laptop.head.dashboard)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _runs(client: Client, experiment: str) -> list[Any]:
    from control_plane.errors import NotFoundError

    try:
        return client.list_runs(experiment).items
    except NotFoundError:
        return []
