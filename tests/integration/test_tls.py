"""HTTPS and WSS at the gateway, with a certificate the test makes (openssl)."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.harness import ROOT, cluster

RAW = "tests.apps.asgi_apps:raw"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is missing: `make test` installs it with apt-get"
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    yield cert, key


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


def test_https_and_wss(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with cluster() as c:
        gw = c.gateway("--certfile", str(cert), "--keyfile", str(key))
        c.worker(RAW)
        port = int(gw.ready["port"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                           context=client_context(cert))
        conn.request("GET", "/scheme")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == "https"
        conn.request("POST", "/echo", body=b"over tls")  # keep-alive on the same TLS link
        assert json.loads(conn.getresponse().read())["body"] == "over tls"
        conn.close()

        async def go() -> None:
            async with connect(f"wss://127.0.0.1:{port}/ws", ssl=client_context(cert)) as ws:
                await ws.send("scheme")
                assert await ws.recv() == "wss"
        asyncio.run(asyncio.wait_for(go(), 20))

        # A client speaking plain HTTP to the TLS port gets nowhere, and costs nothing.
        import socket
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            assert not data.startswith(b"HTTP/1.1 200")
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                           context=client_context(cert))
        conn.request("GET", "/scheme")
        assert conn.getresponse().status == 200
        conn.close()
        # ... except one log line naming the client and the reason, and a count.
        line = gw.wait_log("TLS handshake failed")
        assert line.count("TLS handshake failed") == 1 and "HTTP_REQUEST" in line
        from tests.integration.test_observability import metrics_port, sample, scrape
        assert sample(scrape(metrics_port(gw.ready)),
                      "cluster_gateway_tls_handshake_failures_total") == 1


def test_a_client_that_never_finishes_the_handshake_is_cut(
        certificate: tuple[Path, Path]) -> None:
    import socket
    cert, key = certificate
    with cluster() as c:
        gw = c.gateway("--certfile", str(cert), "--keyfile", str(key), "--header-timeout", "1")
        with socket.create_connection(("127.0.0.1", int(gw.ready["port"])), timeout=5) as s:
            s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            assert s.recv(100) == b""  # closed by the gateway after --header-timeout
        assert "no handshake in time" in gw.wait_log("TLS handshake failed")


@pytest.mark.parametrize("args, message", [
    (["--certfile", "/nonexistent.pem", "--keyfile", "/nonexistent.pem"], "no such file"),
    (["--certfile", str(ROOT / "README.md")], "go together"),
])
def test_bad_tls_flags_are_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "cluster", "gateway", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_key_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    result = subprocess.run([sys.executable, "-m", "cluster", "gateway", "--certfile", str(bad),
                             "--keyfile", str(bad), "--coordinator", "tcp://127.0.0.1:1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "cannot load" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "served"), [
    # RFC 9113 §9.2 forbids these for HTTP/2: no handshake completes with them at all.
    (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256", "-alpn", "h2"], False),
    (["-tls1_2", "-cipher", "AES128-GCM-SHA256", "-alpn", "h2"], False),  # no ephemeral key
    (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256", "-alpn", "http/1.1"], False),
    (["-tls1_1"], False),
    (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-alpn", "h2"], True),
    (["-tls1_3", "-alpn", "h2"], True),
])
def test_only_the_suites_rfc_9113_allows(certificate: tuple[Path, Path], args: list[str],
                                         served: bool) -> None:
    cert, key = certificate
    with cluster() as c:
        gw = c.gateway("--certfile", str(cert), "--keyfile", str(key))
        done = subprocess.run(["openssl", "s_client", "-connect",
                               f"127.0.0.1:{gw.ready['port']}", *args],
                              input=b"", capture_output=True, timeout=30)
        out = done.stdout.decode(errors="replace")
        shaken = "New, " in out and "Cipher is (NONE)" not in out
        assert (shaken and ("ALPN protocol: h2" in out or "h2" not in args)) == served, out
        if not served:
            gw.wait_log("TLS handshake failed")


def test_the_banner_says_https_for_a_tls_port(certificate: tuple[Path, Path]) -> None:
    from tests.integration.test_cli import cluster_run
    cert, key = certificate
    with cluster_run("--workers", "1", "--certfile", str(cert), "--keyfile", str(key)) as run:
        assert "https://127.0.0.1:" in run.banner and "http://127.0.0.1:" not in \
            run.banner.split("\n")[0]
