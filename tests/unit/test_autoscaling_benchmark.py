"""The autoscaling benchmark's bookkeeping: the stepped load's shape and what is read off
the replica samples (the figures in benchmarks/results/autoscaling.md come from these)."""

from __future__ import annotations

from benchmarks.autoscaling import _scaling_times
from benchmarks.load_steps import parse_steps, users_at


def test_steps_are_users_and_seconds_in_order() -> None:
    steps = parse_steps("2:10,8:10,0:5.5")
    assert steps == [(2, 10.0), (8, 10.0), (0, 5.5)]
    assert [users_at(steps, t) for t in (0, 9.9, 10, 19.9, 20, 25.4, 25.5)] == [
        2, 2, 8, 8, 0, 0, None]


def test_scaling_times_are_read_per_step_and_after_the_load() -> None:
    samples = [(0.5, 1), (5.0, 1), (12.0, 2), (14.0, 3), (19.0, 3), (22.0, 3), (27.0, 2),
               (31.0, 1), (33.0, 1)]
    times = _scaling_times("2:10,8:15,0:10", samples)
    assert times["per_step"] == [
        {"users": 2, "seconds": 10.0, "most_replicas": 1, "reached_after_s": 0.5},
        {"users": 8, "seconds": 15.0, "most_replicas": 3, "reached_after_s": 4.0},
        {"users": 0, "seconds": 10.0, "most_replicas": 2, "reached_after_s": 2.0}]
    assert times["back_to_one_after_s"] == 6.0  # the load stopped at 25 s, one replica at 31 s
