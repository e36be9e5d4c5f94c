"""The driver's word that it is alive: said at once, then every beat, until stopped, and
through a control plane that cannot hear it."""

from __future__ import annotations

import threading

from tests.waiting import wait_for
from training.alive import AliveSignal


def test_the_driver_says_it_is_alive_until_stopped_whatever_the_answers() -> None:
    said: list[int] = []
    heard = threading.Event()

    def say() -> None:
        said.append(1)
        if len(said) == 2:
            raise ConnectionError("cannot reach the control plane")  # tried again next beat
        if len(said) >= 4:
            heard.set()

    signal = AliveSignal(say, every_s=0.01).start()
    wait_for(heard.is_set, 10, "four beats")
    signal.stop()
    beats = len(said)
    assert signal.failures == 1 and beats >= 4
    threading.Event().wait(0.05)
    assert len(said) == beats  # none after the stop
