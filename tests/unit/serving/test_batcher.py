"""Dynamic batching: batches fill under load, a full batch never waits, the next batch
gathers the calls sent once one ends for a bounded moment, a failure fails its own batch
alone, and a cancelled call is left out."""

from __future__ import annotations

import asyncio

import pytest

from serving.batcher import DynamicBatcher


class Model:
    """Doubles each item; each batch takes ``seconds`` (off the loop, as a real model runs),
    and, where the test sets a ``gate``, runs until the test opens it: what a test queues
    before opening the gate waits for the next batch however slowly the host runs."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.gate: asyncio.Event | None = None
        self.batches: list[list[int]] = []
        self.started: list[float] = []  # the loop time each batch began
        self.ended: list[float] = []
        self.fail_on: int | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        loop = asyncio.get_running_loop()
        self.batches.append(list(items))
        self.started.append(loop.time())
        await asyncio.sleep(self.seconds)
        if self.gate is not None:
            await self.gate.wait()
        self.ended.append(loop.time())
        if self.fail_on in items:
            raise RuntimeError(f"model failed on {self.fail_on}")
        return [2 * item for item in items]

    async def running(self, batches: int) -> None:
        """Until the model has begun this many batches."""
        while len(self.batches) < batches:
            await asyncio.sleep(0.005)


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - asyncio.get_running_loop().time()))


def test_batches_fill_under_load_and_every_caller_gets_its_own_answer() -> None:
    model = Model(seconds=0.02)
    batcher = DynamicBatcher(model, max_batch_size=32, max_wait_s=0.002)

    async def client(start: int) -> list[tuple[int, int]]:
        return [(item, await batcher(item)) for item in range(start, start + 20)]

    async def main() -> list[list[tuple[int, int]]]:
        return await asyncio.gather(*(client(1000 * c) for c in range(32)))

    answers = [pair for client_answers in asyncio.run(main()) for pair in client_answers]
    assert all(answer == 2 * item for item, answer in answers) and len(answers) == 640
    sizes = [len(batch) for batch in model.batches]
    assert sum(sizes) == 640 and batcher.items == 640 and batcher.batches == len(sizes)
    # Requests that arrive while a batch runs form the next one: full batches, not the
    # trickle of one or two a timeout would close while the model is busy.
    assert max(sizes) == 32
    assert sum(sizes) / len(sizes) > 24, sizes


def test_a_full_batch_starts_at_once_and_a_lone_call_after_the_wait() -> None:
    model = Model()
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=30.0)

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(batcher(i) for i in range(4))), 10)

    assert asyncio.run(main()) == [0, 2, 4, 6]  # not 30 s: the batch was full
    lone = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.01)
    assert asyncio.run(lone(5)) == 10 and model.batches[-1] == [5]


def test_after_a_batch_the_next_gathers_the_requests_its_callers_send_next() -> None:
    # A first batch held 1.2 s: the next one may gather for min(0.3 s, a quarter of 1.2 s)
    # once it ends, so two calls sent as soon as it ends join the call that waited through
    # it (whose own wait ran out meanwhile), even on a host that stalls for a while.
    model = Model()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.3)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        model.gate = asyncio.Event()
        first = asyncio.ensure_future(batcher(1))
        await model.running(1)
        waited = asyncio.ensure_future(batcher(2))  # arrives while the first batch runs
        await _until(model.started[0] + 1.2)
        model.gate.set()
        await first
        assert loop.time() < batcher._gather_until  # the window is still open
        await asyncio.gather(waited, batcher(3), batcher(4))

    asyncio.run(main())
    assert model.batches == [[1], [2, 3, 4]]


def test_the_gathering_lasts_a_quarter_of_the_last_batch_at_most() -> None:
    # The first batch held about 0.6 s and a wait of 0.5 s: a call that waited through it
    # (its own wait ran out meanwhile) goes a quarter of that run (0.15 s) after it ends,
    # not at once and not the whole wait later.
    model = Model()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.5)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        model.gate = asyncio.Event()
        first = asyncio.ensure_future(batcher(1))
        await model.running(1)
        second = asyncio.ensure_future(batcher(2))
        await _until(loop.time() + 0.55)  # past the second call's own wait
        model.gate.set()
        await first
        await second

    asyncio.run(main())
    assert model.batches == [[1], [2]]
    quarter = 0.25 * (model.ended[0] - model.started[0])
    assert model.started[1] - model.ended[0] >= quarter  # the deadline: it cannot come early
    # The window the batcher set: a quarter of its run measured from its side of the call
    # (a host stall there lengthens it), never the whole 0.5 s wait.
    assert batcher._gather_until - model.ended[0] < 0.5


def test_a_failed_batch_fails_its_calls_and_the_next_batch_is_served() -> None:
    model = Model()
    model.fail_on = 3
    batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.01)

    async def main() -> tuple[list[object], int]:
        failed = await asyncio.gather(*(batcher(i) for i in range(4)), return_exceptions=True)
        return failed, await batcher(7)

    failed, after = asyncio.run(main())
    assert all(isinstance(error, RuntimeError) and "failed on 3" in str(error) for error in failed)
    assert after == 14


def test_a_cancelled_call_is_left_out_and_a_wrong_answer_count_is_an_error() -> None:
    model = Model()
    batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.01)

    async def main() -> int:
        model.gate = asyncio.Event()
        first = asyncio.ensure_future(batcher(1))  # runs alone while the next two queue
        await model.running(1)
        cancelled = asyncio.ensure_future(batcher(2))
        kept = asyncio.ensure_future(batcher(3))
        await asyncio.sleep(0)
        cancelled.cancel()
        model.gate.set()
        await first
        return await kept

    assert asyncio.run(main()) == 6
    assert [2] not in model.batches and model.batches[-1] == [3]

    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    lossy = DynamicBatcher(short, max_batch_size=2, max_wait_s=0.01)

    async def both() -> list[object]:
        return await asyncio.gather(lossy(1), lossy(2), return_exceptions=True)

    assert all("got 1 answers" in str(error) for error in asyncio.run(both()))
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(short, max_batch_size=0, max_wait_s=0.0)
