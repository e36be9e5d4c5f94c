"""The kept answers of writes asked again (control_plane.idempotency_store), on SQLite and
PostgreSQL: one call acts per key, the others get its answer, wait for it, or are refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from control_plane.errors import IdempotencyKeyReusedError, RequestInProgressError
from control_plane.idempotency import Reply, fingerprint
from control_plane.idempotency_store import IdempotencyStore
from control_plane.store import Database
from control_plane.store.models import utcnow

CREATE = fingerprint("POST", "/api/runs", "", b'{"experiment": "e"}')
ANSWER = Reply(201, [["content-type", "application/json"]], b'{"id": "r1"}')


def test_one_call_acts_the_others_wait_for_its_answer_or_get_it(db: Database) -> None:
    store = IdempotencyStore(db)
    assert store.reserve("alice", "key-0001", CREATE) is None
    with pytest.raises(RequestInProgressError) as waiting:
        store.reserve("alice", "key-0001", CREATE)
    assert 1 <= waiting.value.detail["retry_after_s"] <= 2
    store.keep("alice", "key-0001", CREATE, ANSWER)
    assert store.reserve("alice", "key-0001", CREATE) == ANSWER
    other = fingerprint("POST", "/api/runs", "", b'{"experiment": "f"}')
    with pytest.raises(IdempotencyKeyReusedError, match="another request") as reused:
        store.reserve("alice", "key-0001", other)
    assert reused.value.detail == {"field": "idempotency-key"}
    # Keys are per caller: bob's key-0001 is not alice's.
    assert store.reserve("bob", "key-0001", other) is None


def test_a_released_key_acts_again_and_a_late_keep_changes_nothing(db: Database) -> None:
    store = IdempotencyStore(db)
    assert store.reserve("alice", "key-0002", CREATE) is None
    store.release("alice", "key-0002", CREATE)
    assert store.reserve("alice", "key-0002", CREATE) is None
    store.keep("alice", "key-0002", CREATE, ANSWER)
    store.keep("alice", "key-0002", CREATE, Reply(200, [], b"later"))
    assert store.reserve("alice", "key-0002", CREATE) == ANSWER
    # Releasing an answered key does not forget its answer.
    store.release("alice", "key-0002", CREATE)
    assert store.reserve("alice", "key-0002", CREATE) == ANSWER


def test_a_key_held_by_a_call_that_never_finished_is_taken_over(db: Database) -> None:
    store = IdempotencyStore(db, hold_s=0)
    assert store.reserve("alice", "key-0003", CREATE) is None
    assert store.reserve("alice", "key-0003", CREATE) is None  # its process died
    store.keep("alice", "key-0003", CREATE, ANSWER)
    assert store.reserve("alice", "key-0003", CREATE) == ANSWER


def test_answers_are_kept_for_the_window_then_pruned(db: Database) -> None:
    store = IdempotencyStore(db)
    for key in ("key-0004", "key-0005"):
        assert store.reserve("alice", key, CREATE) is None
        store.keep("alice", key, CREATE, ANSWER)
    assert store.prune() == 0
    assert store.prune(utcnow() + timedelta(days=2)) == 2
    assert store.reserve("alice", "key-0004", CREATE) is None
    # Past the window, not yet pruned: a key never seen, whatever it came with before.
    expired = IdempotencyStore(db, window_s=0)
    other = fingerprint("DELETE", "/api/runs/r1", "", b"")
    assert expired.reserve("alice", "key-0004", other) is None
