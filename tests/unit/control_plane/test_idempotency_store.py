"""The kept answers of writes asked again (control_plane.idempotency_store), on SQLite and
PostgreSQL: one call acts per key, the others get its answer, wait for it, or are refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from control_plane.errors import IdempotencyKeyReusedError, RequestInProgressError
from control_plane.idempotency import Reply, fingerprint
from control_plane.idempotency_store import Hold, IdempotencyStore
from control_plane.store import Database
from control_plane.store.models import utcnow

CREATE = fingerprint("POST", "/api/runs", "", b'{"experiment": "e"}')
ANSWER = Reply(201, [["content-type", "application/json"]], b'{"id": "r1"}')


def _held(store: IdempotencyStore, scope: str, key: str, request: str = CREATE) -> Hold:
    hold = store.reserve(scope, key, request)
    assert isinstance(hold, Hold), hold
    return hold


def test_one_call_acts_the_others_wait_for_its_answer_or_get_it(db: Database) -> None:
    store = IdempotencyStore(db)
    hold = _held(store, "alice", "key-0001")
    with pytest.raises(RequestInProgressError) as waiting:
        store.reserve("alice", "key-0001", CREATE)
    assert 1 <= waiting.value.detail["retry_after_s"] <= 2
    store.keep(hold, ANSWER)
    assert store.reserve("alice", "key-0001", CREATE) == ANSWER
    other = fingerprint("POST", "/api/runs", "", b'{"experiment": "f"}')
    with pytest.raises(IdempotencyKeyReusedError, match="another request") as reused:
        store.reserve("alice", "key-0001", other)
    assert reused.value.detail == {"field": "idempotency-key"}
    # Keys are per caller: bob's key-0001 is not alice's.
    _held(store, "bob", "key-0001", other)


def test_a_released_key_acts_again_and_a_late_keep_changes_nothing(db: Database) -> None:
    store = IdempotencyStore(db)
    first = _held(store, "alice", "key-0002")
    store.release(first)
    second = _held(store, "alice", "key-0002")
    store.keep(second, ANSWER)
    store.keep(second, Reply(200, [], b"later"))
    assert store.reserve("alice", "key-0002", CREATE) == ANSWER
    # Releasing an answered key does not forget its answer.
    store.release(second)
    assert store.reserve("alice", "key-0002", CREATE) == ANSWER


def test_a_call_that_outlived_its_hold_cannot_undo_the_one_that_took_over(db: Database) -> None:
    store = IdempotencyStore(db, hold_s=0)
    stale = _held(store, "alice", "key-0003")
    taken = _held(store, "alice", "key-0003")  # the first call's hold ran out
    assert taken.holder != stale.holder
    store.release(stale)  # the first call failed late: the second still holds the key
    store.keep(stale, Reply(500, [], b"stale"))
    store.keep(taken, ANSWER)
    assert store.reserve("alice", "key-0003", CREATE) == ANSWER


def test_answers_are_kept_for_the_window_then_pruned(db: Database) -> None:
    store = IdempotencyStore(db)
    for key in ("key-0004", "key-0005"):
        store.keep(_held(store, "alice", key), ANSWER)
    assert store.prune() == 0
    assert store.prune(utcnow() + timedelta(days=2)) == 2
    _held(store, "alice", "key-0004")
    # Past the window, not yet pruned: a key never seen, whatever it came with before.
    expired = IdempotencyStore(db, window_s=0)
    _held(expired, "alice", "key-0004", fingerprint("DELETE", "/api/runs/r1", "", b""))


def test_past_its_bound_a_caller_s_oldest_answers_go_and_another_caller_s_stay(
        db: Database) -> None:
    store = IdempotencyStore(db, kept_bytes=200)
    big = Reply(201, [], b"x" * 60)
    for n in range(3):
        store.keep(_held(store, "alice", f"key-010{n}"), big)
    assert store.reserve("alice", "key-0100", CREATE) == big  # 180 bytes: within
    store.keep(_held(store, "bob", "key-0100"), big)
    # The fourth goes past: the oldest answers go until the rest fit, the newest is kept.
    store.keep(_held(store, "alice", "key-0103"), Reply(201, [], b"y" * 100))
    assert store.reserve("alice", "key-0103", CREATE) == Reply(201, [], b"y" * 100)
    assert isinstance(store.reserve("alice", "key-0100", CREATE), Hold)  # asked again: acts
    assert isinstance(store.reserve("alice", "key-0101", CREATE), Hold)
    assert store.reserve("alice", "key-0102", CREATE) == big
    assert store.reserve("bob", "key-0100", CREATE) == big  # bob's own bound
