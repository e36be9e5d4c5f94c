"""Request ids are unique and unguessable: feedback names the request it labels, so an id
must not be predictable from the ids a client has seen, nor repeat across replicas."""

from __future__ import annotations

import itertools
import subprocess
import sys

from serving.core import new_request_id


def _first_ids_of_a_fresh_process(count: int) -> list[str]:
    code = f"from serving.core import new_request_id as n; print(' '.join(n() for _ in range({count})))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()


def test_ids_are_128_bit_hex_and_never_repeat() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # Consecutive ids share no structure a client could extrapolate: about half their
    # bits differ, as between independent random values.
    flips = [bin(int(a, 16) ^ int(b, 16)).count("1") for a, b in itertools.pairwise(ids)]
    assert 60 < sum(flips) / len(flips) < 68


def test_two_replicas_draw_different_ids_from_the_same_count() -> None:
    first, second = _first_ids_of_a_fresh_process(50), _first_ids_of_a_fresh_process(50)
    assert len(first) == len(second) == 50
    assert not set(first) & set(second)  # each process keys its ids with its own secret
