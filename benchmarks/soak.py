"""Soak: mixed traffic, rollouts starting and ending, and random kills, for minutes on end.

    python -m benchmarks.soak [--minutes 10] [--seed 1]

On a local Ray + Serve with the whole platform (loopback only), for ``--minutes``:

- two endpoints serve under a steady background load: ``soak-a`` (colocated, two
  replicas) and ``soak-b`` (isolated, two replicas of each version);
- every 20-40 s a rollout starts on one of them with a newly registered version: most are
  healthy and are promoted, about one in three fails on a quarter of its inputs and must be
  rolled back;
- every 30-60 s one part is SIGKILLed at random: a replica of either endpoint, the
  Monitor, or the control plane's replica (Ray and Serve restart each).

Reported: requests, failures with their causes, whether each failure is attributable (a
broken candidate's own answer during its canary, or a request within the recovery window
of a kill of one of its endpoint's replicas; the Monitor and the control plane are off the
request path, so nothing is excused by their kills), and the resident memory of every platform process at
the start and at the end, with the bound that growth must stay under.
Target: at most 0.1% of requests failed, all attributable; no process grew past the bound.
Results: benchmarks/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
RECOVERY_WINDOW_S = 15.0
# A process may grow by this much over the soak (caches warming, a longer history) and no more.
MEMORY_BOUND = {"ratio": 1.5, "plus_mb": 64}
ENDPOINTS = {"soak-a": "colocated", "soak-b": "isolated"}
BAD_FAIL_ABOVE = 0.67  # the broken candidate fails on rows whose first feature exceeds this


@dataclass
class Kill:
    at: float
    part: str  # "replica:<endpoint>", "monitor", "control-plane"
    pid: int


@dataclass
class Story:
    kills: list[Kill] = field(default_factory=list)
    # (endpoint, version, canary start, canary end) of each broken candidate
    bad_canaries: list[tuple[str, int, float, float]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)


def processes() -> dict[int, str]:
    """PID → title of every process of the Ray this soak started (its own descendants only:
    other Rays on the machine are none of its business)."""
    from tests.processes import descendants, title

    found = {}
    for pid in descendants(os.getpid()):
        name = title(pid)
        if name and (name.startswith("ray::") or name.endswith(("raylet", "gcs_server"))):
            found[pid] = name
    return found


def memory_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_by_role() -> dict[str, float]:
    """Resident MB per role (a replica's app and deployment, the Monitor, raylet …), summed."""
    roles: Counter[str] = Counter()
    for pid, title in processes().items():
        role = re.sub(r"\.[a-z_]+$", "", title)  # drop the method a worker is running now
        if role == "ray::IDLE":  # Ray's pool of spare workers: its size varies, nothing leaks
            continue
        roles[role.rsplit("/", 1)[-1]] += memory_mb(pid)
    return dict(roles)


def pick_victim(rng: random.Random) -> tuple[str, int] | None:
    from serving.names import endpoint_app_name

    titles = processes()
    candidates: list[tuple[str, int]] = []
    for pid, title in titles.items():
        for endpoint in ENDPOINTS:
            app = re.escape(endpoint_app_name(endpoint))
            if re.match(rf"^ray::ServeReplica:{app}(-v\d+)?:", title):  # its own or a version's
                candidates.append((f"replica:{endpoint}", pid))
        if title.startswith("ray::MonitorActor"):
            candidates.append(("monitor", pid))
        if title.startswith("ray::ServeReplica:control-plane:"):
            candidates.append(("control-plane", pid))
    return rng.choice(candidates) if candidates else None


def attributable(answer: Any, endpoint: str, story: Story) -> str | None:
    """Why a failure is expected, or None when nothing explains it."""
    for name, version, start, end in story.bad_canaries:
        if name == endpoint and answer.version == version and start <= answer.at <= end + 2:
            return "broken candidate's own answer"
    for kill in story.kills:
        # Only the endpoint's own replicas are on a request's path: the Monitor and the
        # control plane are not, so a failure near their kills is not explained by them.
        on_path = kill.part == f"replica:{endpoint}"
        if on_path and kill.at <= answer.at <= kill.at + RECOVERY_WINDOW_S:
            return f"within {RECOVERY_WINDOW_S:.0f} s of a {kill.part} kill"
    return None


def run(minutes: float, seed: int) -> dict[str, Any]:
    from tests.load import BackgroundLoad
    from tests.onnx_models import flaky_classifier, linear_classifier, linear_classifier_manifest

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="mpsoak"))
    platform = _start_platform(root)
    story = Story()
    versions = dict.fromkeys(ENDPOINTS, 1)
    client = platform.client()
    for endpoint, placement in ENDPOINTS.items():
        client.register_version(endpoint, linear_classifier(seed=1), linear_classifier_manifest())
        client.deploy(endpoint, f"{endpoint}:1", placement=placement,
                      scaling={"num_cpus": 0.05, "replicas": 2})
        platform.wait_endpoint(endpoint, {1}, timeout=300)
    loads = {e: BackgroundLoad(platform.url, e, workers=2, seed=i, timeout_s=30).__enter__()
             for i, e in enumerate(ENDPOINTS)}
    time.sleep(10)  # warm: the memory baseline is of a platform that has served
    memory_start = memory_by_role()
    load_start = os.getloadavg()
    started = time.monotonic()
    deadline = started + minutes * 60
    next_rollout = started + rng.uniform(5, 15)
    next_kill = started + rng.uniform(20, 40)
    active: dict[str, tuple[int, int, bool, float]] = {}  # endpoint → (rollout id, version, bad, start)
    while time.monotonic() < deadline:
        now = time.monotonic()
        for endpoint, (rollout_id, version, bad, start) in list(active.items()):
            try:
                rollout = client.get_rollout(rollout_id)
            except Exception:  # the control plane may be restarting
                continue
            if rollout.state.terminal:
                del active[endpoint]
                if bad:
                    story.bad_canaries.append((endpoint, version, start, time.monotonic()))
                story.rollouts.append({"endpoint": endpoint, "version": version, "broken": bad,
                                       "state": rollout.state.value, "reason": rollout.reason})
        if now >= next_rollout:
            next_rollout = now + rng.uniform(20, 40)
            endpoint = rng.choice([e for e in ENDPOINTS if e not in active] or [None])
            if endpoint is not None:
                bad = rng.random() < 1 / 3
                model = (flaky_classifier(BAD_FAIL_ABOVE, seed=versions[endpoint] + 1) if bad
                         else linear_classifier(seed=versions[endpoint] + 1))
                try:
                    version = client.register_version(endpoint, model,
                                                      linear_classifier_manifest()).version
                    rollout = client.start_rollout({
                        "endpoint": endpoint, "model_ref": f"{endpoint}:{version}",
                        "steps": [50, 100], "step_duration_s": 5, "drain_s": 2,
                        "analysis": {"interval_s": 1, "window_s": 3, "min_samples": 15,
                                     "failures_to_rollback": 2, "max_p95_ratio": None,
                                     "max_p95_ms": 5000}})
                    active[endpoint] = (rollout.id, version, bad, time.monotonic())
                    versions[endpoint] = version
                except Exception as error:  # the control plane may be restarting
                    print(f"rollout on {endpoint} not started: {error}")
        if now >= next_kill:
            next_kill = now + rng.uniform(30, 60)
            victim = pick_victim(rng)
            if victim is not None:
                part, pid = victim
                with contextlib.suppress(Exception):  # already gone, or the control plane restarting
                    os.kill(pid, signal.SIGKILL)
                story.kills.append(Kill(time.monotonic(), part, pid))
                print(f"{time.monotonic() - started:6.1f} s: killed {part} (pid {pid})")
        time.sleep(0.5)
    for rollout_id, *_ in active.values():
        with contextlib.suppress(Exception):  # already gone, or the control plane restarting
            client.rollout_action(rollout_id, "abort", "soak finished")
    time.sleep(5)
    memory_end = memory_by_role()
    for load in loads.values():
        load.stop()
    result = _summarise(minutes, seed, story, loads, memory_start, memory_end)
    result["machine_load"] = {"start": load_start, "end": os.getloadavg(), "cores": os.cpu_count()}
    return result


def _summarise(minutes: float, seed: int, story: Story, loads: dict[str, Any],
               memory_start: dict[str, float], memory_end: dict[str, float]) -> dict[str, Any]:
    requests = sum(len(load.answers) for load in loads.values())
    failures: list[dict[str, Any]] = []
    for endpoint, load in loads.items():
        for answer in load.failures():
            failures.append({"endpoint": endpoint, "status": answer.status,
                             "version": answer.version, "error": (answer.error or "")[:120],
                             "explained_by": attributable(answer, endpoint, story)})
    unexplained = [f for f in failures if f["explained_by"] is None]
    bad_own = sum(1 for f in failures if f["explained_by"] == "broken candidate's own answer")
    memory = []
    for role in sorted(set(memory_start) | set(memory_end)):
        before, after = memory_start.get(role, 0.0), memory_end.get(role, 0.0)
        bound = before * MEMORY_BOUND["ratio"] + MEMORY_BOUND["plus_mb"]
        # Roles that came (a new version's replicas) or went have no growth to judge.
        memory.append({"role": role, "start_mb": round(before, 1), "end_mb": round(after, 1),
                       "bound_mb": round(bound, 1),
                       "within": before == 0 or after == 0 or after <= bound})
    failed_other = len(failures) - bad_own
    return {
        "minutes": minutes, "seed": seed, "requests": requests,
        "failed": len(failures), "failed_broken_candidates_own": bad_own,
        "failed_other": failed_other,
        "failed_other_rate": failed_other / requests if requests else float("nan"),
        "unexplained": len(unexplained),
        "causes": dict(Counter(f["error"][:60] for f in failures).most_common(10)),
        "kills": [{"at_s": round(k.at, 1), "part": k.part} for k in story.kills],
        "rollouts": story.rollouts,
        "memory": memory,
        "target_met": (requests > 0 and failed_other / requests <= 0.001 and not unexplained
                       and all(m["within"] for m in memory)),
        "unexplained_examples": unexplained[:10],
    }


def _start_platform(root: Path) -> Any:
    import ray
    from ray import serve

    from tests.conftest import free_port
    from tests.platform import start_platform_on_session

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=str(root / "ray"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return start_platform_on_session(port, root / "home")


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Soak", "",
        f"{result['minutes']:g} minutes on this machine (2 cores, loopback only), seed "
        f"{result['seed']}: two endpoints under steady load, a rollout every 20-40 s (a third of "
        "them broken on purpose), a random SIGKILL every 30-60 s (a replica, the Monitor or the "
        "control plane's replica).", "",
        "| figure | value |", "|---|---|",
        f"| requests | {result['requests']} |",
        f"| failed, broken candidates' own answers during their canary | "
        f"{result['failed_broken_candidates_own']} |",
        f"| failed, other | {result['failed_other']} ({result['failed_other_rate']:.4%}) |",
        f"| failures nothing explains | {result['unexplained']} |",
        f"| kills | {len(result['kills'])}: "
        f"{', '.join(sorted(Counter(k['part'] for k in result['kills'])))} |",
        f"| rollouts ended | {len(result['rollouts'])}: "
        f"{dict(Counter((r['broken'], r['state']) for r in result['rollouts']))} "
        "(broken?, state) |",
        f"| machine load (1/5/15 min) at start, end | {result['machine_load']['start']}, "
        f"{result['machine_load']['end']} on {result['machine_load']['cores']} cores |",
        f"| target (≤ 0.1% other failures, all explained, memory within bound) | "
        f"{'met' if result['target_met'] else 'NOT met'} |", "",
        "Failure causes: " + (", ".join(f"{k!r}: {v}" for k, v in result["causes"].items())
                              or "none"), "",
        f"Memory per role (resident MB, summed over processes; bound: start x "
        f"{MEMORY_BOUND['ratio']} + {MEMORY_BOUND['plus_mb']} MB):", "",
        "| role | start | end | bound | within |", "|---|---|---|---|---|",
    ]
    for row in result["memory"]:
        lines.append(f"| `{row['role']}` | {row['start_mb']} | {row['end_mb']} | "
                     f"{row['bound_mb']} | {'yes' if row['within'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run(args.minutes, args.seed)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "soak.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
