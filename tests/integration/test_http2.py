"""HTTP/2 at the gateway with real clients: curl (prior knowledge, and ALPN over TLS),
nghttp, h2load and headless Chromium; and the attacks, from a raw h2 client on a
real socket: rapid reset, a window never opened."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes

from tests.harness import Cluster, cluster, wait_for
from tests.integration.test_browser import CHROMIUM, DRIVER, browser
from tests.integration.test_observability import metrics_port, sample, scrape
from tests.integration.test_tls import certificate  # noqa: F401  (a fixture)

APP = "tests.apps.h2_app:app"
CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")

pytestmark = pytest.mark.timeout(90)
needs = {name: pytest.mark.skipif(path is None, reason=f"{name} is not installed "
                                  "(make test installs it)")
         for name, path in (("curl", CURL), ("nghttp", NGHTTP), ("h2load", H2LOAD))}


@pytest.fixture
def h2c() -> Iterator[tuple[Cluster, int]]:
    with cluster() as c:
        port = int(c.gateway("--h2-stall-timeout", "1", "--send-timeout", "1",
                             "--body-timeout", "1").ready["port"])
        c.worker(APP)
        yield c, port


@pytest.fixture
def tls(certificate: tuple[Path, Path]) -> Iterator[int]:  # noqa: F811
    cert, key = certificate
    with cluster() as c:
        port = int(c.gateway("--certfile", str(cert), "--keyfile", str(key)).ready["port"])
        c.worker(APP)
        yield port


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run([CURL, "-sS", "--max-time", "20", *args], capture_output=True,
                          text=True, timeout=30)


@needs["curl"]
def test_curl_with_prior_knowledge(h2c: tuple[Cluster, int], tmp_path: Path) -> None:
    _c, port = h2c
    url = f"http://127.0.0.1:{port}"
    got = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", "-b", "a=1; b=2",
               "-d", "x" * 5000, f"{url}/echo?q=1")
    body, version = got.stdout.rsplit("\n", 1)
    assert version == "2"
    assert json.loads(body) == {"version": "HTTP/2", "method": "POST", "path": "/echo",
                                "query": {"q": "1"}, "host": f"127.0.0.1:{port}",
                                "cookie": "a=1; b=2", "body": 5000}
    head = curl("--http2-prior-knowledge", "-I", f"{url}/echo")
    assert head.stdout.startswith("HTTP/2 200") and "content-length:" in head.stdout
    # A body of many windows, and a stream of parts, arrive whole.
    assert len(curl("--http2-prior-knowledge", f"{url}/big/3000000").stdout) == 3_000_000
    streamed = curl("--http2-prior-knowledge", f"{url}/stream/40").stdout
    assert len(streamed) == 40 * 16384 and streamed.endswith("n" * 16384)
    # A body over --max-body (1 MiB): 413 on its stream.
    (tmp_path / "big").write_bytes(b"b" * 2_000_000)
    assert curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                "--data-binary", f"@{tmp_path / 'big'}", f"{url}/echo").stdout == "413"
    # The same port still speaks HTTP/1.1.
    assert curl("--http1.1", "-w", "%{http_version}", "-o", "/dev/null",
                f"{url}/echo").stdout == "1.1"


@needs["curl"]
def test_curl_over_tls_chooses_http2_by_alpn(tls: int,
                                             certificate: tuple[Path, Path]) -> None:  # noqa: F811
    cert, _ = certificate
    url = f"https://127.0.0.1:{tls}/echo"
    assert curl("--cacert", str(cert), "--http2", "-w", "%{http_version}", "-o", "/dev/null",
                url).stdout == "2"
    assert curl("--cacert", str(cert), "--http1.1", "-w", "%{http_version}", "-o",
                "/dev/null", url).stdout == "1.1"


@needs["curl"]
def test_asgi_apps_see_version_2(certificate: tuple[Path, Path]) -> None:  # noqa: F811
    with cluster() as c:
        port = int(c.gateway().ready["port"])
        c.worker("tests.apps.h2_app:asgi")
        assert curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/").stdout == "2"


@needs["nghttp"]
def test_nghttp_fetches_many_streams_on_one_connection(h2c: tuple[Cluster, int]) -> None:
    _c, port = h2c
    assert NGHTTP is not None
    urls = [f"http://127.0.0.1:{port}/big/{n}" for n in (1, 70_000, 1_000_000)] + \
        [f"http://127.0.0.1:{port}/echo?i={i}" for i in range(20)]
    got = subprocess.run([NGHTTP, "-nv", *urls], capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout.count(":status: 200") == len(urls)
    assert "END_STREAM" in got.stdout and "recv GOAWAY" not in got.stdout


@needs["h2load"]
def test_h2load_has_no_failed_request(h2c: tuple[Cluster, int]) -> None:
    _c, port = h2c
    assert H2LOAD is not None
    got = subprocess.run([H2LOAD, "-n", "3000", "-c", "10", "-m", "10",
                          f"http://127.0.0.1:{port}/echo"], capture_output=True, text=True,
                         timeout=60)
    assert "3000 succeeded, 0 failed, 0 errored, 0 timeout" in got.stdout, got.stdout


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="chromium and chromium-driver are not installed")
def test_chromium_loads_a_page_over_http2(tls: int, request: pytest.FixtureRequest) -> None:
    with browser("h2", request, "--ignore-certificate-errors") as driver:
        driver.get(f"https://127.0.0.1:{tls}/echo")
        protocol = driver.execute_script(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2"
        assert json.loads(driver.find_element("tag name", "body").text)["version"] == "HTTP/2"


# -- attacks, from a raw h2 client --------------------------------------------------------

class RawClient:
    """An h2 client on a real socket, driven by hand (closed by the test's `with`)."""

    def __init__(self, port: int, rcvbuf: int = 0, **settings: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connecting: the window TCP offers is set then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings({getattr(SettingCodes, k): v for k, v in settings.items()})
        self.port = port
        self.flush()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"GET"), (b":path", path.encode()),
                                   (b":scheme", b"http"),
                                   (b":authority", f"127.0.0.1:{self.port}".encode())],
                             end_stream=True)
        return sid

    def events_until(self, done: Any, timeout: float = 10) -> list[Any]:
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                break
            seen += self.h2.receive_data(data)
            self.flush()
        return seen


def test_rapid_reset_costs_no_worker_more_than_the_stream_limit_and_gets_goaway(
        h2c: tuple[Cluster, int]) -> None:
    _c, port = h2c
    with RawClient(port) as client:
        client.events_until(lambda seen: bool(seen))  # the server's SETTINGS
        for _ in range(400):
            sid = client.get("/slow")
            client.h2.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        seen = client.events_until(lambda seen: any(isinstance(e, ConnectionTerminated)
                                                    for e in seen))
        goaway = [e for e in seen if isinstance(e, ConnectionTerminated)]
        assert goaway and goaway[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
        started = int(curl("--http2-prior-knowledge",
                           f"http://127.0.0.1:{port}/slow-started").stdout)
        assert started <= 100, f"{started} reset requests ran at the worker"
    gateway = next(p for p in _c.procs if p.role == "gateway")
    assert "rapid reset" in gateway.wait_log("GOAWAY")
    assert sample(scrape(metrics_port(gateway.ready)), "cluster_gateway_http2_abusive_total") == 1


def test_a_window_never_opened_resets_the_stream_after_the_stall_timeout(
        h2c: tuple[Cluster, int]) -> None:
    _c, port = h2c
    with RawClient(port, INITIAL_WINDOW_SIZE=0) as client:
        sid = client.get("/big/100000")
        client.flush()
        began = time.monotonic()
        seen = client.events_until(lambda seen: any(isinstance(e, StreamReset) for e in seen))
        reset = [e for e in seen if isinstance(e, StreamReset)]
        assert reset and reset[0].stream_id == sid and reset[0].error_code == ErrorCodes.CANCEL
        assert not any(isinstance(e, DataReceived) and e.data for e in seen)
        assert 0.9 < time.monotonic() - began < 5
        gateway = next(p for p in _c.procs if p.role == "gateway")
        assert sample(scrape(metrics_port(gateway.ready)),
                      "cluster_gateway_http2_stalls_total") == 1
        # The connection itself goes on.
        other = client.get("/echo")
        client.h2.increment_flow_control_window(1_000_000, None)
        client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        client.flush()
        ended = client.events_until(lambda seen: any(isinstance(e, StreamEnded)
                                                     and e.stream_id == other for e in seen))
        assert any(isinstance(e, StreamEnded) for e in ended)


def test_a_continuation_flood_is_answered_with_goaway_and_costs_nothing_else(
        h2c: tuple[Cluster, int]) -> None:
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    _c, port = h2c
    with RawClient(port) as client:
        flood = HeadersFrame(1, data=b"").serialize() + \
            ContinuationFrame(1, data=b"").serialize() * 10_000
        client.sock.sendall(flood)
        seen = client.events_until(lambda seen: any(isinstance(e, ConnectionTerminated)
                                                    for e in seen))
        assert [e.error_code for e in seen if isinstance(e, ConnectionTerminated)] == \
            [ErrorCodes.PROTOCOL_ERROR]
        assert curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/echo").stdout


def test_http2_can_be_turned_off(certificate: tuple[Path, Path]) -> None:  # noqa: F811
    with cluster() as c:
        port = int(c.gateway("--http2", "false").ready["port"])
        c.worker(APP)
        got = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/echo")
        assert got.returncode != 0
        wait_for(lambda: curl("--http1.1", f"http://127.0.0.1:{port}/echo").stdout, 5,
                 "HTTP/1.1 still served")


@needs["curl"]
def test_static_files_over_http2(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_bytes(b"<p>static</p>" * 20_000)
    with cluster() as c:
        port = int(c.gateway("--static", f"/files={tmp_path}").ready["port"])
        c.worker(APP)
        url = f"http://127.0.0.1:{port}/files/page.html"
        got = curl("--http2-prior-knowledge", "-D", "-", url)
        assert got.stdout.startswith("HTTP/2 200")
        assert got.stdout.endswith("<p>static</p>" * 20_000)
        assert curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://127.0.0.1:{port}/files/missing").stdout == "404"


def test_a_static_name_the_file_system_refuses_costs_only_its_stream(
        tmp_path: Path) -> None:
    """"File name too long" used to escape as a fatal error: the connection died, and
    with it another stream's download (behind a proxy, another user's)."""
    (tmp_path / "big.bin").write_bytes(b"b" * 3_000_000)
    with cluster() as c:
        port = int(c.gateway("--static", f"/files={tmp_path}").ready["port"])
        c.worker(APP)
        gateway = next(p for p in c.procs if p.role == "gateway")
        with RawClient(port) as client:
            # Windows wide open: the download needs no acknowledgements as it comes.
            client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
            client.h2.increment_flow_control_window(2**31 - 1 - 65535)
            download = client.get("/files/big.bin")
            client.flush()
            first = client.events_until(lambda seen: any(isinstance(e, DataReceived)
                                                         for e in seen))  # under way
            long_name = client.get("/files/" + "n" * 256)
            client.flush()

            def both_ended(seen: list[Any]) -> bool:
                return {e.stream_id for e in seen if isinstance(e, StreamEnded)} >= \
                    {download, long_name}

            seen = first + client.events_until(both_ended, timeout=30)
            heads = {e.stream_id: dict(e.headers)[b":status"] for e in seen
                     if isinstance(e, ResponseReceived)}
            assert heads[long_name] == b"404"
            assert not any(isinstance(e, (ConnectionTerminated, StreamReset)) for e in seen)
            assert sum(len(e.data) for e in seen if isinstance(e, DataReceived) and
                       e.stream_id == download) == 3_000_000  # the other download, whole
        assert "Traceback" not in gateway.log()
        assert "File name too long; 404" in gateway.log()


def test_sigterm_answers_streams_under_way_and_refuses_new_ones(
        h2c: tuple[Cluster, int]) -> None:
    c, port = h2c
    gateway = next(p for p in c.procs if p.role == "gateway")
    with RawClient(port) as client:
        client.events_until(lambda seen: bool(seen))
        first = client.get("/slow")
        client.flush()
        wait_for(lambda: curl("--http2-prior-knowledge",
                              f"http://127.0.0.1:{port}/slow-started").stdout == "1", 5,
                 "the slow request at its worker")
        gateway.popen.send_signal(signal.SIGTERM)
        # Logged just before the drain starts, which is before the gateway can read again.
        gateway.wait_log("stopping")
        late = client.get("/echo")
        client.flush()
        seen = client.events_until(lambda seen: any(isinstance(e, ConnectionTerminated)
                                                    for e in seen))
        ended = [e.stream_id for e in seen if isinstance(e, StreamEnded)]
        refused = [(e.stream_id, e.error_code) for e in seen if isinstance(e, StreamReset)]
        assert first in ended and (late, ErrorCodes.REFUSED_STREAM) in refused
        body = b"".join(e.data for e in seen if isinstance(e, DataReceived)
                        and e.stream_id == first)
        assert body == b"slow"
        goaway = next(e for e in seen if isinstance(e, ConnectionTerminated))
        assert goaway.error_code == ErrorCodes.NO_ERROR
    assert gateway.popen.wait(15) == 0


@pytest.mark.slow
def test_a_client_that_reads_nothing_is_cut_after_the_send_timeout(
        h2c: tuple[Cluster, int]) -> None:
    c, port = h2c
    # A small receive buffer: the gateway's writes back up after kilobytes, not after
    # the megabytes loopback TCP would take, which a busy machine is slow to fill.
    with RawClient(port, rcvbuf=8192) as client:
        # Windows wide open, then nothing read: only TCP's buffers hold the gateway back.
        client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.h2.increment_flow_control_window(2**31 - 1 - 65535)
        client.get("/big/30000000")
        client.flush()
        gateway = next(p for p in c.procs if p.role == "gateway")
        line = gateway.wait_log("read nothing of what we sent for 1s", timeout=30)
        assert "(--send-timeout); closing" in line
        assert sample(scrape(metrics_port(gateway.ready)),
                      "cluster_gateway_client_timeouts_total", phase="send") == 1
        client.sock.settimeout(10)
        with contextlib.suppress(ConnectionError):  # what TCP still held, then the close
            while client.sock.recv(1 << 20):
                pass


def test_a_stream_whose_body_stalls_gets_408_and_the_connection_goes_on(
        h2c: tuple[Cluster, int]) -> None:
    c, port = h2c
    gateway = next(p for p in c.procs if p.role == "gateway")
    with RawClient(port) as client:
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/echo"),
                                     (b":scheme", b"http"), (b":authority", b"x")])
        client.h2.send_data(sid, b"a" * 1000)  # and then nothing more of it
        client.flush()
        seen = client.events_until(lambda s: any(isinstance(e, StreamReset) for e in s), 15)
        (head,) = [e for e in seen if isinstance(e, ResponseReceived)]
        assert dict(head.headers)[b":status"] == b"408"
        assert [e.error_code for e in seen if isinstance(e, StreamReset)] == [0]
        other = client.get("/echo")  # the connection serves on
        client.flush()
        seen = client.events_until(lambda s: any(isinstance(e, StreamEnded) and
                                                 e.stream_id == other for e in s))
        assert any(isinstance(e, ResponseReceived) and dict(e.headers)[b":status"] == b"200"
                   for e in seen), (seen, gateway.log())
    assert "408 no body byte for 1s" in gateway.wait_log("408 no body byte")
    assert sample(scrape(metrics_port(gateway.ready)), "cluster_gateway_client_timeouts_total",
                  phase="body") == 1
    assert sample(scrape(metrics_port(gateway.ready)),
                  "cluster_gateway_body_buffer_bytes") == 0


def test_a_declared_body_over_the_limit_is_413_at_the_header_under_load() -> None:
    """Refused before any of the body is read, so the answer comes even while curl
    still sends: it used to come after 1 MiB, and curl printed 000 on a busy machine."""
    with cluster() as c:
        port = int(c.gateway("--max-body", "1000").ready["port"])
        c.worker(APP)
        gateway = next(p for p in c.procs if p.role == "gateway")
        with RawClient(port) as client:
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/echo"),
                                         (b":scheme", b"http"), (b":authority", b"x"),
                                         (b"content-length", b"50000000")])
            client.flush()  # headers only: the 413 must not wait for a byte of body
            seen = client.events_until(
                lambda s: any(isinstance(e, (StreamEnded, StreamReset)) for e in s))
            (head,) = [e for e in seen if isinstance(e, ResponseReceived)]
            assert dict(head.headers)[b":status"] == b"413"
        assert "content-length 50000000 over 1000" in gateway.log()


@pytest.mark.parametrize("value", [b"\x1b]0;owned\x07", b"a\x08b", b"a\x7fb"])
def test_control_characters_in_path_and_values_are_400(h2c: tuple[Cluster, int],
                                                       value: bytes) -> None:
    c, port = h2c
    gateway = next(p for p in c.procs if p.role == "gateway")
    with RawClient(port) as client:
        for headers in ([(b":path", b"/" + value)], [(b":path", b"/"), (b"x-a", value)]):
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                         (b":authority", b"x"), *headers], end_stream=True)
            client.flush()
            seen = client.events_until(lambda s, sid=sid: any(
                isinstance(e, StreamEnded) and e.stream_id == sid for e in s))
            (head,) = [e for e in seen if isinstance(e, ResponseReceived)]
            assert dict(head.headers)[b":status"] == b"400"
    text = gateway.log()
    assert "\x1b" not in text and "\x07" not in text and "\x08" not in text
