"""The Monitor keeps an endpoint's statistics apart from an earlier endpoint of the same
name, and forgets a version the endpoint stops serving."""

from __future__ import annotations

from serving.monitoring.monitor import MonitorState
from serving.monitoring.stats import ServedConfig, StatsRecorder

FIRST = "2026-11-30T01:00:00+00:00#4"
SECOND = "2026-11-30T02:00:00+00:00#4"  # the same row id again (SQLite reuses it)


def delta(requests: dict[int, int]) -> dict:
    recorder = StatsRecorder()
    for version, count in requests.items():
        for _ in range(count):
            recorder.record(version, 200, 0.002)
    return recorder.to_delta()


def requests_by_version(state: MonitorState) -> dict[int, int]:
    return {v: s.traffic.requests for v, s in state.snapshot("e", 60).items()}


def test_a_new_endpoint_of_the_same_name_starts_afresh() -> None:
    state = MonitorState()
    state.record("e", "r1", delta({1: 5}), ServedConfig(FIRST, 3, (1,)))
    assert requests_by_version(state) == {1: 5}
    state.record("e", "r2", delta({1: 2}), ServedConfig(SECOND, 1, (1,)))
    assert requests_by_version(state) == {1: 2}
    # The old endpoint's last shipment arrives late: dropped, not merged into the new one.
    state.record("e", "r1", delta({1: 7}), ServedConfig(FIRST, 3, (1,)))
    assert requests_by_version(state) == {1: 2}


def test_a_removed_version_is_forgotten_and_starts_afresh_when_it_returns() -> None:
    state = MonitorState()
    state.record("e", "r1", delta({1: 4, 2: 3}), ServedConfig(FIRST, 1, (1, 2)))
    state.record("e", "r1", delta({1: 1}), ServedConfig(FIRST, 2, (1,)))
    assert requests_by_version(state) == {1: 5}
    # A replica still on the old configuration: its version-2 requests are not revived.
    state.record("e", "r2", delta({1: 1, 2: 9}), ServedConfig(FIRST, 1, (1, 2)))
    assert requests_by_version(state) == {1: 6}
    state.record("e", "r1", delta({2: 1}), ServedConfig(FIRST, 3, (1, 2)))
    assert requests_by_version(state) == {1: 6, 2: 1}


def test_deltas_without_an_identity_are_merged_as_before() -> None:
    state = MonitorState()
    state.record("e", "r1", delta({1: 2}))
    state.record("e", "r2", delta({1: 3}), ServedConfig("", 0, ()))
    assert requests_by_version(state) == {1: 5}
    state.forget("e", 1)
    assert requests_by_version(state) == {}


def test_a_version_that_starts_running_under_the_same_generation_is_counted() -> None:
    """An isolated endpoint's router first gets its table without a version whose
    application is not running yet (a blue-green step's shadow, a version at 0%), then
    the whole table under the same generation once it runs: its requests count."""
    state = MonitorState()
    state.record("e", "router", delta({1: 3}), ServedConfig(FIRST, 5, (1,)))
    state.record("e", "router", delta({1: 1, 2: 4}), ServedConfig(FIRST, 5, (1, 2)))
    assert requests_by_version(state) == {1: 4, 2: 4}
    # A router still on the part table leaves the version counted.
    state.record("e", "other", delta({1: 2}), ServedConfig(FIRST, 5, (1,)))
    state.record("e", "router", delta({2: 1}), ServedConfig(FIRST, 5, (1, 2)))
    assert requests_by_version(state) == {1: 6, 2: 5}


def test_a_deleted_endpoint_stays_forgotten_until_it_is_deployed_again() -> None:
    """Forgotten once, a deleted endpoint came back with the next delta a draining replica
    shipped, and its series stayed exported for good."""
    state = MonitorState()
    state.record("e", "r1", delta({1: 5}), ServedConfig(FIRST, 3, (1,)))
    state.endpoint_deleted("e")
    assert requests_by_version(state) == {}
    state.record("e", "r1", delta({1: 7}), ServedConfig(FIRST, 3, (1,)))  # draining
    assert requests_by_version(state) == {} and "e" not in state.served
    state.record("e", "r2", delta({1: 2}), ServedConfig(SECOND, 1, (1,)))  # deployed again
    assert requests_by_version(state) == {1: 2} and "e" not in state.deleted
