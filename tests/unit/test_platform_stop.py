"""`modelplane down` stops the Ray head `up` started, and never a process that took its
pid after a crash or a reboot."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from control_plane.platform import stop_cluster_processes
from modelplane.ports import free_ports
from tests.waiting import wait_for


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("started", [1.0, None], ids=["another-start-time", "old-record"])
def test_a_recorded_head_pid_now_another_process_s_is_left_alone(
        bystander: subprocess.Popen[bytes], started: float | None) -> None:
    stop_cluster_processes(_free_port(), head_pid=bystander.pid, head_started=started,
                           grace_s=0.5)
    assert bystander.poll() is None


def test_the_recorded_head_itself_is_stopped(bystander: subprocess.Popen[bytes]) -> None:
    started = psutil.Process(bystander.pid).create_time()
    stop_cluster_processes(_free_port(), head_pid=bystander.pid, head_started=started,
                           grace_s=5)
    assert bystander.wait(10) is not None


@pytest.mark.parametrize("second", ["up", "down"])
def test_one_up_or_down_of_a_home_at_a_time(tmp_path, second: str) -> None:
    """Two `up`s at once each started a Ray head; `down` then stopped only the recorded one."""
    from control_plane.platform import one_at_a_time, start_platform, stop_platform
    from modelplane.errors import ConfigurationError
    from modelplane.settings import Settings

    settings = Settings.from_env({"MODELPLANE_HOME": str(tmp_path / "home")})
    held = pytest.raises(ConfigurationError, match=r"`modelplane up \(pid \d+\)` is running")
    with one_at_a_time(settings, "up"), held:
        if second == "up":
            start_platform(settings, progress=lambda line: None)
        else:
            stop_platform(settings, progress=lambda line: None)
    with one_at_a_time(settings, second):  # free again once the first is done
        pass


_RELOADING_PROXY = """
import signal, subprocess, sys, time
config = sys.argv[1]
sleep = ["-c", "import time; time.sleep(60)", "-f", config]
first = subprocess.Popen(["haproxy", *sleep], executable=sys.executable)

def reload_and_stop(*_):
    # As Serve's proxy does when it reloads: a new HAProxy taking over from the first.
    subprocess.Popen(["haproxy", *sleep, "-sf", str(first.pid)], executable=sys.executable,
                     start_new_session=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, reload_and_stop)
print(first.pid, flush=True)
time.sleep(60)
"""


def _haproxies(config: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if argv[:1] == ["haproxy"] and config in argv and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def _mentioning(config: str) -> list[tuple[int, str, list[str]]]:
    """Each process whose command line names ``config``: pid, status, argv."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        argv = process.info["cmdline"] or []
        if config in argv:
            found.append((process.pid, process.info["status"], argv))
    return found


def test_an_haproxy_started_by_a_reload_while_stopping_is_stopped_too(tmp_path) -> None:
    """A new HAProxy started after the cluster's processes were listed outlived them and
    kept the HTTP port: the next `modelplane up` stopped, naming the port taken."""
    config = str(tmp_path / "node" / "haproxy.cfg")
    proxy = subprocess.Popen([sys.executable, "-c", _RELOADING_PROXY, config], stdout=subprocess.PIPE)
    try:
        assert proxy.stdout is not None and int(proxy.stdout.readline())
        # A process just started may show no command line yet (seen on a loaded host).
        wait_for(lambda: len(_haproxies(config)) == 1, 15, "the proxy's HAProxy to be listed",
                 seen=lambda: _mentioning(config))
        stop_cluster_processes(_free_port(), head_pid=proxy.pid,
                               head_started=psutil.Process(proxy.pid).create_time(), grace_s=5)
        assert proxy.wait(10) is not None
        assert _haproxies(config) == []
    finally:
        for process in _haproxies(config):
            process.kill()


def test_the_haproxy_of_a_crashed_head_s_node_is_stopped_and_another_node_s_is_not(tmp_path) -> None:
    """A head whose Ray processes were killed (a crash, the OOM killer) leaves Serve's
    HAProxy behind, holding the HTTP port: `down`, and `up` after such a head, stop it by
    its node's folder, and never another node's."""
    sleep = ["-c", "import time; time.sleep(60)", "-f"]
    ours = subprocess.Popen(["haproxy", *sleep, str(tmp_path / "node-a" / "haproxy.cfg")],
                            executable=sys.executable)
    theirs = subprocess.Popen(["haproxy", *sleep, str(tmp_path / "node-b" / "haproxy.cfg")],
                              executable=sys.executable)
    try:
        # A process just started may show no command line yet (seen on a loaded host).
        for node in ("node-a", "node-b"):
            config = str(tmp_path / node / "haproxy.cfg")
            wait_for(lambda config=config: len(_haproxies(config)) == 1, 15,
                     f"{node}'s HAProxy to be listed", seen=lambda config=config: _mentioning(config))
        stop_cluster_processes(_free_port(), node_id="node-a", grace_s=5)
        assert ours.wait(10) is not None
        assert theirs.poll() is None
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait(10)


def test_only_a_head_that_is_gone_is_cleaned_up_after(bystander: subprocess.Popen[bytes]) -> None:
    """`up` stops what a lost head left running only where nothing listens at its address
    and its `ray start` is no more: a GCS that listens but will not be joined (another Ray
    version, another token) is a live cluster, with every endpoint on it."""
    from control_plane.platform import _lost_head

    started = psutil.Process(bystander.pid).create_time()
    quiet = f"127.0.0.1:{_free_port()}"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    assert _lost_head({"address": quiet, "pid": gone.pid, "started": 1.0}, None)
    assert not _lost_head({"address": quiet, "pid": bystander.pid, "started": started}, None)
    assert not _lost_head({"address": quiet, "pid": gone.pid, "started": 1.0}, quiet)
    assert not _lost_head(None, None) and not _lost_head({}, None)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert not _lost_head({"address": address, "pid": gone.pid, "started": 1.0}, None)


def test_a_killed_head_not_yet_reaped_is_gone() -> None:
    """A head killed after `up` exited is reaped by the machine's init, which may take its
    time: until then it is a zombie, and `up` took it for a live head, skipped the clean-up
    and refused the port its orphaned HAProxy held."""
    from control_plane.platform import _lost_head

    head = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(head.pid).create_time()
        quiet = f"127.0.0.1:{_free_port()}"
        assert not _lost_head({"address": quiet, "pid": head.pid, "started": started}, None)
        head.kill()
        wait_for(lambda: psutil.Process(head.pid).status() == psutil.STATUS_ZOMBIE, 10,
                 "the killed head to be a zombie")
        assert _lost_head({"address": quiet, "pid": head.pid, "started": started}, None)
    finally:
        head.kill()
        head.wait(10)


_LISTENER = """
import socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", int(sys.argv[-1])))
listener.listen()
print("listening", flush=True)
time.sleep(60)
"""
# A parent that starts the listener (``argv`` run by the interpreter given) and either exits at once, orphaning it as
# a killed proxy does, or stays, as a live proxy does; prints the listener's pid.
_PARENT = """
import subprocess, sys, time
child = subprocess.Popen(sys.argv[3:], executable=sys.argv[2], stdout=subprocess.PIPE)
assert child.stdout.readline()
print(child.pid, flush=True)
if sys.argv[1] == "stay":
    time.sleep(60)
"""


def _listener(config: str, port: int, *, program: str, parent: str,
              started: list[subprocess.Popen[bytes]]) -> int:
    """A stand-in process named ``program`` with the configuration ``config``, listening
    on ``port``, started by a parent named ``parent`` that exits ("gone") or stays (kept in
    ``started``); the listener's pid."""
    argv = [program, "-c", _LISTENER, "-f", config, str(port)]
    stays = parent != "gone"
    starter = subprocess.Popen([parent if stays else "python", "-c", _PARENT,
                                "stay" if stays else "exit", sys.executable, *argv],
                               executable=sys.executable, stdout=subprocess.PIPE)
    started.append(starter)
    assert starter.stdout is not None
    return int(starter.stdout.readline())


def test_an_orphaned_haproxy_on_the_platform_s_port_is_stopped_and_nothing_else(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crashed head's HAProxy that its node's folder did not name still held the HTTP
    port, and `up` after the crash refused the port. An orphaned Serve HAProxy (its
    configuration in Serve's per-node folder) on one of the platform's ports is stopped;
    one whose proxy lives, one on another port, another HAProxy and a program that is not
    HAProxy are left alone."""
    from control_plane.platform import stop_orphaned_ingress

    serve_folder = tmp_path / "haproxy-serve"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(serve_folder / "haproxy.cfg"))
    serve_config = str(serve_folder / "node-x" / "haproxy.cfg")
    # Outside the ephemeral range: another test's outbound connection cannot take one
    # before its listener binds it.
    ports = free_ports(5, "127.0.0.1")
    started: list[subprocess.Popen[bytes]] = []
    listeners: list[int] = []
    try:
        for port, program, parent, config in [
                (ports[0], "haproxy", "gone", serve_config),
                (ports[1], "haproxy", "ray::ProxyActor", serve_config),
                (ports[2], "haproxy", "gone", serve_config),  # not the platform's port
                (ports[3], "nginx", "gone", serve_config),
                (ports[4], "haproxy", "gone", str(tmp_path / "own" / "haproxy.cfg"))]:
            listeners.append(_listener(config, port, program=program, parent=parent,
                                       started=started))
        stopped = stop_orphaned_ingress("127.0.0.1", [ports[0], ports[1], ports[3], ports[4]],
                                        grace_s=5)
        assert stopped == [f"haproxy (pid {listeners[0]})"]
        assert not psutil.pid_exists(listeners[0]) or \
            psutil.Process(listeners[0]).status() == psutil.STATUS_ZOMBIE
        assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in listeners[1:])
    finally:
        for pid in listeners:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        for starter in started:
            starter.kill()
            starter.wait(10)


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_head_s_members_that_heed_sigterm_get_their_grace_and_the_deaf_are_not_waited_for(
        tmp_path) -> None:
    """A member that acts on SIGTERM ends as it chooses within the grace, however long it
    takes to flush; Ray's processes that ignore it (the head's `ray start --block`, and
    here one titled as Serve's controller is) are killed once the others have ended rather
    than after the whole grace."""
    flushed = tmp_path / "flushed"
    heeding = ("import signal, sys, time, pathlib\n"
               "def done(*_):\n"
               "    time.sleep(2.5)\n"
               f"    pathlib.Path({str(flushed)!r}).write_text('yes')\n"
               "    sys.exit(0)\n"
               "signal.signal(signal.SIGTERM, done)\n"
               "print('ready', flush=True)\n"
               "time.sleep(600)\n")
    deaf = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    # The head ignores SIGTERM too, and starts one member of each kind as its children,
    # the deaf one under the process title of Serve's controller.
    head_code = ("import signal, subprocess, sys\n"
                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                 "kids = [subprocess.Popen([title, '-c', c], executable=sys.executable,"
                 " stdout=subprocess.PIPE)\n"
                 f"        for title, c in (('python', {heeding!r}),"
                 f" ('ray::ServeController', {deaf!r}))]\n"
                 "for kid in kids: kid.stdout.readline()\n"
                 "print(' '.join(str(kid.pid) for kid in kids), flush=True)\n"
                 "[kid.wait() for kid in kids]\n")
    head = subprocess.Popen([sys.executable, "-c", head_code], stdout=subprocess.PIPE)
    try:
        assert head.stdout is not None
        heeding_pid, deaf_pid = (psutil.Process(int(pid)) for pid in head.stdout.readline().split())
        began = time.monotonic()
        stop_cluster_processes(_free_port(), head_pid=head.pid,
                               head_started=psutil.Process(head.pid).create_time(), grace_s=120)
        took = time.monotonic() - began
        assert flushed.read_text() == "yes"  # it ended on its own, flushed, after 2.5 s
        assert head.wait(10) == -9  # killed: it never heeded
        assert wait_for(lambda: all(map(_ended, (heeding_pid, deaf_pid))), 10, "the members to end")
        assert took < 60, took  # the grace (120 s) was not waited out for the deaf ones
    finally:
        head.kill()
        head.wait(10)


@pytest.mark.parametrize(("argv", "deaf"), [
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server", "--log_dir=x"], True),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "--node-ip=x"], True),
    (["/venv/bin/python", "-u", "/venv/lib/python3.11/site-packages/ray/_private/log_monitor.py"], True),
    (["/venv/bin/python", "-u", "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py"],
     True),
    (["ray::ServeController  "], True),
    (["ray::ServeController.listen_for_change"], True),  # the title while a call runs
    (["ray::ProxyActor"], True),
    (["ray::ServeReplica:iris:model-v1"], False),  # our replicas heed it and may flush
    (["ray::MonitorActor"], False),
    (["ray::"], False),
    (["python", "monitor.py", "--raylet"], False),  # a job's own script is no Ray monitor
    (["python", "-m", "training.job", "--config", "raylet"], False),
    ([], False),
])
def test_only_rays_own_processes_that_ignore_sigterm_are_not_waited_for(
        argv: list[str], deaf: bool) -> None:
    from control_plane.platform import _deaf_to_sigterm

    class Listed:
        def cmdline(self) -> list[str]:
            return argv

    assert _deaf_to_sigterm(Listed()) is deaf
