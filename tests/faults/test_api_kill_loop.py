"""kill -9 of the API process, again and again, in the middle of writes.

Each round starts an API process on the same store, sends a burst of writes (version
registrations with their uploads, bare artifact uploads, alias moves, metric logging) and
kills the process at a random moment. Afterwards every acknowledged write is present,
version numbers are gapless, and the integrity check finds no problem.

``MODELPLANE_FAULT_KILLS`` sets the number of rounds (200 by default).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from control_plane.client import Client
from control_plane.errors import ControlPlaneError
from tests.onnx_models import linear_classifier, linear_classifier_manifest
from tests.servers import ForkedControlPlane

pytestmark = pytest.mark.no_ray

ROUNDS = int(os.environ.get("MODELPLANE_FAULT_KILLS", "200"))
MODEL = "kill-loop"


@dataclass
class Ledger:
    """What the server acknowledged, and every alias move attempted (acknowledged or not)."""

    versions: dict[int, str] = field(default_factory=dict)
    uploads: set[str] = field(default_factory=set)
    metric_steps: set[int] = field(default_factory=set)
    alias_attempts: list[tuple[int, bool]] = field(default_factory=list)
    unacknowledged: int = 0

    def holds_every_kind(self) -> bool:
        """Whether some write of every kind was acknowledged (the first version aside)."""
        return bool(self.uploads and self.metric_steps and len(self.versions) > 1)


def _writes(client: Client, ledger: Ledger, run_id: str, rng: random.Random,
            stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        counter[0] += 1
        kind = rng.choice(["register", "upload", "alias", "metrics"])
        try:
            if kind == "register":
                payload = linear_classifier(seed=10_000 + counter[0])
                version = client.register_version(MODEL, payload, linear_classifier_manifest())
                ledger.versions[version.version] = version.artifact_digest
            elif kind == "upload":
                ledger.uploads.add(client.upload_artifact(os.urandom(64 * 1024)).digest)
            elif kind == "alias" and ledger.versions:
                target = rng.choice(sorted(ledger.versions))
                ledger.alias_attempts.append((target, False))
                client.set_alias(MODEL, "champion", target)
                ledger.alias_attempts[-1] = (target, True)
            elif kind == "metrics":
                step = counter[0]
                client.log_metrics(run_id, {"loss": 1.0 / step}, step=step)
                ledger.metric_steps.add(step)
        except (httpx.HTTPError, ControlPlaneError):
            # The process died under this call: the write may or may not have landed.
            ledger.unacknowledged += 1
            return


def test_acknowledged_writes_survive_repeated_kill_9(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ForkedControlPlane(home).start()
    token = (home / "admin.token").read_text().strip()
    with Client(server.url, token) as client:
        started = time.monotonic()
        first = client.register_version(MODEL, linear_classifier(seed=1),
                                        linear_classifier_manifest())
        # How long a round runs before its kill, at most: 0.4 s, or twice a registration
        # where one takes longer (a slow or loaded machine: beside the unit tier, 120 rounds
        # of 0.4 s acknowledged no registration, and the loop checked none).
        round_s = max(0.4, 2 * (time.monotonic() - started))
        run_id = client.start_run("kill-loop").id
    ledger = Ledger()
    ledger.versions[first.version] = first.artifact_digest
    rng = random.Random(20261129)
    counter = [0]
    killed_mid_write = rounds = 0
    # Past ROUNDS, up to three times as many and four times as long, until some write of
    # every kind was acknowledged: the check would prove nothing of a kind never written.
    while rounds < ROUNDS or (not ledger.holds_every_kind() and rounds < 3 * ROUNDS):
        rounds += 1
        server.kill()
        server.start()
        stop = threading.Event()
        with Client(server.url, token, timeout=10) as client:
            worker = threading.Thread(target=_writes,
                                      args=(client, ledger, run_id, rng, stop, counter))
            before = ledger.unacknowledged
            worker.start()
            time.sleep(rng.uniform(0.02, round_s * (1 if rounds <= ROUNDS else 4)))
            server.kill()
            stop.set()
            worker.join(30)
            assert not worker.is_alive(), "a write hung after its server was killed"
            killed_mid_write += ledger.unacknowledged - before
    server.kill()

    # A last, clean start: everything acknowledged is there.
    final = ForkedControlPlane(home).start()
    try:
        with Client(final.url, token) as client:
            stored: dict[int, str] = {}
            while len(page := client.list_versions(MODEL, limit=500, offset=len(stored)).items):
                stored.update((v.version, v.artifact_digest) for v in page)
            assert sorted(stored) == list(range(1, max(stored) + 1)), "version numbers have gaps"
            for version, digest in ledger.versions.items():
                assert stored.get(version) == digest, f"acknowledged version {version} is lost"
            for digest in ledger.uploads:
                client.download_artifact(digest, tmp_path / "check")  # verifies the digest
            history = {m.step for m in client.metric_history(run_id, "loss")}
            assert ledger.metric_steps <= history, "acknowledged metrics are lost"
            acked = [i for i, (_, ok) in enumerate(ledger.alias_attempts) if ok]
            if acked:
                allowed = {target for target, _ in ledger.alias_attempts[acked[-1]:]}
                assert client.resolve(f"{MODEL}@champion").version in allowed
        report = httpx.get(f"{final.url}/api/integrity", params={"verify": "true"},
                           headers={"authorization": f"Bearer {token}"}, timeout=60).json()
        assert report["problems"] == [], report["problems"]
    finally:
        final.kill()
    print(f"{rounds} kills, {killed_mid_write} of them during a write; "
          f"{len(ledger.versions)} versions, {len(ledger.uploads)} uploads, "
          f"{len(ledger.metric_steps)} metric steps acknowledged")
    assert killed_mid_write >= ROUNDS // 4, "too few kills landed during a write to prove much"
    assert ledger.holds_every_kind(), \
        "some writes of every kind must have been acknowledged for the check to mean anything"
