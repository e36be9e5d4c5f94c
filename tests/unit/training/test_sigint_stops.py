"""Ctrl-C during training is a stop, whatever Ray Train's own SIGINT handler does."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from training import runner


class Trainer:
    """Ray Train's ``fit()`` as it treats SIGINT: its own handler, installed in ``fit()``
    and left behind, aborts the run and exits 0 (``exits``) or lets it return."""

    def __init__(self, *, exits: bool) -> None:
        self.exits = exits

    def _register_sigint_handler(self, controller: Any) -> None:
        def abort(signum: int, frame: Any) -> None:
            if self.exits:
                sys.exit(0)

        signal.signal(signal.SIGINT, abort)

    def fit(self) -> str:
        self._register_sigint_handler(None)
        signal.raise_signal(signal.SIGINT)
        return "an aborted run's result"


@pytest.fixture(autouse=True)
def fresh_flags() -> Iterator[None]:
    before = signal.getsignal(signal.SIGINT)
    runner.STOP_REQUESTED.clear()
    runner.OVERDUE.clear()
    yield
    runner.STOP_REQUESTED.clear()
    runner.OVERDUE.clear()
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("exits", [True, False], ids=["exits-0", "returns"])
def test_ctrl_c_during_fit_is_a_stop_and_leaves_ctrl_c_as_it_was(exits: bool) -> None:
    mine = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        runner.fit_noting_stops(Trainer(exits=exits))
    assert runner.STOP_REQUESTED.is_set()  # so the run ends killed and the job exits 130
    assert signal.getsignal(signal.SIGINT) is mine  # not Train's, which swallows Ctrl-C


@pytest.mark.parametrize("exits", [True, False], ids=["exits-0", "returns"])
def test_a_deadline_s_interrupt_is_not_taken_for_a_stop_nor_for_a_finished_run(
        exits: bool) -> None:
    runner.OVERDUE.append("no epoch was reported for 61 s")
    with pytest.raises(SystemExit if exits else KeyboardInterrupt):
        runner.fit_noting_stops(Trainer(exits=exits))
    assert not runner.STOP_REQUESTED.is_set()  # the run ends failed, with the deadline's reason


def test_a_fit_without_a_signal_returns_its_result() -> None:
    class Quiet(Trainer):
        def fit(self) -> str:
            self._register_sigint_handler(None)
            return "trained"

    mine = signal.getsignal(signal.SIGINT)
    assert runner.fit_noting_stops(Quiet(exits=True)) == "trained"
    assert signal.getsignal(signal.SIGINT) is mine and not runner.STOP_REQUESTED.is_set()
