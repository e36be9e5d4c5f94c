"""Pipeline data over HTTP: read from public addresses, and from private ones only where
the operator allowed them, with no redirect followed past that check. A real HTTP server on
loopback (a private address, as an internal service is)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from control_plane.errors import InvalidInputError
from control_plane.pipelines.data_sources import check_http_host, load_dataset
from modelplane.errors import ConfigurationError
from modelplane.settings import Settings, private_hosts, reset_settings_cache

TABLE = "a,b,target\n1,2.5,0\n3,4.5,1\n"


class _Data(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/endless.csv"):  # no length: rows for as long as it is read
            self.protocol_version = "HTTP/1.1"  # chunked
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":  # a look before the read: the head alone
                return
            rows = ("a,b,target\n" + "1,2.5,0\n" * 8000).encode()
            try:
                for _ in range(10_000):
                    self.wfile.write(f"{len(rows):x}\r\n".encode() + rows + b"\r\n")
            except OSError:  # the reader stopped
                return
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/moved.csv"):
            self.send_response(302)
            self.send_header("Location", "/table.csv")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = TABLE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def data_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Data)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def allowing(hosts: str) -> None:
        monkeypatch.setenv("MODELPLANE_DATA_PRIVATE_HOSTS", hosts)
        reset_settings_cache()

    monkeypatch.delenv("MODELPLANE_DATA_PRIVATE_HOSTS", raising=False)
    reset_settings_cache()
    yield allowing
    reset_settings_cache()


def test_a_private_host_is_refused_unless_allowed(data_server: str, allow: Any) -> None:
    with pytest.raises(InvalidInputError, match="127.0.0.1, an address that is not public") \
            as refused:
        load_dataset(f"{data_server}/table.csv")
    assert refused.value.detail == {"field": "data"}
    assert "MODELPLANE_DATA_PRIVATE_HOSTS" in refused.value.message
    for allowed in ("127.0.0.0/8", "10.0.0.0/8, 127.0.0.1", "localhost,127.0.0.1"):
        allow(allowed)
        frame = load_dataset(f"{data_server}/table.csv")
        pd.testing.assert_frame_equal(frame, pd.DataFrame(
            {"a": [1, 3], "b": [2.5, 4.5], "target": [0, 1]}))
    # A name the operator allowed is trusted as a name.
    allow("localhost")
    assert len(load_dataset(data_server.replace("127.0.0.1", "localhost") + "/table.csv")) == 2


def test_no_redirect_is_followed(data_server: str, allow: Any) -> None:
    allow("127.0.0.1")
    with pytest.raises(InvalidInputError, match="moved.csv redirects to /table.csv"):
        load_dataset(f"{data_server}/moved.csv")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1",
                                     "169.254.169.254", "100.64.0.1", "0.0.0.0", "[::1]",
                                     "[fe80::1]", "[::ffff:127.0.0.1]", "[fd00::1]"])
def test_every_kind_of_address_that_is_not_public_is_refused(address: str) -> None:
    with pytest.raises(InvalidInputError, match="not public"):
        check_http_host(f"http://{address}/data.csv", (frozenset(), ()))


def test_public_addresses_pass() -> None:
    for address in ("8.8.8.8", "[2001:4860:4860::8888]"):
        check_http_host(f"https://{address}/data.csv", (frozenset(), ()))


def test_the_setting_says_what_it_takes() -> None:
    names, blocks = private_hosts(" data.internal., 10.0.0.0/8 ,::1 ")
    assert names == {"data.internal"} and [str(b) for b in blocks] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigurationError, match="MODELPLANE_DATA_PRIVATE_HOSTS"):
        Settings.from_env({"MODELPLANE_DATA_PRIVATE_HOSTS": "10.0.0.0/8,no good"})


def test_data_past_its_size_limit_is_refused_before_it_fills_the_control_plane(
        data_server: str, allow: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Read whole into the control plane's memory, a file of tens of gigabytes, or an
    answer that never ends, had the control plane killed for memory."""
    monkeypatch.setenv("MODELPLANE_DATA_MAX_MB", "1")
    allow("127.0.0.1")
    with pytest.raises(InvalidInputError, match="goes on past its limit") as refused:
        load_dataset(f"{data_server}/endless.csv")
    assert "MODELPLANE_DATA_MAX_MB" in refused.value.message
    big = tmp_path / "big.csv"
    big.write_text("a,b,target\n" + "1,2.5,0\n" * 200_000)  # 1.6 MB
    with pytest.raises(InvalidInputError, match=r"is 1,600,011 bytes, more than a pipeline reads"):
        load_dataset(str(big))
    assert len(load_dataset(f"{data_server}/table.csv")) == 2
