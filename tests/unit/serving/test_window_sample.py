"""The Monitor's drift rows: any window's sample weighs each shipment as its share of the
window's rows, from a bounded number of rows held. Checked against a reference that keeps
every shipped row and allocates each window's sample from them directly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.monitoring.window_sample import WindowSample, spread_sample

LIMIT = 2000


def _shipments(rng: np.random.Generator, seconds: int) -> list[tuple[int, int, int]]:
    """(epoch, rows counted, rows shipped) per replica shipment: two replicas, rates that
    wander, quiet seconds and bursts."""
    shipments = []
    for epoch in range(seconds):
        for _ in range(2):
            rows = int(rng.choice([0, 3, 40, 250, 900, 6000], p=[0.1, 0.2, 0.3, 0.2, 0.15, 0.05]))
            if rows:
                shipments.append((epoch, rows, min(rows, 256)))
    return shipments


def _tagged(index: int, shipped: int) -> np.ndarray:
    """Rows naming their shipment (column 0) and their place in it (column 1)."""
    return np.column_stack([np.full(shipped, index), np.arange(shipped)]).astype(np.float64)


def _expected_takes(shipments: list[tuple[int, int, int]], first: int) -> dict[int, int]:
    """What each shipment of the window gives, from everything it shipped."""
    window = [(i, rows, shipped) for i, (epoch, rows, shipped) in enumerate(shipments) if epoch >= first]
    total = sum(rows for _, rows, _ in window)
    size = min(LIMIT, *(shipped * total / rows for _, rows, shipped in window))
    cumulative = np.cumsum([rows for _, rows, _ in window])
    bounds = np.floor(size * cumulative / total + 0.5).astype(int)
    return {i: int(take) for (i, _, _), take in zip(window, np.diff(bounds, prepend=0), strict=True)}


def test_every_window_takes_each_shipment_s_share_from_the_rows_held() -> None:
    rng = np.random.default_rng(1)
    shipments = _shipments(rng, 300)
    sample = WindowSample(LIMIT, np.random.default_rng(2))
    for index, (epoch, rows, shipped) in enumerate(shipments):
        sample.add(epoch, rows, _tagged(index, shipped))
    shipped_in_all = sum(shipped for *_, shipped in shipments)
    # About LIMIT * (1 + ln(shipped / LIMIT)) and a row per shipment, up to twice that (and
    # LIMIT more) between cuts; and no more memory than that: a cut keeps no slice's base.
    bound = LIMIT * (1 + math.log(shipped_in_all / LIMIT)) + len(shipments)
    assert sample.held <= 2 * bound + LIMIT
    held = sample.since(0)
    assert sum(s.held.shape[0] for s in held) == sample.held
    assert all(s.held.base is None for s in held)
    assert sum(s.held.nbytes for s in held) == sample.held * 2 * 4  # float32
    for first in (299, 295, 290, 270, 240, 200, 120, 0):
        rows = spread_sample([sample], first, LIMIT, 2)
        taken = np.bincount(rows[:, 0].astype(int), minlength=len(shipments))
        expected = _expected_takes(shipments, first)
        assert {i: int(taken[i]) for i in expected} == expected, first
        assert taken[[i for i in range(len(shipments)) if i not in expected]].sum() == 0
        assert rows.shape[0] == sum(expected.values()) <= LIMIT
        assert len({tuple(row) for row in rows}) == rows.shape[0]  # no row twice


def test_a_long_window_of_busy_seconds_is_a_full_sample_spread_over_all_of_them() -> None:
    sample = WindowSample(LIMIT, np.random.default_rng(3))
    for epoch in range(60):
        for replica in range(4):  # four busy replicas, each shipping 256 of its 5,000 rows
            sample.add(epoch, 5000, _tagged(4 * epoch + replica, 256))
    rows = spread_sample([sample], 0, LIMIT, 2)
    per_second = np.bincount((rows[:, 0] // 4).astype(int), minlength=60)
    assert rows.shape[0] == LIMIT and per_second.min() >= 33 and per_second.max() <= 34
    newest = spread_sample([sample], 58, LIMIT, 2)  # the last two seconds: their rows alone
    assert newest.shape[0] == LIMIT and newest[:, 0].min() >= 4 * 58


def test_a_shipment_gives_a_random_part_of_its_rows_not_its_first_or_last() -> None:
    sample = WindowSample(LIMIT, np.random.default_rng(4))
    for epoch in range(200):
        sample.add(epoch, 256, _tagged(epoch, 256))
    places = spread_sample([sample], 0, LIMIT, 2)[:, 1]  # 10 of each shipment's 256 rows
    assert places.shape[0] == LIMIT
    assert abs(places.mean() - 127.5) < 6  # sd of the mean of 2,000 uniform places: ~1.7
    assert places.min() < 10 and places.max() > 245


def test_ways_of_routing_weigh_as_their_rows_and_an_empty_window_is_empty() -> None:
    randomly, pinned = WindowSample(LIMIT), WindowSample(LIMIT)
    for epoch in range(10):
        randomly.add(epoch, 4000, np.zeros((256, 3)))
        pinned.add(epoch, 40, np.ones((40, 3)))
    rows = spread_sample([randomly, pinned], 0, LIMIT, 3)
    assert rows.shape[0] == LIMIT and rows[:, 0].mean() == pytest.approx(40 / 4040, abs=0.001)
    assert spread_sample([randomly, pinned], 10, LIMIT, 3).shape == (0, 3)
    randomly.forget_before(5)
    assert {s.epoch for s in randomly.since(0)} == set(range(5, 10))


def test_odd_shipments_are_held_within_what_they_counted() -> None:
    sample = WindowSample(LIMIT, np.random.default_rng(5))
    sample.add(0, 0, np.ones((50, 2)))  # rows shipped, none counted: nothing to weigh them by
    sample.add(0, 10, np.ones((50, 2)))  # more shipped than counted: ten of them
    sample.add(0, 10**9, np.ones((10**4, 2)))  # at most LIMIT of one shipment
    assert [s.shipped for s in sample.since(0)] == [10, LIMIT]
    assert sample.since(0)[1].held.dtype == np.float32


def test_three_shipments_give_the_shares_worked_out_by_hand() -> None:
    """Rows 100, 300 and 600, of which 100, 256 and 256 shipped: the largest sample where
    every share fits is 256 * 1,000 / 600 = 426.7 rows, shares 42.7, 128 and 256, rounded
    along the strata (43, 171 and 427 cumulated)."""
    sample = WindowSample(LIMIT, np.random.default_rng(6))
    for index, (rows, shipped) in enumerate(((100, 100), (300, 256), (600, 256))):
        sample.add(index, rows, _tagged(index, shipped))
    taken = spread_sample([sample], 0, LIMIT, 2)
    assert np.bincount(taken[:, 0].astype(int)).tolist() == [43, 128, 256]
    assert spread_sample([sample], 2, LIMIT, 2).shape[0] == 256  # the last alone: all it shipped


def test_a_shipment_claiming_absurd_counts_neither_overflows_nor_stops_the_window() -> None:
    sample = WindowSample(LIMIT, np.random.default_rng(7))
    for index in range(3):
        sample.add(index, 2**70 if index == 1 else 100, _tagged(index, 100))
    taken = spread_sample([sample], 0, LIMIT, 2)
    assert taken.shape[0] > 0 and set(np.unique(taken[:, 0])) <= {0.0, 1.0, 2.0}
