"""The main job: the whole modelplane story on the embedded default, step by step.

1. start the platform (local Ray head, Serve, the Monitor, the control plane on SQLite);
2. train version 1 on Ray Train (a job submitted through Ray's job API) and register it;
3. serve it;
4. send live traffic with Locust in the background, plus labelled requests whose ground
   truth is fed back, so online accuracy is measured;
5. run the pipeline for version 2 (other hyperparameters): the data is validated, the job
   trains, the candidate is evaluated against the champion and benchmarked beside it,
   then canaried under live traffic and promoted; each stage prints as it passes;
6. run it again on a copy of the data whose labels were shuffled (a broken join
   upstream): version 3 is stopped at the evaluate stage and never takes traffic;
7. shift one feature of the live traffic: the drift alert fires and names it, and the
   pipeline, watching for drift alerts, retrains on the latest (shifted) data by itself:
   version 4 is validated, canaried and promoted.

Then it prints where to look. The platform keeps running; ``modelplane down`` stops it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from modelplane import __version__
from modelplane.errors import ModelplaneError
from modelplane.settings import Settings, get_settings

MODEL = "breast-cancer"
ENDPOINT = "breast-cancer"
EXPERIMENT = "quickstart"
PIPELINE = "breast-cancer"
DRIFT_RULE = "breast-cancer-input-drift"
DRIFT_FEATURE = 0  # "mean radius"
LOCUSTFILE = Path(__file__).resolve().parents[1] / "benchmarks" / "locustfile.py"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class QuickstartError(ModelplaneError):
    code = "quickstart_failed"


@dataclass(frozen=True)
class Pace:
    """How long things take: the full story, or a shorter one for tests and slow machines."""

    epochs: int
    step_s: float
    interval_s: float
    window_s: float
    min_samples: int
    min_labels: int
    benchmark_s: float
    search_steps: int

    @classmethod
    def for_run(cls, short: bool) -> Pace:
        if short:
            return cls(epochs=8, step_s=4, interval_s=1, window_s=8, min_samples=15, min_labels=8,
                       benchmark_s=2, search_steps=0)
        return cls(epochs=25, step_s=10, interval_s=2, window_s=15, min_samples=30, min_labels=12,
                   benchmark_s=5, search_steps=3)


def run_quickstart(*, short: bool = False) -> None:
    """Run the story, printing what each step does; raises QuickstartError on a failure."""
    Story(get_settings(), Pace.for_run(short), Console()).run()


class Story:
    def __init__(self, settings: Settings, pace: Pace, console: Console) -> None:
        self.settings, self.pace, self.console = settings, pace, console
        self.work = settings.home / "quickstart"
        self.client: Any = None
        self.dashboard: str | None = None
        self.locust: subprocess.Popen[bytes] | None = None
        self.feedback: LabelledTraffic | None = None
        self.steps = 0

    # ------------------------------------------------------------ the steps

    def run(self) -> None:
        console = self.console
        console.rule(f"modelplane {__version__} quickstart")
        console.print(f"home {self.settings.home}   store {self.settings.db_url}")
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.start_platform()
            first = self.train(1, "baseline", hidden=[16], learning_rate=0.003, epochs=self.pace.epochs)
            self.serve(first)
            self.start_traffic()
            self.step("pipeline run for version 2", "wider network: validate data, train, "
                      "evaluate, benchmark, canary")
            self.apply_pipeline(self._data_file("breast-cancer.csv"), "wider", hidden=[64, 32])
            self.follow_run(self.client.start_pipeline_run(PIPELINE, "wider network").number,
                            expect="succeeded")
            self.step("pipeline run for version 3", "trained on shuffled labels (a broken "
                      "upstream join)")
            self.apply_pipeline(self._data_file("breast-cancer-shuffled-labels.csv", shuffle=True),
                                "trained on shuffled labels", hidden=[64, 32])
            self.follow_run(self.client.start_pipeline_run(PIPELINE, "shuffled labels").number,
                            expect="failed")
            self.drift()
        finally:
            self.stop_traffic()
        self.where_to_look()

    def start_platform(self) -> None:
        from control_plane.client import Client
        from control_plane.platform import start_platform, status_progress

        self.step("start the platform", "Ray head, Serve, Monitor, control plane")
        with self.console.status("starting …") as status:
            info = start_platform(self.settings, progress=status_progress(self.console, status))
        # The rest of the story reaches the platform over HTTP and Ray's job API, so this
        # process stops being a Ray driver: Ray prints its cluster-wide notes (the raylet's
        # "N worker processes have been started" …) to every driver's stdout, in the middle
        # of the story. They stay in Ray's logs; our own failures still surface here.
        import ray

        ray.shutdown()  # only disconnects: the head and everything on it keep running
        self.dashboard = info.dashboard_url
        self.console.print(f"  control plane {info.api_url}   inference {info.inference_url}"
                           + (" (HAProxy ingress)" if info.fast_ingress else ""))
        self.console.print(f"  console       {info.api_url}/ui   (sign in with the admin token)")
        if info.dashboard_url:
            self.console.print(f"  Ray dashboard and job API {info.dashboard_url}")
        self.client = Client(self.settings.url, self.settings.resolved_token(), settings=self.settings)
        self.client.put_alert_rule({
            "name": DRIFT_RULE, "metric": "drifted_features", "comparison": ">", "threshold": 0,
            "window_s": 30, "every_s": 2, "endpoint": ENDPOINT, "severity": "warning",
            "summary": "{endpoint} v{version}: input drift in {details}"})

    def train(self, number: int, label: str, *, hidden: list[int], learning_rate: float,
              epochs: int, data: dict[str, Any] | None = None) -> int:
        from training.submission import submit_spec

        self.step(f"train version {number}", f"{label}: Ray Train job submitted through Ray's job API")
        spec = self.work / f"job-v{number}.yaml"
        spec.write_text(yaml.safe_dump(_job_spec(label, hidden, learning_rate, epochs, data)))
        before = self._latest_version()
        with self.console.status(f"  training {label} …") as status:
            def show(text: str) -> None:
                for line in text.splitlines():
                    if _is_story_line(line):
                        status.update(f"  {line.strip()[:100]}")
                        if line.lstrip().startswith(("held-out", "registered", "submitted")):
                            self.console.print(f"  {line.strip()}")

            submit_spec(spec, address=self.dashboard, wait=True, echo=show)
        version = self._latest_version()
        if version is None or version == before:
            raise QuickstartError(f"the training job for version {number} registered nothing; "
                                  f"see `modelplane train list` and its logs")
        return version

    def serve(self, version: int) -> None:
        from control_plane.platform import wait_serving
        from serving.names import endpoint_route_prefix

        self.step(f"serve {MODEL}:{version}", f"at {endpoint_route_prefix(ENDPOINT)}")
        if any(p.name == PIPELINE for p in self.client.list_pipelines()):
            with contextlib.suppress(ModelplaneError):  # a run left by an interrupted story
                self.client.cancel_pipeline_run(PIPELINE, "quickstart restarted")
        if any(e.name == ENDPOINT for e in self.client.list_endpoints()):
            for rollout in self.client.list_rollouts(endpoint=ENDPOINT, active=True):
                self.client.rollout_action(rollout.id, "abort", "quickstart restarted")
            self.client.undeploy(ENDPOINT)
        self.client.deploy(ENDPOINT, f"{MODEL}:{version}", scaling={"num_cpus": 0.25})
        with self.console.status("  loading the model on Serve …"):
            wait_serving(self.settings.url, ENDPOINT, version)
        self.console.print("  serving; new versions arrive through the pipeline")

    def start_traffic(self) -> None:
        from sklearn.datasets import load_breast_cancer

        self.step("live traffic", "Locust in the background, and labelled requests with feedback")
        data = load_breast_cancer()
        rows_file = self.work / "rows.npy"
        np.save(rows_file, data.data.astype(np.float32))
        self.locust = self._start_locust(rows_file, drift=0.0)
        self.feedback = LabelledTraffic(self.settings.url, self.client, data.data.astype(np.float32),
                                        data.target)
        self.feedback.start()
        time.sleep(3)
        stats = self.client.endpoint_stats(ENDPOINT, window_s=10)["versions"]
        answered = sum(v["requests"] for v in stats.values())
        if answered == 0:
            raise QuickstartError(f"no traffic reached {ENDPOINT}; see {self.work / 'locust.log'}")
        self.console.print(f"  {answered} requests in the last 10 s; Locust log {self.work / 'locust.log'}")

    def apply_pipeline(self, data: Path, label: str, *, hidden: list[int],
                       on_drift_alert: bool = False) -> None:
        """Define (or update) the pipeline: this data, this network, the gates and the canary."""
        pace = self.pace
        template = {
            "strategy": "canary", "steps": [25, 50, 100], "step_duration_s": pace.step_s,
            "drain_s": 2,
            "analysis": {"interval_s": pace.interval_s, "window_s": pace.window_s,
                         "min_samples": pace.min_samples, "max_error_rate": 0.01,
                         "max_p95_ms": 500, "max_p95_ratio": None, "min_accuracy": 0.85,
                         "min_labels": pace.min_labels, "failures_to_rollback": 2}}
        job = _job_spec(label, hidden, 0.003, pace.epochs, {"path": str(data), "target": "target"})
        self.client.apply_pipeline({
            "name": PIPELINE,
            "description": "retrain, gate and roll out the breast cancer classifier",
            "data": {"uri": str(data), "expectations": {
                "min_rows": 400, "max_missing_rate": 0.0,
                # One feature in ten may move (a retraining after drift); more stops the run.
                "drift": {"test": "auto", "alpha": 0.01, "max_drifted_share": 0.1}}},
            "training": {"job": job, "timeout_s": 1800},
            "evaluate": {"gates": {"min_accuracy": 0.9, "max_regression": 0.02}},
            # A shared laptop's p99 is noisy: the gate here only catches gross slowdowns.
            "benchmark": {"rate": 20, "duration_s": pace.benchmark_s, "p99_target_ms": 200,
                          "search_steps": pace.search_steps, "max_slowdown": 5.0},
            "approve": {"mode": "policy"},
            "deploy": {"endpoint": ENDPOINT, "rollout": template},
            "triggers": {"on_drift_alert": on_drift_alert, "cooldown_s": 10},
        })

    def follow_run(self, number: int, *, expect: str) -> Any:
        """Print each stage as it ends (the canary live while it runs) until the run ends."""
        shown: set[str] = set()
        deadline = time.monotonic() + 1800
        with self.console.status(f"  run #{number} …") as status:
            while time.monotonic() < deadline:
                run = self.client.pipeline_run(PIPELINE, number)
                for stage in run.stages:
                    if stage.state.done and stage.name not in shown:
                        shown.add(stage.name)
                        self.console.print(f"  {_stage_line(stage)}")
                    elif stage.state.value == "running":
                        status.update(f"  {stage.name} …")
                        rollout_id = stage.outputs.get("rollout_id")
                        if stage.name == "deploy" and rollout_id:
                            status.stop()
                            self.watch_rollout(int(rollout_id))
                            status.start()
                if run.state.terminal:
                    break
                time.sleep(0.5)
        if run.state.value != expect:
            raise QuickstartError(
                f"pipeline run #{number} ended {run.state.value} ({run.reason}), expected "
                f"{expect}; `modelplane pipeline status {PIPELINE} --run {number}` shows each stage")
        if expect == "succeeded":
            champion = self.client.resolve(f"{MODEL}@champion")
            self.console.print(f"  [green]promoted[/green]: {MODEL}@champion → version "
                               f"{champion.version}, stage {champion.stage.value}")
        else:
            self.console.print(f"  [red]stopped[/red]: {run.reason}; it never took traffic")
        return run

    def watch_rollout(self, rollout_id: int) -> None:
        from control_plane.cli.rollouts import follow_rollout

        follow_rollout(self.client, rollout_id, self.console, refresh=0.5,
                       window_s=self.pace.window_s, for_s=600)
        self.console.print()

    def drift(self) -> None:
        from sklearn.datasets import load_breast_cancer

        feature = str(load_breast_cancer().feature_names[DRIFT_FEATURE])
        self.step("drifted traffic", f"Locust now adds 3 standard deviations to {feature!r}; the "
                  "pipeline retrains on drift alerts")
        latest = self._data_file("breast-cancer-latest.csv", shift=3.0)
        self.apply_pipeline(latest, "retrained on the latest data", hidden=[64, 32],
                            on_drift_alert=True)
        self._stop_locust()
        self.locust = self._start_locust(self.work / "rows.npy", drift=3.0)
        if self.feedback is not None:
            self.feedback.shift(DRIFT_FEATURE, 3.0)
        with self.console.status("  waiting for the Monitor's drift verdict and the alert …"):
            alert = _wait(lambda: next((a for a in self.client.alerts()
                                        if a.name == DRIFT_RULE and a.state == "firing"), None),
                          180, "the drift alert to fire")
        self.console.print(f"  [yellow]alert firing[/yellow] {alert.name}: {alert.summary}")
        run = _wait(lambda: next((r for r in self.client.pipeline_runs(PIPELINE, limit=1)
                                  if r.trigger.value == "alert"), None),
                    120, "the pipeline to start on the drift alert")
        self.console.print(f"  the pipeline started run #{run.number} by itself "
                           f"({run.trigger_detail.get('reason', 'drift alert')})")
        self.follow_run(run.number, expect="succeeded")

    def where_to_look(self) -> None:
        from serving.names import endpoint_url

        url = self.settings.url
        host = url.split("://", 1)[1]
        console = self.console
        console.rule("[bold green]done[/bold green] — modelplane is still running")
        console.print(f"  infer        curl -X POST {endpoint_url(url, ENDPOINT, 'infer')} -d "
                      "'{\"inputs\":[{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[1,30],\"data\":[...]}]}'")
        console.print("  tritonclient import tritonclient.http as tc; "
                      f"tc.InferenceServerClient('{host}').infer('{ENDPOINT}', inputs)")
        if self.settings.grpc_port:
            grpc_host = f"{host.rsplit(':', 1)[0]}:{self.settings.grpc_port}"
            console.print("  gRPC         import tritonclient.grpc as tc; "
                          f"tc.InferenceServerClient('{grpc_host}').infer('{ENDPOINT}', inputs)")
        console.print(f"  console      {url}/api/ui   (token: {self.settings.admin_token_path})")
        console.print(f"  metrics      {url}/api/metrics")
        console.print(f"  monitor      modelplane monitor {ENDPOINT}")
        console.print(f"  pipeline     modelplane pipeline history {PIPELINE}; "
                      f"modelplane pipeline status {PIPELINE} --run 2")
        console.print(f"  rollouts     modelplane rollout list --endpoint {ENDPOINT}; "
                      f"modelplane rollout history {ENDPOINT}")
        console.print("  alerts       modelplane alerts list; modelplane alerts history")
        console.print(f"  registry     modelplane models show {MODEL} (each version's benchmark); "
                      f"modelplane experiments runs {EXPERIMENT}")
        if self.dashboard:
            console.print(f"  Ray          {self.dashboard}  (modelplane train list)")
        console.print("  stop         modelplane down")

    # ------------------------------------------------------------ helpers

    def step(self, title: str, detail: str) -> None:
        """Print the next step's heading, numbered in the order the story reaches it."""
        self.steps += 1
        self.console.print(f"\n[bold]{self.steps}. {title}[/bold] — {detail}")

    def _data_file(self, name: str, *, shuffle: bool = False, shift: float = 0.0) -> Path:
        """The breast cancer data as a CSV file: as shipped, with its labels shuffled (what a
        broken upstream join produces), or with the drift feature moved by ``shift`` std."""
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        if shuffle:
            frame["target"] = np.random.default_rng(3).permutation(frame["target"].to_numpy())
        if shift:
            column = frame.columns[DRIFT_FEATURE]
            frame[column] += shift * frame[column].std()
        # Where the control plane may read local data (MODELPLANE_DATA_ROOTS).
        folder = self.settings.local_data_roots[0] / "quickstart"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        frame.to_csv(path, index=False)
        return path

    def _latest_version(self) -> int | None:
        from control_plane.errors import NotFoundError

        try:
            return self.client.get_model(MODEL).latest_version
        except NotFoundError:
            return None

    def _start_locust(self, rows_file: Path, *, drift: float) -> subprocess.Popen[bytes]:
        if not LOCUSTFILE.is_file():
            raise QuickstartError(f"{LOCUSTFILE} is missing; run the quickstart from a checkout "
                                  "of the repository (./scripts/quickstart.sh)")
        env = {**os.environ, "MODELPLANE_ENDPOINT": ENDPOINT, "MODELPLANE_ROWS": str(rows_file),
               "MODELPLANE_WAIT": "0.05", "MODELPLANE_DRIFT": str(drift),
               "MODELPLANE_DRIFT_FEATURE": str(DRIFT_FEATURE),
               # A quickstart killed by a signal skips its `finally`: Locust stops itself.
               "MODELPLANE_PARENT_PID": str(os.getpid())}
        log = open(self.work / "locust.log", "ab")  # noqa: SIM115 (the child owns it)
        return subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "3",
             "-r", "3", "--host", self.settings.url, "--only-summary"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _stop_locust(self) -> None:
        if self.locust is not None and self.locust.poll() is None:
            self.locust.terminate()
            try:
                self.locust.wait(15)
            except subprocess.TimeoutExpired:
                self.locust.kill()
        self.locust = None

    def stop_traffic(self) -> None:
        self._stop_locust()
        if self.feedback is not None:
            self.feedback.stop()
        if self.client is not None:
            self.client.close()


class LabelledTraffic(threading.Thread):
    """Requests whose true labels are known, fed back as ground truth shortly after."""

    def __init__(self, url: str, client: Any, rows: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(name="labelled-traffic", daemon=True)
        self.url, self.client, self.rows, self.labels = url, client, rows, labels
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def shift(self, feature: int, n_std: float) -> None:
        """Move one feature of the rows sent from now on, as the rest of the traffic moved."""
        rows = self.rows.copy()
        rows[:, feature] += n_std * rows[:, feature].std()
        self.rows = rows  # one assignment: the sending thread sees the old rows or the new

    def run(self) -> None:
        import httpx

        from serving.names import endpoint_url

        infer_url = endpoint_url(self.url, ENDPOINT, "infer")
        rng = np.random.default_rng(7)
        pending: dict[str, int] = {}
        with httpx.Client(timeout=10) as http:
            while not self._stop_event.wait(0.05):
                index = int(rng.integers(len(self.rows)))
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, self.rows.shape[1]],
                                    "data": self.rows[index].tolist()}]}
                try:
                    response = http.post(infer_url, json=body)
                    if response.status_code == 200:  # labels join on the server's id
                        pending[response.headers["x-modelplane-request-id"]] = int(self.labels[index])
                    if len(pending) >= 10:
                        self.client.send_feedback(ENDPOINT, pending)
                        pending = {}
                except (httpx.HTTPError, ModelplaneError, ValueError, KeyError):
                    time.sleep(0.5)  # the endpoint is briefly busy; labels are best effort


def _job_spec(label: str, hidden: list[int], learning_rate: float, epochs: int,
              data: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "experiment": {"name": EXPERIMENT, "tags": {"story": "quickstart", "variant": label}},
        "model": {"architecture": "mlp_classifier", "hidden_sizes": hidden, "dropout": 0.1},
        # The test rows are kept out of training: early stopping chose each version's epoch
        # on its validation rows, so the pipeline's evaluate stage scores on these.
        "data": {**(data or {"dataset": "breast_cancer"}), "validation_split": 0.25,
                 "test_split": 0.2, "seed": 0},
        "hyperparameters": {"optimizer": "adam", "learning_rate": learning_rate,
                            "batch_size": 32, "epochs": epochs},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
        # The story never resumes a job: one checkpoint, of the last epoch, is enough (one
        # every epoch cost about 0.3 s each on 2 cores, a third of a short job's training).
        "checkpoint": {"every_n_epochs": epochs},
        "early_stopping": {"metric": "val_loss", "patience": 5},
        "registration": {"model_name": MODEL, "description": label},
    }


def _stage_line(stage: Any) -> str:
    """One pipeline stage as the story tells it: its state and what it found."""
    out = stage.outputs
    found = {
        "validate_data": lambda: f"{out.get('rows')} rows, {out.get('drifted', 0)} features drifted",
        "train": lambda: f"job {out.get('job_id')} registered {out.get('model')}:{out.get('version')}",
        "evaluate": lambda: ", ".join(
            f"{who} {out[who][out['metric']]:.3f}" for who in ("candidate", "champion")
            if out.get(who)) + f" {out.get('metric', '')}",
        "benchmark": lambda: ", ".join(
            f"{who} p99 {out[who]['p99_ms']:.2f} ms" for who in ("candidate", "champion")
            if out.get(who)),
        "deploy": lambda: f"rollout #{out['rollout_id']} {out.get('state')}" if "rollout_id" in out
        else str(out.get("deployed", "")),
    }
    colour = {"passed": "green", "failed": "red"}.get(stage.state.value, "dim")
    detail = stage.reason if stage.state.value in ("failed", "skipped") or not out else ""
    if not detail and stage.name in found:
        try:
            detail = found[stage.name]()
        except (KeyError, TypeError):
            detail = ""
    return f"[{colour}]{stage.name:<13} {stage.state.value:<8}[/{colour}] {detail}".rstrip()


def _is_story_line(line: str) -> bool:
    """The job's own progress lines, not Ray's log chatter."""
    # Ray colours its prefixes ("\x1b[33m(raylet)\x1b[0m …"): judge the text without them.
    text = _ANSI_ESCAPE.sub("", line).strip()
    return bool(text) and not text.startswith(("(", "[", "20", "INFO", "WARNING", "Traceback"))


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise QuickstartError(f"timed out after {timeout:.0f}s waiting for {what}")
