"""Shadow agreement is judged where it means something: a classifier's answers (the top
class, a label, or the positive class's probability on the same side of one half), never a
regression model's, whose shadow is compared by its mean absolute difference. A recorder
feeds a real MonitorState; its snapshot is judged by the rollout analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest

from control_plane.rollouts import AnalysisConfig, Verdict, analyse
from serving.monitoring.monitor import MonitorState
from serving.monitoring.stats import StatsRecorder, compare_outputs


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _out(values: list) -> dict[str, np.ndarray]:
    return {"output": np.asarray(values, dtype=np.float32)}


@pytest.mark.parametrize("primary, shadow, agreed", [
    ([[0.1, 0.7, 0.2]], [[0.2, 0.5, 0.3]], True),  # the same top class
    ([[0.1, 0.7, 0.2]], [[0.6, 0.3, 0.1]], False),
    ([[1], [0], [1]], [[1], [0], [1]], True),  # one label per row
    ([[1], [0], [1]], [[0], [1], [0]], False),  # every label flipped
    ([1, 2, 0], [1, 2, 1], False),
    ([[0.91], [0.12]], [[0.88], [0.31]], True),  # the positive class's probability
    ([[0.91], [0.12]], [[0.42], [0.12]], False),
])
def test_a_classifiers_answers_agree_on_their_classes(primary: list, shadow: list,
                                                      agreed: bool) -> None:
    verdict, diff = compare_outputs("classification", _out(primary), _out(shadow))
    assert verdict is not None and (verdict[0] == verdict[1] == len(primary)) is agreed
    assert diff == pytest.approx(float(np.mean(np.abs(np.subtract(primary, shadow)))), abs=1e-6)


def test_a_regression_models_answers_have_no_agreement_only_a_difference() -> None:
    assert compare_outputs("regression", _out([[3.0], [5.0]]), _out([[3.0], [5.0]])) == (None, 0.0)
    verdict, diff = compare_outputs("regression", _out([[3.0], [5.0]]), _out([[4.0], [5.0]]))
    assert verdict is None and diff == pytest.approx(0.5)
    assert compare_outputs("regression", _out([[3.0]]), _out([[3.0, 1.0]])) == (None, math.inf)
    # A value not finite on either side is left out: the primary's NaN said nothing of
    # the shadow, and held the window's mean difference (max_shadow_mae) at NaN.
    _, diff = compare_outputs("regression", _out([[math.nan], [5.0]]), _out([[4.0], [6.0]]))
    assert diff == pytest.approx(1.0)
    assert compare_outputs("regression", _out([[math.nan]]), _out([[4.0]])) == (None, 0.0)
    assert compare_outputs("classification", _out([[3.0]]), _out([[3.0, 1.0]])) == ((0, 1), math.inf)


@pytest.mark.parametrize("classes", [1, 3])
def test_an_empty_answer_has_no_row_to_agree_on(classes: int) -> None:
    empty = {"output": np.zeros((0, classes), np.float32)}
    assert compare_outputs("classification", empty, dict(empty)) == ((0, 0), 0.0)


def _shadow_snapshot(task: str, answers: list[tuple[list, list]]):
    recorder = StatsRecorder()
    for primary, shadow in answers:
        agreed, diff = compare_outputs(task, _out(primary), _out(shadow))
        recorder.record_shadow(2, agreed=agreed, abs_diff=diff, latency_delta_s=0.001,
                               failed=False)
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", recorder.to_delta())
    return state.snapshot("churn", 60)[2]


def test_an_identical_regression_shadow_is_not_read_as_disagreeing() -> None:
    """It was: every comparison counted as a disagreement, so a shadow step with
    min_shadow_agreement failed a perfect candidate, which was then rejected."""
    snapshot = _shadow_snapshot("regression", [([[2.5]], [[2.5]])] * 200)
    assert snapshot.shadow.compared == 200
    assert math.isnan(snapshot.shadow.agreement) and snapshot.shadow.mean_abs_diff == 0.0
    gates = AnalysisConfig(min_samples=100, min_shadow_agreement=0.9)
    assert analyse(gates, snapshot, None, shadow=True).verdict == Verdict.PASS


def test_a_shadow_flipping_every_label_fails_the_agreement_gate() -> None:
    """It passed: one column's argmax is always 0, so opposite labels agreed."""
    snapshot = _shadow_snapshot("classification", [([[1], [0]], [[0], [1]])] * 200)
    assert snapshot.shadow.agreement == 0.0
    result = analyse(AnalysisConfig(min_samples=100, min_shadow_agreement=0.9), snapshot, None,
                     shadow=True)
    assert result.verdict == Verdict.FAIL and "shadow_agreement" in result.reason


def test_a_shadow_that_hangs_on_some_requests_is_judged_on_those_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate that never answers one request in ten: its hung calls fill the replica's
    shadow slots, and every mirrored request after that is dropped. Judged on its quick
    answers alone it agreed 100% without an error and was promoted; the requests it never
    got now count as failed."""
    import asyncio

    import serving.core
    from tests.unit.serving.test_core import FakeBackend, make_core, triton_body

    class SometimesHangs(FakeBackend):
        async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self.calls % 10 == 9:
                self.calls += 1
                await asyncio.Event().wait()  # never answers
            return await super().infer(arrays)

    monkeypatch.setattr(serving.core, "MAX_SHADOWS_IN_FLIGHT", 8)
    core = make_core({1: 100}, shadows=(2,), backends={1: FakeBackend(1, answer=0),
                                                      2: SometimesHangs(2, answer=0)})
    body, headers = triton_body()

    async def traffic() -> None:
        for _ in range(400):
            assert (await core.handle("POST", "/infer", headers, body)).status == 200
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)

    asyncio.run(traffic())
    state = MonitorState(clock=Clock())
    state.record("churn", "replica", core.recorder.to_delta())
    shadow = state.snapshot("churn", 60)[2].shadow
    assert shadow.compared == 72 and shadow.agreement == 1.0 and shadow.errors == 0
    assert shadow.dropped == 400 - 80 == core.shadows_dropped
    result = analyse(AnalysisConfig(min_samples=50, max_error_rate=0.05), state.snapshot(
        "churn", 60)[2], None, shadow=True)
    assert result.verdict == Verdict.FAIL and "shadow_error_rate" in result.reason


def test_agreement_is_per_row_whatever_the_rows_per_request() -> None:
    """Counted per request, one row of 64 disagreeing made the whole request disagree: a
    shadow 1% off read 0.53 with 64-row requests and 0.99 with one-row ones."""
    rng = np.random.default_rng(5)
    answers = []
    for _ in range(150):
        primary = rng.random((64, 3))
        shadow = primary.copy()
        shadow[0] = np.eye(3)[(primary[0].argmax() + 1) % 3]  # one row's top class moves
        answers.append((primary.tolist(), shadow.tolist()))
    snapshot = _shadow_snapshot("classification", answers)
    assert snapshot.shadow.agreement == pytest.approx(63 / 64)
    gates = AnalysisConfig(min_samples=100, min_shadow_agreement=0.9)
    assert analyse(gates, snapshot, None, shadow=True).verdict == Verdict.PASS


@pytest.mark.parametrize("primary, shadow, agreed_rows, diff", [
    (["cat", "dog", "cat"], ["cat", "dog", "cat"], 3, 0.0),
    (["cat", "dog", "cat"], ["cat", "cat", "cat"], 2, 1 / 3),
    ([b"cat", b"dog"], [b"dog", b"cat"], 0, 1.0),
    (["cat", "dog"], [1, 0], 0, 1.0),  # the shadow answers class numbers where labels were
])
def test_a_classifier_answering_labels_is_judged_on_them(primary: list, shadow: list,
                                                         agreed_rows: int, diff: float) -> None:
    """String labels (sklearn-onnx's output_label) raised as they were read as floats: the
    shadow's comparison died unseen and a shadow rollout never gathered evidence."""
    verdict, difference = compare_outputs("classification", {"label": np.asarray(primary)},
                                          {"label": np.asarray(shadow)})
    assert verdict == (agreed_rows, len(primary))
    assert difference == pytest.approx(diff)
    assert compare_outputs("regression", {"label": np.asarray(primary)},
                           {"label": np.asarray(shadow)})[0] is None
    assert compare_outputs("classification", {"label": np.asarray(primary)},
                           {"label": np.asarray(primary[:1])}) == ((0, len(primary)), math.inf)
