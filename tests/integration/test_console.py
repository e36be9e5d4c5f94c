"""The web console in a real browser (Debian's chromium, driven by Playwright) against the
session's platform: an endpoint under load, a live rollout rolled back from the page, a
reader's forged action refused, drift on a shifted feature, a version's lineage, and the
accessibility basics of every page. Each page is captured as a screenshot: into the
test's temporary folder, or into docs/console/ (what the README shows) with
MODELPLANE_UPDATE_SCREENSHOTS=1, so a test run leaves the checkout as it was.

Chromium must be installed (scripts/test-chromium.sh; CI runs it): without it these tests
fail, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control_plane.client import Client
from serving.monitoring.profiles import build_reference_profile
from tests.integration.test_monitoring import FEATURES, run_model
from tests.load import BackgroundLoad
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.platform import Platform
from tests.waiting import wait_for

ENDPOINT = "console"
MODEL = "console-model"
SHOTS = (Path(__file__).resolve().parents[2] / "docs" / "console"
         if os.environ.get("MODELPLANE_UPDATE_SCREENSHOTS") == "1"
         else Path(tempfile.mkdtemp(prefix="console-shots-")))
A11Y = (Path(__file__).parent / "console_a11y.js").read_text()
SHIFT = 1.5  # standard deviations added to feature f2 of every request: drift
ANALYSIS = {"interval_s": 1, "window_s": 3, "min_samples": 15, "failures_to_rollback": 2,
            "max_p95_ratio": None}
TIMEOUT_MS = 30_000


@dataclass
class Console:
    platform: Platform
    client: Client
    browser: Any
    tokens: dict[str, str]  # role -> secret
    load: BackgroundLoad
    run_id: str

    @property
    def ui(self) -> str:
        return f"{self.platform.url}/api/ui"

    def page(self, role: str, path: str) -> Any:
        """A new browser tab signed in as ``role`` (its token in sessionStorage), at ``path``."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(f"sessionStorage.setItem('modelplane.token', {self.tokens[role]!r})")
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(self.platform.url) or r.url.startswith("data:")
                else outside.append(r.url))
        page.outside_requests = outside
        page.goto(self.ui + path)
        return page


def launch_chromium(playwright: Any) -> Any:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed; run scripts/test-chromium.sh "
                    "(apt-get install chromium). The console's tests need a real browser.")
    return playwright.chromium.launch(executable_path=executable, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


def shift_f2(row: np.ndarray) -> np.ndarray:
    row[:, 2] += SHIFT
    return row


@pytest.fixture(scope="module")
def console(platform: Platform) -> Iterator[Console]:
    """Endpoint `console` serving v1 of a classifier with a reference profile, v2 registered
    beside it, tokens of three roles, load with feature f2 shifted, and one browser."""
    from playwright.sync_api import sync_playwright

    client = platform.client()
    suffix = uuid.uuid4().hex[:6]
    tokens = {"admin": platform.token}
    for role in ("reader", "deployer", "approver"):
        tokens[role] = client.create_token(f"console-{role}-{suffix}", role).token
    run = client.start_run("console-training", name="train-v1", params={"lr": 0.1, "epochs": 5},
                           capture_environment=False)
    training = np.random.default_rng(0).normal(size=(4000, 4))
    for seed in (41, 42):
        model = linear_classifier(n_classes=2, seed=seed)
        profile = build_reference_profile(training, run_model(model, training),
                                          task="classification", feature_names=FEATURES)
        lineage = {"dataset_uri": "sklearn://synthetic-normal", "dataset_digest": "ab" * 32,
                   "run_id": run.id, "code_commit": "0123456789abcdef"} if seed == 41 else {}
        client.register_version(MODEL, model, linear_classifier_manifest(
            n_classes=2, reference_profile=profile, feature_names=FEATURES, lineage=lineage,
            metrics={"accuracy": 0.91}))
    client.deploy(ENDPOINT, f"{MODEL}:1", scaling={"num_cpus": 0.05})
    platform.wait_endpoint(ENDPOINT, {1})
    with sync_playwright() as playwright, BackgroundLoad(platform.url, ENDPOINT, workers=2,
                                                       shape_rows=shift_f2) as load:
        browser = launch_chromium(playwright)
        try:
            yield Console(platform, client, browser, tokens, load, run.id)
        finally:
            browser.close()
            for rollout in client.list_rollouts(endpoint=ENDPOINT, active=True):
                client.rollout_action(rollout.id, "abort", "test finished")
            client.undeploy(ENDPOINT)
            client.close()


def check_page(page: Any, shot: str | None = None) -> None:
    """Accessibility basics hold, nothing came from outside the platform, and a screenshot."""
    problems = page.evaluate(A11Y)
    assert problems == [], f"{page.url}: " + "\n".join(problems)
    assert page.outside_requests == [], page.outside_requests
    if shot:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)


def test_sign_in_keeps_the_token_for_the_session(console: Console) -> None:
    context = console.browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{console.ui}/signin")
    page.get_by_label("Token").fill("mp_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    page.locator("#status.error").wait_for()
    page.get_by_label("Token").fill(console.tokens["deployer"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{console.ui}/endpoints")
    page.locator("#who", has_text="(deployer)").wait_for()
    assert page.evaluate("sessionStorage.getItem('modelplane.token')") == console.tokens["deployer"]
    page.goto(f"{console.ui}/signin")
    page.outside_requests = []
    check_page(page, "signin")
    context.close()


def test_rollout_page_is_live_a_reader_cannot_act_and_a_deployer_rolls_back(console: Console) -> None:
    client = console.client
    rollout = client.start_rollout({"endpoint": ENDPOINT, "model_ref": f"{MODEL}:2",
                                    # Ten steps of 12 s: 96 s and more after step 2 for
                                    # the pages below before the deployer rolls it back
                                    # (a loaded host took 40 s for them).
                                    "steps": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
                                    "step_duration_s": 12,
                                    "drain_s": 1, "analysis": ANALYSIS})
    deployer = console.page("deployer", f"/rollouts/{rollout.id}?every=500")
    deployer.locator("#step", has_text="step 1 of 10").wait_for()
    # The page advances by itself: no reload between the two steps.
    deployer.locator("#step", has_text="step 2 of 10").wait_for(timeout=90_000)
    deployer.locator(".analysis table td", has_text="error_rate").first.wait_for()
    assert deployer.locator("button[data-action=rollback]").is_visible()
    check_page(deployer, "rollout")

    endpoints = console.page("deployer", f"/endpoints?endpoint={ENDPOINT}&every=1000&window=5")
    card = endpoints.locator(f"section[data-endpoint={ENDPOINT}]")
    # The charts open with the Monitor's last five minutes (5 s a point), not empty.
    rps = card.locator("section[data-version='1'] svg path[stroke]").first
    rps.wait_for()
    assert rps.get_attribute("d").count("L") >= 20, rps.get_attribute("d")
    card.locator("svg title", has_text=f"{ENDPOINT} traffic split").wait_for(state="attached")
    card.locator("section[data-version='2'] p", has_text="req/s").wait_for()
    wait_for(lambda: "v2" in card.locator("svg").first.text_content(), 30, "v2 in the split")
    # Each replica's health and node, from the cluster view.
    card.locator(f"section[aria-label='{ENDPOINT} replicas'] td .badge", has_text="RUNNING").first.wait_for()
    endpoints.locator("section[data-version='1'] svg path[stroke]").first.wait_for()

    reader = console.page("reader", f"/rollouts/{rollout.id}")
    reader.locator("#state .badge", has_text="progressing").wait_for()
    reader.locator("#who", has_text="(reader)").wait_for()
    assert reader.locator("button[data-action]").count() == 0
    forged = reader.evaluate("""async (id) => {
        const response = await fetch(`/api/rollouts/${id}/rollback`, {method: "POST",
          headers: {"content-type": "application/json",
                    authorization: `Bearer ${sessionStorage.getItem("modelplane.token")}`},
          body: JSON.stringify({reason: "forged"})});
        return {status: response.status, body: await response.json()};
    }""", rollout.id)
    assert forged["status"] == 403 and "deployer" in forged["body"]["error"], forged
    check_page(reader)
    reader.context.close()
    # By now the endpoint page has drawn a few seconds of its charts.
    check_page(endpoints, "endpoints")
    endpoints.context.close()

    assert client.get_rollout(rollout.id).state == "progressing"  # still there to roll back
    deployer.locator("button[data-action=rollback]").click()
    deployer.get_by_label("Reason (recorded with the action)").fill("p95 looked off on the console")
    deployer.locator("#confirm-ok").click()
    deployer.locator("#state", has_text="rolled back").wait_for()
    deployer.locator("#reason", has_text="p95 looked off on the console").wait_for()
    assert deployer.locator("button[data-action]").count() == 0
    weights = wait_for(lambda: (w := {r.version: r.weight for r in client.get_endpoint(ENDPOINT).routes
                                      if not r.shadow}) == {1: 100.0} and w, 30, "stable at 100%")
    assert weights == {1: 100.0}
    assert client.get_rollout(rollout.id).state == "rolled_back"
    deployer.context.close()

    listing = console.page("reader", "/rollouts")
    listing.locator(f"a[href$='/rollouts/{rollout.id}']").wait_for()
    check_page(listing, "rollouts")
    listing.context.close()


def test_drift_heat_map_marks_the_shifted_feature(console: Console) -> None:
    page = console.page("reader", f"/monitoring?endpoint={ENDPOINT}&version=1&window=10&every=500")
    page.locator("svg g[data-feature=f2] rect.drifted").first.wait_for()
    # A few windows read one after the other: the heat map is a picture over time.
    page.locator("svg g[data-feature=f2] rect:nth-of-type(6)").wait_for()
    page.locator("#drifted", has_text="f2").wait_for()
    drifted = {f: page.locator(f"svg g[data-feature={f}] rect.drifted").count() for f in FEATURES}
    assert drifted["f2"] == max(drifted.values()) and drifted["f2"] > 0, drifted
    # The drifted feature's histograms, overlaid: its live rows moved up by 1.5 sd, so the
    # top reference bin holds a far larger share of them than of the reference.
    page.locator("#feature-h", has_text="Feature f2").wait_for()
    top = page.locator("svg g[data-bin]").last
    shares = {s: float(top.locator(f"rect[data-series={s}]").get_attribute("data-share"))
              for s in ("reference", "live")}
    assert shares["live"] > shares["reference"] + 0.2, shares
    check_page(page, "monitoring")
    # Any other feature on request; its live histogram follows the reference.
    page.locator("#pick-feature").select_option("f0")
    page.locator("#feature-h", has_text="Feature f0").wait_for()
    assert "feature=f0" in page.url


def test_lineage_graph_links_the_version_to_its_run_and_dataset_and_an_approver_approves(
        console: Console) -> None:
    page = console.page("approver", f"/models/{MODEL}/versions/1")
    graph = page.locator("svg.graph")
    graph.locator("[data-node=dataset]").wait_for()
    for edge in ("dataset->run", "run->version", f"version->deployment-{ENDPOINT}"):
        assert graph.locator(f"[data-edge='{edge}']").count() == 1, edge
    assert "sklearn://synthetic-normal" in graph.locator("[data-node=dataset]").text_content()
    assert "console-training/train-v1" in graph.locator("[data-node=run]").text_content()
    page.locator("button[data-action=approve]").click()
    page.get_by_label("Reason (recorded with the action)").fill("looks right")
    page.locator("#confirm-ok").click()
    page.locator("td", has_text="looks right").wait_for()
    assert console.client.list_approvals(MODEL, 1)[0].decision == "approved"
    check_page(page, "version")
    page.context.close()

    reader = console.page("reader", f"/models/{MODEL}/versions/1")
    reader.locator("svg.graph [data-node=run]").wait_for()
    assert reader.locator("button[data-action]").count() == 0
    reader.context.close()


@pytest.mark.parametrize("path, ready, shot", [
    ("/models", "td a", "registry"),
    (f"/models/{MODEL}", "td a", "model"),
    ("/experiments?experiment=console-training", "#runs td", "experiments"),
])
def test_every_other_page_renders_and_is_accessible(console: Console, path: str, ready: str,
                                                    shot: str) -> None:
    page = console.page("reader", path)
    page.locator(ready).first.wait_for()
    assert not page.locator("#status.error").count(), page.locator("#status").text_content()
    check_page(page, shot)
    page.context.close()


def test_runs_are_compared_side_by_side_with_their_curves_overlaid(console: Console) -> None:
    experiment = f"console-compare-{uuid.uuid4().hex[:6]}"
    names = {}
    for lr in (0.1, 0.01):
        run = console.client.start_run(experiment, name=f"lr-{lr}", params={"lr": lr, "epochs": 8},
                                       capture_environment=False)
        for step in range(1, 9):
            console.client.log_metrics(run.id, {"val_loss": lr * 10 / step, "val_accuracy": 0.5 + step / 20},
                                       step=step)
        console.client.end_run(run.id)
        names[run.id] = f"lr-{lr}"
    page = console.page("reader", f"/experiments?experiment={experiment}")
    for run_id in names:
        page.locator(f"#runs input[data-run='{run_id}']").check()
    page.get_by_role("button", name="Compare ticked runs").click()
    section = page.locator("#compare")
    section.get_by_text("2 runs compared").wait_for()
    # The parameter that differs is marked; the one both share is not.
    assert section.locator("td strong", has_text="lr ≠").count() == 1
    assert section.locator("td", has_text="epochs").first.locator("strong").count() == 0
    curve = section.locator("svg[aria-labelledby]", has=page.locator("title", has_text="val_loss"))
    drawn = curve.locator("path[data-series]")
    assert sorted(drawn.evaluate_all("ps => ps.map(p => p.dataset.series)")) == sorted(names.values())
    # Each line has a point per logged step.
    assert [d.count("L") for d in drawn.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")] == [7, 7]
    assert "step 8" in curve.text_content() and "step 1" in curve.text_content()
    check_page(page, "compare")
    page.context.close()


def test_a_deployer_silences_a_firing_rule_and_a_reader_cannot(console: Console) -> None:
    rule = f"console-drift-{uuid.uuid4().hex[:6]}"
    console.client.put_alert_rule({"name": rule, "metric": "drift", "comparison": "==",
                                   "threshold": 1, "window_s": 5, "every_s": 1,
                                   "endpoint": ENDPOINT, "severity": "critical"})
    try:
        # Feature f2 of the load is shifted: the rule fires.
        wait_for(lambda: any(a.name == rule and a.state == "firing" for a in console.client.alerts()),
                 60, "the drift rule to fire")
        deployer = console.page("deployer", "/alerts")
        row = deployer.locator("tr", has=deployer.locator("td", has_text=rule))
        row.get_by_label(f"silence {rule} for").select_option(label="1 day")
        row.locator("button[data-action=silence]").click()
        deployer.get_by_label("Reason (recorded with the action)").fill("known shift, fix on Monday")
        deployer.locator("#confirm-ok").click()
        row.locator("td", has_text="known shift, fix on Monday").wait_for()
        [stored] = [r for r in console.client.alert_rules() if r.name == rule]
        assert stored.silence is not None and stored.silence.reason == "known shift, fix on Monday"
        held = stored.silence.until - stored.silence.created_at
        assert abs(held.total_seconds() - 86400) < 1 and stored.silence.created_by.startswith("console-deployer")
        wait_for(lambda: any(a.name == rule and a.silenced_until for a in console.client.alerts()),
                 15, "the firing alert to show its silence")
        deployer.locator("td .badge", has_text="silenced").first.wait_for()
        # Who silenced it shows among the changes to rules, to every reader of the page.
        changed = deployer.locator("#rule-changes tr", has=deployer.locator("td", has_text=rule))
        changed.filter(has_text="silenced").first.wait_for()
        assert "console-deployer" in changed.filter(has_text="silenced").first.text_content()
        check_page(deployer, "alerts")

        reader = console.page("reader", "/alerts")
        reader.locator("td", has_text=rule).first.wait_for()
        assert reader.locator("button[data-action]").count() == 0
        forged = reader.evaluate("""async (rule) => {
            const response = await fetch(`/api/alerts/rules/${rule}/silence`, {method: "DELETE",
              headers: {authorization: `Bearer ${sessionStorage.getItem("modelplane.token")}`}});
            return {status: response.status, body: await response.json()};
        }""", rule)
        assert forged["status"] == 403 and "deployer" in forged["body"]["error"], forged
        reader.context.close()

        row.locator("button[data-action=unsilence]").click()
        deployer.locator("#confirm-ok").click()
        row.locator("button[data-action=silence]").wait_for()
        assert [r.silence for r in console.client.alert_rules() if r.name == rule] == [None]
        deployer.context.close()
    finally:
        console.client.delete_alert_rule(rule)


def test_a_versions_benchmark_is_shown_beside_the_champions(console: Console) -> None:
    quick = {"rate": 20, "duration_s": 1, "p99_target_ms": 500, "search_steps": 0, "timeout_s": 120}
    client = console.client
    client.set_alias(MODEL, "champion", 1)
    started = {v: client.start_benchmark(MODEL, v, quick).id for v in (1, 2)}
    figures = {v: client.wait_benchmark(MODEL, v, started[v], timeout_s=180).figures for v in (1, 2)}
    page = console.page("reader", f"/models/{MODEL}/versions/2")
    bench = page.locator("section[aria-label='Performance benchmark']")
    bench.locator("th", has_text="v1 (champion)").wait_for()
    row = bench.locator("tr", has=page.locator("td", has_text="p99 (lower is better)"))
    cells = row.locator("td").all_text_contents()

    def ms(value: float) -> str:
        return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"

    assert cells[1:3] == [ms(figures[2].latency_ms.p99), ms(figures[1].latency_ms.p99)], cells
    assert cells[3] == f"{figures[2].latency_ms.p99 / figures[1].latency_ms.p99:.2f}\u00d7", cells
    check_page(page)
    page.context.close()


def test_more_versions_and_runs_than_pages_hold_page_through(console: Console) -> None:
    suffix = uuid.uuid4().hex[:6]
    model, experiment = f"console-many-{suffix}", f"console-many-{suffix}"
    onnx, manifest = linear_classifier(seed=5), linear_classifier_manifest()
    # More than a page holds (25): "Next" shows the rest.
    for _ in range(31):
        console.client.register_version(model, onnx, manifest)
    for index in range(30):
        console.client.start_run(experiment, name=f"run-{index:03d}", params={"index": index},
                                 capture_environment=False)
    page = console.page("reader", f"/models/{model}")
    page.locator(".pager span", has_text="1\u201325 of 31").wait_for()
    assert page.locator("tbody tr").count() == 25
    page.get_by_role("button", name="Next").click()
    page.locator(".pager span", has_text="26\u201331 of 31").wait_for()
    assert page.locator("tbody tr").count() == 6
    check_page(page)
    runs = console.page("reader", f"/experiments?experiment={experiment}")
    section = runs.locator("#runs")
    section.locator(".pager span", has_text="1\u201325 of 30").wait_for()
    assert section.locator("tbody tr").count() == 25
    section.get_by_role("button", name="Next").click()
    section.locator(".pager span", has_text="26\u201330 of 30").wait_for()
    assert section.locator("tbody tr").count() == 5
    check_page(runs)
    page.context.close()
    runs.context.close()
