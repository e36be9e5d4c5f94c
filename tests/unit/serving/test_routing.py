"""Weighted choice, stickiness and compiled route tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy import stats

from serving.errors import ModelNotFoundError
from serving.routing import Router
from serving.schemas import RouteTable


def test_weights_are_honoured_within_binomial_tolerance() -> None:
    router = Router.compile(RouteTable(weights={3: 90, 4: 10}))
    rng = random.Random(7)
    n = 20_000
    picks = Counter(router.pick(rng=rng) for _ in range(n))
    result = stats.binomtest(picks[4], n, 0.10)
    assert result.pvalue > 1e-4, picks


def test_zero_weights_never_answer() -> None:
    router = Router.compile(RouteTable(weights={1: 0, 2: 100, 3: 0}))
    rng = random.Random(1)
    assert {router.pick(rng=rng) for _ in range(500)} == {2}


def test_sticky_keys_stay_on_one_variant_and_spread() -> None:
    router = Router.compile(RouteTable(weights={1: 50, 2: 50}))
    for key in ("alice", "bob", "carol"):
        assert len({router.pick(key) for _ in range(50)}) == 1
    spread = Counter(router.pick(f"user-{i}") for i in range(4000))
    assert 0.45 < spread[1] / 4000 < 0.55


def test_sticky_keys_move_only_to_a_version_added_or_grown() -> None:
    """A third version taking a tenth moves about a tenth of the keys, all to it: none
    between the two that did not change (an A/B test's groups stay as they were)."""
    keys = [f"user-{i}" for i in range(10_000)]
    before = Router.compile(RouteTable(weights={1: 50, 2: 50}))
    after = Router.compile(RouteTable(weights={1: 45, 2: 45, 3: 10}))
    moved = [(before.pick(k), after.pick(k)) for k in keys if before.pick(k) != after.pick(k)]
    assert {to for _, to in moved} == {3}
    assert 0.08 < len(moved) / len(keys) < 0.12
    grown = Router.compile(RouteTable(weights={1: 25, 2: 75}))
    shifted = {(before.pick(k), grown.pick(k)) for k in keys if before.pick(k) != grown.pick(k)}
    assert shifted == {(1, 2)}  # a canary's step: keys only go to the version that grew
    spread = Counter(after.pick(k) for k in keys)
    assert 0.08 < spread[3] / len(keys) < 0.12 and 0.42 < spread[1] / len(keys) < 0.48


def test_sticky_assignment_is_stable_across_processes() -> None:
    # blake2b, not Python's salted hash: the same on every replica.
    router = Router.compile(RouteTable(weights={1: 50, 2: 50}))
    assert [router.pick(k) for k in ("a", "b", "c", "d", "e", "f")] == [
        router.pick(k) for k in ("a", "b", "c", "d", "e", "f")
    ]


def test_no_traffic_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="routes no traffic"):
        Router.compile(RouteTable(weights={})).pick()


def test_route_table_rejects_contradictions() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        RouteTable(weights={1: 0})
    with pytest.raises(ValueError, match="both take traffic and shadow"):
        RouteTable(weights={1: 100}, shadows=[1])
