"""The route board: postings ordered by generation per incarnation, long-polls, and how a
replica folds a posting into the configuration Serve gave it."""

from __future__ import annotations

import asyncio

import pytest

from serving.route_board import MAX_POSTINGS, PostedRoutes, RouteBoard
from serving.schemas import EndpointConfig, RouteTable
from tests.unit.serving.test_core import version_config


def posting(generation: int, weights: dict[int, float], incarnation: str = "i1",
            shadows: tuple[int, ...] = ()) -> PostedRoutes:
    table = RouteTable(weights=weights, shadows=list(shadows))
    return PostedRoutes(incarnation, generation, table.model_dump_json())


def config(generation: int, versions: tuple[int, ...] = (1, 2)) -> EndpointConfig:
    return EndpointConfig(endpoint="iris", versions=[version_config(v) for v in versions],
                          routes=RouteTable(weights={versions[0]: 100}), generation=generation,
                          incarnation="i1")


def test_only_a_newer_generation_replaces_a_posting() -> None:
    board = RouteBoard()
    assert board.post("iris", posting(5, {1: 90, 2: 10}))
    assert not board.post("iris", posting(4, {1: 10, 2: 90}))  # late, older: refused
    assert board.post("iris", posting(5, {1: 90, 2: 10}))  # the same again: fine
    assert board.read("iris", "i1").generation == 5
    assert board.post("iris", posting(1, {1: 100}, incarnation="i2"))  # created again
    assert board.read("iris", "i1").generation == 5 and board.read("iris", "i2").generation == 1


def test_a_waiting_replica_wakes_on_a_newer_posting_only() -> None:
    async def scenario() -> tuple[PostedRoutes | None, PostedRoutes | None, PostedRoutes | None]:
        board = RouteBoard()
        board.post("iris", posting(3, {1: 100}))
        current = await board.wait("iris", "i1", after_generation=2, timeout_s=5)
        waiting = asyncio.ensure_future(board.wait("iris", "i1", after_generation=3, timeout_s=5))
        await asyncio.sleep(0.01)
        board.post("iris", posting(4, {1: 100}, incarnation="other"))  # not this replica's
        board.post("iris", posting(4, {1: 50, 2: 50}))
        woken = await asyncio.wait_for(waiting, 1)
        nothing = await board.wait("iris", "i1", after_generation=4, timeout_s=0.05)
        return current, woken, nothing

    current, woken, nothing = asyncio.run(scenario())
    assert current is not None and current.generation == 3
    assert woken is not None and woken.generation == 4 and woken.incarnation == "i1"
    assert nothing is None


def test_postings_are_bounded_dropping_the_stalest() -> None:
    board = RouteBoard()
    for n in range(MAX_POSTINGS + 5):
        board.post(f"ep{n}", posting(1, {1: 100}))
    board.post("ep0", posting(1, {1: 100}, incarnation="i9"))
    assert board.read("ep0", "i1") is None and board.read(f"ep{MAX_POSTINGS + 4}", "i1")
    assert board.read("ep0", "i9") is not None


def test_a_replica_takes_a_newer_posting_for_its_own_incarnation() -> None:
    newer = posting(8, {1: 20, 2: 80}, shadows=())
    routed = newer.applied_to(config(7))
    assert newer.newer_than(config(7)) and routed is not None
    assert routed.routes.weights == {1: 20.0, 2: 80.0} and routed.generation == 8
    assert routed.versions == config(7).versions  # only the routes move
    assert not newer.newer_than(config(8)) and not newer.newer_than(config(9))
    assert not posting(8, {1: 100}, incarnation="i0").newer_than(config(7))


def test_a_posting_naming_a_version_not_loaded_waits_for_it() -> None:
    ahead = posting(9, {1: 50, 3: 50})
    assert ahead.newer_than(config(7)) and ahead.applied_to(config(7)) is None
    assert ahead.applied_to(config(8, versions=(1, 2, 3))) is not None


@pytest.mark.parametrize("bad", ['{"weights": {"1": -1}}', '{"weights": {"1": 0}}', "not json"])
def test_a_malformed_posting_is_refused_by_the_replica(bad: str) -> None:
    with pytest.raises(ValueError):
        PostedRoutes("i1", 9, bad).applied_to(config(7))


class KeptPostings:
    """A store as Ray's key-value store keeps it: text by key, beyond a board's life."""

    def __init__(self, *, failing: bool = False) -> None:
        self.values: dict[str, str] = {}
        self.failing = failing

    def put(self, key: str, value: str) -> None:
        if self.failing:
            raise ConnectionError("the GCS is away")
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)

    def load(self) -> list[str]:
        if self.failing:
            raise ConnectionError("the GCS is away")
        return list(self.values.values())


def test_a_restarted_board_starts_with_the_postings_it_had(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Started empty, a board sent a replica started meanwhile back to the routes Serve
    last gave it (a version rolled back to 0% since among them) until the control plane
    posted again: never, while it was down."""
    import serving.route_board

    store = KeptPostings()
    board = RouteBoard(store=store)
    board.post("iris", posting(7, {1: 100, 2: 0}))
    board.post("iris", posting(8, {1: 100}))
    board.post("other", posting(3, {1: 100}, incarnation="i9"))
    again = RouteBoard(store=store)
    assert again.read("iris", "i1") == posting(8, {1: 100})
    assert again.read("other", "i9").generation == 3
    assert not again.post("iris", posting(7, {1: 50, 2: 50}))  # still refused as older
    monkeypatch.setattr(serving.route_board, "MAX_POSTINGS", 2)
    again.post("third", posting(1, {1: 100}, incarnation="i3"))  # the oldest goes, there too
    assert RouteBoard(store=store).read("iris", "i1") is None and len(store.values) == 2


def test_a_store_that_fails_costs_the_board_nothing_but_its_memory() -> None:
    board = RouteBoard(store=KeptPostings(failing=True))  # nothing to load: starts empty
    assert board.post("iris", posting(2, {1: 100}))
    assert board.read("iris", "i1").generation == 2
    store = KeptPostings()
    RouteBoard(store=store).post("iris", posting(3, {1: 100}))
    store.values["garbled"] = "{not json"  # a posting that cannot be read is skipped
    store.values["partial"] = '{"endpoint": "x"}'
    assert RouteBoard(store=store).read("iris", "i1").generation == 3


def test_a_restarted_board_drops_the_postings_changed_longest_ago_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import serving.route_board

    store = KeptPostings()
    board = RouteBoard(store=store)
    for at, endpoint in enumerate(("b", "a", "c")):
        board.post(endpoint, posting(1, {1: 100}))
        key = f"{endpoint}/i1"
        store.values[key] = json.dumps({**json.loads(store.values[key]), "posted_at": at})
    store.values = dict(sorted(store.values.items()))  # listed by key, as the GCS lists them
    monkeypatch.setattr(serving.route_board, "MAX_POSTINGS", 3)
    again = RouteBoard(store=store)
    again.post("d", posting(1, {1: 100}))
    assert again.read("b", "i1") is None  # posted first, dropped first
    assert all(again.read(name, "i1") is not None for name in ("a", "c", "d"))
