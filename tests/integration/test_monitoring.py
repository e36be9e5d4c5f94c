"""Monitoring on a real platform: real requests through the endpoint, the Monitor, the control
plane's alert evaluator, a real webhook receiver, the Python client and the CLI."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn import metrics

from control_plane.client import Client
from control_plane.stamps import parse_stamp
from serving.monitoring.profiles import build_reference_profile
from tests.integration.test_monitoring_webhooks import Receiver
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.waiting import wait_for

ENDPOINT = "watched"
FEATURES = ["f0", "f1", "f2", "f3"]
WINDOW_S = 2.0


def run_model(model: bytes, rows: np.ndarray) -> np.ndarray:
    from onnxruntime import InferenceSession

    return InferenceSession(model).run(None, {"input": rows.astype(np.float32)})[0]


@pytest.fixture(scope="module")
def watched(platform: Platform) -> Iterator[Platform]:
    """Endpoint `watched`: a binary classifier with a reference profile; v1 takes the
    traffic, v2 is loaded at 0% and reached by pinned requests (the data-quality checks)."""
    training = np.random.default_rng(0).normal(size=(5000, 4))
    with platform.client() as client:
        for seed in (31, 32):
            model = linear_classifier(n_classes=2, seed=seed)
            profile = build_reference_profile(training, run_model(model, training),
                                              task="classification", feature_names=FEATURES)
            client.register_version("watched-model", model, linear_classifier_manifest(
                n_classes=2, reference_profile=profile, feature_names=FEATURES))
        client.deploy(ENDPOINT, "watched-model:1")
        client.deploy(ENDPOINT, "watched-model:2")
    platform.wait_endpoint(ENDPOINT, {1, 2})
    yield platform
    with platform.client() as client:
        for rule in client.alert_rules():
            client.delete_alert_rule(rule.name)
        client.undeploy(ENDPOINT)


def infer(http: httpx.Client, url: str, rows: np.ndarray, **extra: Any) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": [None if np.isnan(v) else float(v) for v in rows.ravel()]}], **extra}
    # NaN travels as JSON's NaN token (the v2 JSON the codec reads); None marks it above.
    text = json.dumps(body).replace("null", "NaN")
    return http.post(url, content=text, headers={"content-type": "application/json"})


def monitoring(platform: Platform, version: int, window_s: float = 300.0) -> dict[str, Any]:
    with platform.client() as client:
        return client.endpoint_monitoring(ENDPOINT, window_s=window_s)["versions"].get(str(version), {})


def eventually(check, timeout: float = 20.0, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def test_feedback_gives_the_accuracy_sklearn_computes_on_the_same_pairs(watched: Platform) -> None:
    url = f"{watched.url}/v2/models/{ENDPOINT}/versions/1/infer"
    rows = np.random.default_rng(1).normal(size=(120, 4))
    ids, predicted = [], []
    with watched.client() as client:
        labeler = client.create_token("monitoring-labeler", "labeler").token
    with httpx.Client(timeout=30) as http:
        for row in rows:
            response = infer(http, url, row[None, :])
            ids.append(response.headers["x-modelplane-request-id"])  # the server's id, the join key
            predicted.append(int(np.argmax(response.json()["outputs"][0]["data"])))
        truth = np.where(np.random.default_rng(2).random(120) < 0.7, predicted, 1 - np.array(predicted))
        # Half through the Python client, half straight to the route of any replica, each
        # with a label source's token.
        with Client(watched.url, labeler) as client:
            first = client.send_feedback(ENDPOINT, dict(zip(ids[:60], truth[:60].tolist(), strict=True)))
        as_labeler = {"authorization": f"Bearer {labeler}"}
        second = http.post(f"{watched.url}/v2/models/{ENDPOINT}/feedback", headers=as_labeler,
                           json={"feedback": [{"request_id": rid, "label": int(label)}
                                              for rid, label in zip(ids[60:], truth[60:], strict=True)]})
        bad = http.post(f"{watched.url}/v2/models/{ENDPOINT}/feedback", headers=as_labeler,
                        json={"feedback": [{"request_id": "x", "label": [1, None]}]})
        assert infer(http, url, rows[:1]).status_code == 200  # still serving
    assert first["received"] == 60 and first["joined"] + first["waiting"] == 60
    assert second.status_code == 200 and second.json()["received"] == 60
    assert bad.status_code == 400 and bad.json()["error"].startswith("feedback[0].label")
    # Until the replica's first shipment reaches the Monitor, the version has no entry yet.
    accuracy = eventually(lambda: (a := monitoring(watched, 1).get("accuracy")) is not None
                          and a["labelled"] == 120 and a)
    assert accuracy, monitoring(watched, 1)
    assert accuracy["average"] == "binary"
    assert accuracy["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert accuracy["precision"] == pytest.approx(metrics.precision_score(truth, predicted))
    assert accuracy["recall"] == pytest.approx(metrics.recall_score(truth, predicted))
    assert accuracy["f1"] == pytest.approx(metrics.f1_score(truth, predicted))
    assert "acc " in watched.cli("monitor", ENDPOINT, "--once", "--window", "300")


def test_nans_out_of_range_values_and_rejections_are_counted_exactly(watched: Platform) -> None:
    url = f"{watched.url}/v2/models/{ENDPOINT}/versions/2/infer"
    rng = np.random.default_rng(3)
    sent = []
    with httpx.Client(timeout=30) as http:
        for index in range(40):
            rows = rng.normal(size=(1 + index % 3, 4))
            rows[rng.random(rows.shape) < 0.15] = np.nan
            rows[rng.random(rows.shape) < 0.1] = 1000.0  # far outside the training range
            assert infer(http, url, rows, parameters={"feature_timestamp": time.time() - 60}).status_code == 200
            sent.append(rows)
        good = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}
        for body in [{"inputs": [{**good, "shape": [2, 2]}]}] * 3 + [{"inputs": [{**good, "datatype": "FP64"}]}] * 2:
            assert http.post(url, json=body).status_code == 400
    everything = np.concatenate(sent)
    missing = np.isnan(everything)
    outside = everything == 1000.0
    expected_features = {name: {"missing": int(missing[:, i].sum()), "out_of_range": int(outside[:, i].sum())}
                         for i, name in enumerate(FEATURES)}

    def counted() -> dict[str, Any] | bool:
        quality = monitoring(watched, 2).get("quality") or {}
        return quality.get("rows") == everything.shape[0] and quality.get("rejected_total") == 5 and quality

    quality = eventually(counted)
    assert quality, monitoring(watched, 2).get("quality")
    assert quality["features"] == expected_features
    assert quality["missing"] == missing.sum() and quality["out_of_range"] == outside.sum()
    assert quality["rows_with_missing"] == missing.any(axis=1).sum()
    assert quality["rows_out_of_support"] == outside.any(axis=1).sum()
    assert quality["rejected"] == {"shape": 3, "datatype": 2}
    assert quality["data_age_count"] == 40 and 55 < quality["data_age_s"] < 120
    assert 0 <= quality["last_request_age_s"] < 60
    exposition = httpx.get(f"{watched.url}/api/metrics", timeout=30).text
    for name, counts in expected_features.items():
        line = f'modelplane_missing_values_total{{endpoint="{ENDPOINT}",feature="{name}",version="2"}}'
        if counts["missing"]:
            assert f"{line} {float(counts['missing'])}" in exposition
    assert f'modelplane_rejected_requests_total{{endpoint="{ENDPOINT}",reason="shape",version="2"}} 3.0' in exposition


@pytest.fixture
def hanging_receiver(watched: Platform) -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    with watched.client() as client:
        client.put_alert_receiver({"name": "hung", "url": f"http://127.0.0.1:{listener.getsockname()[1]}/",
                                   "timeout_s": 10, "max_attempts": 3, "backoff_s": 0.5})
    yield "hung"
    with watched.client() as client:
        client.delete_alert_receiver("hung")
    listener.close()


def test_a_receiver_that_is_down_does_not_slow_serving(watched: Platform, hanging_receiver: str) -> None:
    url = f"{watched.url}/v2/models/{ENDPOINT}/versions/1/infer"
    rows = np.zeros((1, 4))
    with watched.client() as client, httpx.Client(timeout=30) as http:
        for index in range(3):
            started = time.monotonic()
            client.fire_alert_event(f"operator-note-{index}", severity="info", summary="hung receiver test")
            # Delivery to the receiver waits 10 s per try; a call that waited for it would
            # take that long. The bound leaves room for a loaded machine, not for a wait.
            assert time.monotonic() - started < 9.0
        slowest = 0.0
        for _ in range(30):
            started = time.monotonic()
            assert infer(http, url, rows).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 9.0
        history = client.alert_history(name="operator-note-0")
        assert history.total == 1 and history.items[0].kind == "event"
    retried = 'modelplane_alert_notifications_total{outcome="retries",receiver="hung"}'
    assert eventually(lambda: retried in httpx.get(f"{watched.url}/api/metrics", timeout=30).text, 40)


class Traffic:
    """Requests of 10 rows each in a background thread; ``shift`` moves feature f2."""

    def __init__(self, url: str) -> None:
        self.url, self.shift, self.sent, self.failed = url, 0.0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(4)
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                rows = rng.normal(size=(10, 4))
                rows[:, 2] += self.shift
                if infer(http, self.url, rows).status_code == 200:
                    self.sent += 1
                else:
                    self.failed += 1
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_drift_alert_stays_quiet_on_training_traffic_fires_on_a_one_sigma_shift_and_shows_in_the_cli(watched: Platform) -> None:
    receiver = Receiver()
    with watched.client() as client:
        client.put_alert_receiver({"name": "drift-hook", "url": receiver.url})
        client.put_alert_rule({"name": "watched-drift", "metric": "drift", "comparison": "==",
                               "threshold": 1, "endpoint": ENDPOINT, "version": 1,
                               "window_s": WINDOW_S, "every_s": WINDOW_S, "for_s": WINDOW_S,
                               "severity": "critical", "labels": {"team": "risk"}})
    # Other tests' rollouts share this control plane: look only at this rule's alerts.
    def notified() -> list[dict[str, Any]]:
        return [n for n in receiver.received if n["alert"]["name"] == "watched-drift"]

    traffic = Traffic(f"{watched.url}/v2/models/{ENDPOINT}/infer")
    try:
        verdicts: list[str] = []
        # Windows of training-distribution traffic, each judged on its own rows. A single
        # window may cross the 0.005 level by chance; the rule's for_s asks two in a row.
        while verdicts.count("ok") < 20 and len(verdicts) < 30:
            time.sleep(WINDOW_S)
            verdicts.append(monitoring(watched, 1, WINDOW_S)["drift"]["verdict"])
        assert verdicts.count("ok") >= 20, verdicts
        assert notified() == [], notified()
        shifted_at = time.monotonic()
        traffic.shift = 1.0
        # The shift is seen within a window or two and held for_s; the wait leaves the rest
        # to a busy host, where one Monitor read past its deadline pauses the reads for
        # seconds (how many windows it took is printed, not asserted: on two shared cores
        # the evaluation loop's and the replicas' scheduling is not the rule's).
        assert eventually(notified, timeout=60, interval=0.05), "never fired"
        print(f"\ndrift alert fired {(time.monotonic() - shifted_at) / WINDOW_S:.1f} windows "
              "after the shift")
        [firing] = notified()
        # It fired only once the condition had held for for_s, in the control plane's clock.
        held = parse_stamp(firing["alert"]["fired_at"]) - parse_stamp(firing["alert"]["started_at"])
        assert held.total_seconds() >= WINDOW_S - 0.01, firing["alert"]
        assert firing["status"] == "firing" and firing["alert"]["labels"]["endpoint"] == ENDPOINT
        assert "f2" in firing["alert"]["data"]["drifted_features"] and "f2" in firing["alert"]["summary"]
        # Back to the training distribution: a window judged ok resolves it (a window with
        # too few rows for a verdict would not: no evidence is no answer).
        traffic.shift = 0.0
        assert eventually(lambda: len(notified()) == 2, timeout=60), notified()
        assert notified()[1]["status"] == "resolved"
    finally:
        traffic.stop()
    assert traffic.failed == 0
    # The CLI shows what just happened (here, so no other test's order matters; in this
    # process: a CLI process costs seconds of start-up).
    table = watched.cli("monitor", ENDPOINT, "--once", "--window", "300")
    assert "drift by feature" in table and "f2" in table
    rules = json.loads(watched.cli("alerts", "rules", "--json"))
    assert [r["name"] for r in rules] == ["watched-drift"]
    history = json.loads(watched.cli("alerts", "history", "--name", "watched-drift", "--json"))
    assert [e["state"] for e in history["items"]] == ["resolved", "firing"]
    assert "watched-drift" in watched.cli("alerts", "history")
    assert [a for a in json.loads(watched.cli("alerts", "list", "--json"))
            if a["name"] == "watched-drift"] == []
    assert "drift" in watched.cli("alerts", "rules", "--metrics")
    with watched.client() as client:
        client.delete_alert_receiver("drift-hook")
    receiver.close()


def test_a_monitor_older_than_per_routing_samples_still_answers_a_rollout_s_read(
        ray_session: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Monitor is a detached actor and outlives an upgrade of the control plane: its
    snapshot takes no sample. A rollout's read falls back to every request's figures, and
    the mismatch never reads as a Monitor that is down (which would stall every reader)."""
    import ray

    from control_plane import observability
    from serving.monitoring import monitor

    @ray.remote(num_cpus=0)
    class OlderMonitor:
        def snapshot(self, endpoint: str, window_s: float = 60.0) -> dict[int, Any]:
            return {1: f"{endpoint} over {window_s:g}s"}

    older = OlderMonitor.remote()
    # Started before the reads: a new actor's worker may take longer than a read's 2 s
    # on a busy machine, and that is a Monitor that does not answer, not an older one.
    assert ray.get(older.snapshot.remote("warm", 1), timeout=120) == {1: "warm over 1s"}
    monkeypatch.setattr(monitor, "get_monitor", lambda *args, **kwargs: older)
    assert observability.read_version_stats("e", 30, ("random",)) == {1: "e over 30s"}
    assert observability.read_version_stats("e", 30) == {1: "e over 30s"}
    assert observability.monitor_available()
    with pytest.raises(ValueError, match="unknown ways of routing"):
        observability.read_version_stats("e", 30, ("random", "forged"))
    assert observability.monitor_available()
    ray.kill(older)


def test_the_api_s_readers_asking_many_windows_at_once_leave_the_loops_reads_answered(
        ray_session: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Monitor answers one call at a time. Callers of the API (anonymous by default)
    asking for many windows at once queued their reads ahead of the rollout controller's,
    which timed out: every analysis inconclusive, every alert stale, while they asked.
    Here a Monitor taking 0.2 s a read gets 30 API reads at once: at most two of them
    reach it, the rest are refused as busy, and the loops' read is answered in turn."""
    import ray

    from control_plane import observability
    from control_plane.errors import MonitorUnavailableError
    from serving.monitoring import monitor

    @ray.remote(num_cpus=0)
    class SlowMonitor:
        def __init__(self) -> None:
            self.asked: list[float] = []

        def snapshot(self, endpoint: str, window_s: float = 60.0,
                     sample: tuple[str, ...] | None = None) -> dict[int, Any]:
            from serving.monitoring import Traffic, VersionSnapshot

            self.asked.append(window_s)
            time.sleep(0.2)
            return {1: VersionSnapshot(traffic=Traffic(requests=int(window_s)))}

        def asked_windows(self) -> list[float]:
            return self.asked

    slow = SlowMonitor.remote()
    assert ray.get(slow.asked_windows.remote(), timeout=120) == []  # its worker is up
    monkeypatch.setattr(monitor, "get_monitor", lambda *args, **kwargs: slow)
    answered: list[Any] = []
    refused: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(31)

    def api_read(window: int) -> None:
        start.wait()
        try:
            answered.append(observability.endpoint_stats("e", float(window)))
        except MonitorUnavailableError as error:
            refused.append(error.message)
        except BaseException as error:
            failures.append(error)

    readers = [threading.Thread(target=api_read, args=(window,)) for window in range(1, 31)]
    for reader in readers:
        reader.start()
    start.wait()
    time.sleep(0.1)  # the API's reads asked first
    loops_read = observability.version_stats("e", 299.0, ("random",))
    for reader in readers:
        reader.join(timeout=60)
    assert failures == [] and not any(reader.is_alive() for reader in readers)
    assert list(loops_read) == [1] and loops_read[1].traffic.requests == 299
    assert observability.monitor_available()
    assert len(answered) + len(refused) == 30 and refused
    assert all(list(one) == ["1"] for one in answered)
    assert all("busy" in why or "did not answer" in why for why in refused), refused
    asked = ray.get(slow.asked_windows.remote(), timeout=60)
    assert 299.0 in asked and len(asked) <= 1 + 2 + len(answered), asked
    ray.kill(slow)


def test_up_replaces_a_monitor_of_an_older_modelplane_and_keeps_a_current_or_newer_one(
        ray_session: None) -> None:
    """The Monitor outlives an upgrade when Ray keeps running: `up` replaces one that
    predates protocols (or speaks an older one), keeps its own, and leaves a newer one."""
    import ray

    from serving.monitoring.monitor import MONITOR_PROTOCOL, ensure_monitor, get_monitor

    name, namespace = "probe-upgrade-monitor", "modelplane-tests"

    @ray.remote(num_cpus=0)
    class OlderMonitor:
        def snapshot(self, endpoint: str, window_s: float = 60.0) -> dict[int, Any]:
            return {}

    @ray.remote(num_cpus=0)
    class NewerMonitor:
        def protocol(self) -> int:
            return MONITOR_PROTOCOL + 1

    told: list[int | None] = []
    older = OlderMonitor.options(name=name, namespace=namespace, lifetime="detached").remote()
    ray.get(older.snapshot.remote("warm"), timeout=120)
    current = ensure_monitor(name, namespace, replaced=told.append)
    try:
        assert told == [None]
        assert ray.get(current.protocol.remote(), timeout=120) == MONITOR_PROTOCOL
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(older.snapshot.remote("gone"), timeout=60)
        again = ensure_monitor(name, namespace, replaced=told.append)
        assert told == [None] and again._actor_id == current._actor_id
    finally:
        ray.kill(current, no_restart=True)
    wait_for(lambda: get_monitor(name, namespace) is None, 30, "the Monitor's name to be free")
    newer = NewerMonitor.options(name=name, namespace=namespace, lifetime="detached").remote()
    try:
        kept = ensure_monitor(name, namespace, replaced=told.append)
        assert told == [None] and kept._actor_id == newer._actor_id
    finally:
        ray.kill(newer, no_restart=True)

