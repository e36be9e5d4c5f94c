"""Monitoring and alerting in the Prometheus exposition, and the Grafana dashboard over it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.alerts import AlertService
from control_plane.alerts.schemas import AlertRuleSpec
from control_plane.metrics import render
from control_plane.store import Database
from serving.monitoring.monitor import MonitorState
from serving.monitoring.observations import attach_profiles
from tests.unit.serving.monitoring_helpers import make_core, reference_profile, send_many

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    state = MonitorState()
    core = make_core(reference_profile())
    rows = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    rows[:5, 2] = np.nan
    rows[5:8, 0] = 40.0
    answers = asyncio.run(send_many(core, [r[None, :] for r in rows]))
    asyncio.run(core.handle("POST", "/infer", {}, json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [0, 0, 0, 0]}]}).encode()))
    # Refused before a version is chosen: counted at the endpoint's level (version 0).
    asyncio.run(core.handle("POST", "/infer", {}, b"{not json"))
    delta = core.take_stats().to_delta()
    attach_profiles(delta, core.monitoring, set())
    state.record("churn", "replica", delta, sequence=1)
    ids = [a.headers["x-modelplane-request-id"] for a in answers]  # feedback joins on these
    state.feedback("churn", [(ids[i], [i % 3]) for i in range(100)])

    db = Database(f"sqlite:///{tmp_path_factory.mktemp('alerts') / 'm.db'}")
    alerts = AlertService(db)
    alerts.put_rule(AlertRuleSpec(name="busy", metric="requests", threshold=10, window_s=60), "me")
    alerts.evaluate(lambda e, w: {str(v): s for v, s in state.snapshot(e, w).items()}, lambda: ["churn"])
    text = render(state.totals(), [], {}, alerts.metrics()).decode()
    alerts.stop()
    db.dispose()
    families = list(text_string_to_metric_families(text))
    values = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
              for family in families for sample in family.samples}
    # Families with no samples yet (no regression model, no baseline) still declare a name.
    values.update({(f"{f.name}_total" if f.type == "counter" else f.name, ()): float("nan")
                   for f in families})
    return values


def value(exposition, name: str, **labels: str) -> float:
    return exposition[(name, tuple(sorted(labels.items())))]


def test_quality_counters_are_exact(exposition) -> None:
    version = {"endpoint": "churn", "version": "1"}
    assert value(exposition, "modelplane_input_rows_total", **version) == 300
    assert value(exposition, "modelplane_missing_values_total", **version, feature="tenure") == 5
    assert value(exposition, "modelplane_out_of_range_values_total", **version, feature="age") == 3
    assert value(exposition, "modelplane_rejected_requests_total", **version, reason="shape") == 1
    # A malformed body never reaches a version; its refusal is exported all the same.
    endpoint_level = {labels: count for (name, labels), count in exposition.items()
                      if name == "modelplane_rejected_requests_total"
                      and ("version", "0") in labels}
    assert list(endpoint_level.values()) == [1], endpoint_level


def test_drift_accuracy_and_alerts_are_exposed(exposition) -> None:
    version = {"endpoint": "churn", "version": "1"}
    assert value(exposition, "modelplane_drift_detected", **version) == 0
    assert 0.005 < value(exposition, "modelplane_feature_drift_p_value", **version, feature="income") <= 1
    assert value(exposition, "modelplane_feature_drift_statistic", **version, feature="income",
                 statistic="ks") > 0
    assert value(exposition, "modelplane_feedback_labelled_total", **version) == 100
    assert 0 <= value(exposition, "modelplane_online_accuracy", **version) <= 1
    assert value(exposition, "modelplane_predictions_held", endpoint="churn") == 200
    assert value(exposition, "modelplane_replicas_reporting", endpoint="churn") == 1
    assert value(exposition, "modelplane_replicas_silent", endpoint="churn") == 0
    assert value(exposition, "modelplane_alerts", alertname="busy", severity="warning", state="firing") == 1


def test_every_metric_the_dashboard_uses_is_exposed(exposition) -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\b(modelplane_[a-z0-9_]+)", target["expr"]))
    exposed = {name for name, _ in exposition}
    assert used and used <= exposed, sorted(used - exposed)


def test_a_benchmarks_scratch_endpoint_is_never_exposed() -> None:
    state = MonitorState()
    for endpoint in ("churn", "_bench-0123abcd-7"):
        core = make_core(reference_profile())
        asyncio.run(send_many(core, [np.zeros((1, 4), np.float32)] * 3))
        state.record(endpoint, "replica", core.take_stats().to_delta())
    text = render(state.totals(), [], {}).decode()
    assert 'endpoint="churn"' in text and "_bench-" not in text
