"""Ports chosen for listeners that bind later come from where no outbound connection or
port-0 bind on the machine can take them first."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from modelplane import ports
from modelplane.ports import RAY_WORKER_PORTS, free_ports


def _ephemeral(path: Path) -> range:
    low, high = (int(part) for part in path.read_text().split())
    return range(low, high + 1)


@pytest.mark.skipif(not ports.EPHEMERAL_RANGE_FILE.exists(), reason="Linux names its range")
def test_ports_are_free_distinct_and_outside_the_kernels_and_rays_ranges() -> None:
    ephemeral = _ephemeral(ports.EPHEMERAL_RANGE_FILE)
    chosen = free_ports(9)
    assert len(set(chosen)) == 9
    for port in chosen:
        assert port not in ephemeral and port not in RAY_WORKER_PORTS
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", port))


def test_a_port_something_holds_is_never_chosen(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything but the top five ports is "ephemeral": three of the five are held.
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("20000\t65530\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", range_file)
    with contextlib.ExitStack() as stack:
        held = []
        for port in range(65531, 65536):
            listener = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):  # one something else holds counts as held
                listener.bind(("127.0.0.1", port))
                listener.listen()
            held.append(port)
            if len(held) == 3:
                break
        chosen = free_ports(2, "127.0.0.1")
    assert not set(chosen) & set(held)
    assert len(set(chosen)) == 2


def test_where_the_range_is_unknown_the_kernel_chooses(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", tmp_path / "absent")
    chosen = free_ports(3, "127.0.0.1")
    assert len(set(chosen)) == 3 and all(port > 0 for port in chosen)


def test_the_holder_of_a_taken_port_is_named() -> None:
    """A refusal of a taken port says whom to stop: the listener's program and pid."""
    import os

    from modelplane.ports import port_holder

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_holder(port) is not None and f"(pid {os.getpid()})" in port_holder(port)
    assert port_holder(port) is None
