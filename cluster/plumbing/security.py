"""CurveZMQ on every link: how a process proves who it is, and who may connect to it.

Theory of operation
-------------------
Every process has a CURVE key pair, ``NAME.key_secret`` in its ``--keys`` directory
(`cluster keygen DIR NAME...` writes them, with pyzmq's certificate files). The
sockets that bind (the coordinator's ROUTER and its state PUB, a gateway's dispatch
ROUTER) are CURVE servers; a ZAP handler in the same process (`Gatekeeper`, pyzmq's
authenticator) lets a client in only if its public key is one of the ``*.key`` files
in that directory. The directory is read again when it changes, so adding a member
is adding a file, and removing one refuses its next connection.

A client must know the server's public key before it connects: the coordinator's is
``coordinator.key`` in the directory; a gateway's travels in its membership entry,
which came over the coordinator link, itself authenticated both ways.

What a stranger gets: a peer with no key (or the wrong server key) fails the CURVE
handshake inside libzmq and never reaches our code; a peer whose key is valid but
not listed is refused by ZAP. Either way it receives nothing and nothing it sends
is read. Refusals are counted (`cluster_zmq_refused`), and each refused key is
logged once per address with its fingerprint.

`--insecure` turns all of this off (`Plaintext`): a warning at start says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from prometheus_client.core import CounterMetricFamily
from zmq.auth.thread import ThreadAuthenticator

from cluster.errors import ConfigError

log = logging.getLogger("cluster.security")

COORDINATOR_KEY = "coordinator"  # the coordinator's key pair is always named this
ROLE_KEYS = (COORDINATOR_KEY, "gateway", "worker", "publisher")  # default names, one a role
ZAP_DOMAIN = "cluster"


def fingerprint(public_key: bytes) -> str:
    """A short, stable name for a public key (z85 text) in logs."""
    return hashlib.sha256(public_key).hexdigest()[:12]


def keygen(directory: str | Path, names: Iterable[str]) -> list[str]:
    """Write a key pair for each name that has none in `directory` yet; returns the
    names written. Existing pairs are kept, so running it again is harmless."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    written = []
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{name!r} is not a key name")
        if (path / f"{name}.key_secret").exists():
            continue
        _, secret_file = zmq.auth.create_certificates(path, name)
        os.chmod(secret_file, 0o600)
        written.append(name)
    return written


def export(directory: str | Path, to: str | Path) -> list[str]:
    """For each subdirectory `to/NAME` that exists (a volume mounted there), write the
    key directory process NAME needs and nothing more: its own secret key and every
    public key. A container then mounts only its own secret. Returns the names."""
    source, target = Path(directory), Path(to)
    publics = sorted(source.glob("*.key"))
    done = []
    for place in sorted(p for p in target.iterdir() if p.is_dir()):
        secret = source / f"{place.name}.key_secret"
        if not secret.exists():
            raise ConfigError(f"--export {to}: {place.name}/ has no key pair in {directory}")
        for old in place.glob("*.key_secret"):
            if old.name != secret.name:
                old.unlink()  # another name's secret has no business here
        for public in publics:
            shutil.copyfile(public, place / public.name)
        fd = os.open(place / secret.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            out.write(secret.read_bytes())
        done.append(place.name)
    return done


class Plaintext:
    """--insecure: sockets as they are; anyone who reaches a port is a member."""

    public_key = b""

    def server(self, sock: zmq.Socket[Any]) -> None:
        pass

    def client(self, sock: zmq.Socket[Any], server_key: bytes | None = None) -> None:
        pass

    def coordinator_client(self, sock: zmq.Socket[Any]) -> None:
        pass

    def gatekeeper(self, zmq_context: zmq.Context[Any]) -> Gatekeeper | None:
        return None


class Curve:
    """This process's key pair, and the directory that lists who may connect."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = Path(directory)
        secret_file = self.directory / f"{name}.key_secret"
        coordinator_file = self.directory / f"{COORDINATOR_KEY}.key"
        with contextlib.suppress(FileNotFoundError):  # said below, with the fix
            mode = secret_file.stat().st_mode & 0o777
            if mode & 0o077:
                # As ssh refuses such a key: anyone who can read it is a member.
                raise ConfigError(f"--keys {directory}: {secret_file} is mode {mode:04o}, "
                                  f"readable by others; `chmod 600 {secret_file}` (a secret "
                                  "key must be readable by its owner alone)")
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
            coordinator, _ = zmq.auth.load_certificate(coordinator_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--keys {directory}: cannot load {name}.key_secret and "
                              f"{COORDINATOR_KEY}.key ({exc}); `cluster keygen {directory} "
                              f"{name}` writes a pair") from None
        if secret is None:
            raise ConfigError(f"--keys {directory}: {name}.key_secret has no secret key")
        self.name = name
        self.public_key: bytes = public
        self.secret_key: bytes = secret
        self.coordinator_key: bytes = coordinator

    def server(self, sock: zmq.Socket[Any]) -> None:
        """A socket that binds: CURVE server, clients checked by the Gatekeeper."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def client(self, sock: zmq.Socket[Any], server_key: bytes | None = None) -> None:
        """A socket that connects to a server whose public key is `server_key`."""
        if not server_key:
            raise ConfigError("a peer advertised no CURVE key (is it running --insecure?)")
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)

    def coordinator_client(self, sock: zmq.Socket[Any]) -> None:
        self.client(sock, self.coordinator_key)

    def gatekeeper(self, zmq_context: zmq.Context[Any]) -> Gatekeeper:
        return Gatekeeper(zmq_context, self.directory)


Security = Curve | Plaintext


def for_process(keys: str, key_name: str, insecure: bool, role: str,
                wait: float = 0.0) -> Security:
    """The security a process runs with, from its --keys, --key-name and --insecure.
    Keys not there yet are waited for, up to `wait` seconds: in a compose project the
    one-shot service that writes them may still be at work when we start."""
    if insecure:
        log.warning("--insecure: ZeroMQ links are plaintext and unauthenticated; anyone "
                    "who can reach this process's ports is a member of the cluster")
        return Plaintext()
    if not keys:
        raise ConfigError("--keys DIR is required (`cluster keygen DIR coordinator gateway "
                          "worker` makes one), or --insecure for plaintext")
    name = key_name or role
    needed = [Path(keys) / f"{name}.key_secret", Path(keys) / f"{COORDINATOR_KEY}.key"]
    deadline = time.monotonic() + wait
    if not all(p.exists() for p in needed) and wait > 0:
        log.info("waiting up to %gs for %s and %s.key in %s", wait, needed[0].name,
                 COORDINATOR_KEY, keys)
        while not all(p.exists() for p in needed) and time.monotonic() < deadline:
            time.sleep(0.2)  # poll: a directory another process is writing
    return Curve(keys, name)


class Gatekeeper:
    """The ZAP handler for a process's server sockets: only listed keys get in.

    pyzmq's authenticator answers ZAP in a thread of its own; the callback below
    decides, reading the allow-list again whenever the directory changed."""

    def __init__(self, zmq_context: zmq.Context[Any], directory: Path) -> None:
        self.directory = directory
        self.refused = 0  # connections refused for a key not on the list
        self.handshake_failures = 0  # no key, or a wrong server key (socket monitors)
        self._allowed: set[bytes] = set()
        self._stamp: tuple[int, int] | None = None
        self._logged: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()
        self._auth = _Authenticator(zmq_context)
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)

    def _reload(self) -> None:
        try:
            stat = self.directory.stat()
        except OSError:
            return
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        allowed = set()
        for public_file in self.directory.glob("*.key"):
            try:
                public, _ = zmq.auth.load_certificate(public_file)
            except (OSError, ValueError) as exc:
                log.warning("allowed key %s cannot be read: %s; skipped", public_file, exc)
                continue
            allowed.add(public)
        self._allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP asks: may the client with this public key (z85) in?"""
        with self._lock:
            self._reload()
            if key in self._allowed:
                return True
            self.refused += 1
            address = self._auth.peer_address
            if (address, key) not in self._logged and len(self._logged) < 10_000:
                self._logged.add((address, key))
                log.warning("refused a ZeroMQ peer at %s: its key %s is not allowed",
                            address, fingerprint(key))
            return False

    def on_socket_event(self, event: int) -> None:
        """For a `zmqio.Monitor` of a server socket: count the handshakes that failed
        before ZAP was asked (no key, or a client that expected another server key).
        A ZAP refusal (HANDSHAKE_FAILED_AUTH) is counted by `callback` already."""
        if event & HANDSHAKE_FAILED:
            self.handshake_failed()

    def handshake_failed(self) -> None:
        self.handshake_failures += 1
        if self.handshake_failures in (1, 10, 100, 1000) or \
                self.handshake_failures % 10_000 == 0:
            log.warning("refused a ZeroMQ peer that has no valid CURVE key (%d so far)",
                        self.handshake_failures)

    def metric(self) -> CounterMetricFamily:
        family = CounterMetricFamily("cluster_zmq_refused",
                                     "ZeroMQ peers refused: key not allowed, or no valid "
                                     "CURVE handshake", labels=["reason"])
        family.add_metric(["key_not_allowed"], self.refused)
        family.add_metric(["handshake"], self.handshake_failures)
        return family

    def stop(self) -> None:
        self._auth.stop()


class _Authenticator(ThreadAuthenticator):
    """pyzmq's thread authenticator, remembering the address of the request it is
    answering (its callback is given only the domain and the key)."""

    def __init__(self, zmq_context: zmq.Context[Any]) -> None:
        super().__init__(zmq_context, log=logging.getLogger("cluster.security.zap"))
        self.peer_address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.peer_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)


# Handshakes that fail before ZAP is asked (ZAP refusals are FAILED_AUTH).
HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
