"""The replica server's backlog: requests read and not yet begun, which a model backend
reads to choose between running a cheap call inline and handing it to a thread."""

from __future__ import annotations


class Backlog:
    """Requests the replica's server has read and not yet begun to answer, counted by the
    lean ingress (``counted``). A cheap call runs inline only while none waits: alone it
    saves the thread hop's latency, but under load the hop lets the loop read and answer
    requests in bursts, which measured faster than answering each one inline."""

    __slots__ = ("counted", "waiting")

    def __init__(self) -> None:
        self.counted = False
        self.waiting = 0

    @property
    def idle(self) -> bool:
        return self.counted and self.waiting <= 0
