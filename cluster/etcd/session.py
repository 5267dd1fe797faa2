"""Our thin adapter over the etcd client (aetcd, gRPC): the endpoint list, rotation,
deadlines.

`--state-backend etcd://HOST:PORT,HOST:PORT,.../NAME` names the etcd members and the
key prefix (`/NAME/`, default `/cluster/`). One member is used at a time; a call
that fails (the member is down, partitioned, has no leader, or does not answer
within the deadline) is tried on the next member until the caller's deadline. Every
call carries gRPC's `hasleader` metadata, so a member cut off from the quorum
refuses at once instead of stalling, and a watch on it is cancelled (etcd's
"require leader"), which makes the watcher move to another member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc

from cluster.errors import ConfigError, EtcdUnavailable

log = logging.getLogger("cluster.etcd")

T = TypeVar("T")
# What a failed call to one member raises: try the next. (aetcd wraps most gRPC
# errors in ClientError, but not those a watch stream ends with.)
FAILURES = (aetcd.exceptions.ClientError, grpc.aio.AioRpcError, asyncio.TimeoutError,
            OSError)



def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that begins with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(frozen=True)
class EtcdTarget:
    endpoints: tuple[tuple[str, int], ...]
    prefix: bytes  # b"/cluster/"


def parse_backend(url: str) -> EtcdTarget:
    """etcd://HOST:PORT[,HOST:PORT...][/NAME] -> the members and the key prefix."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc:
        raise ConfigError(f"--state-backend {url!r}: etcd://HOST:PORT[,HOST:PORT...][/NAME]")
    endpoints = []
    for item in parts.netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--state-backend: {item!r} is not HOST:PORT")
        endpoints.append((host.strip("[]"), int(port)))
    name = parts.path.strip("/") or "cluster"
    if "/" in name:
        raise ConfigError(f"--state-backend: the name {name!r} may not contain '/'")
    return EtcdTarget(tuple(endpoints), f"/{name}/".encode())


class EtcdSession:
    def __init__(self, target: EtcdTarget, timeout: float) -> None:
        self.target = target
        self.timeout = timeout  # a caller's whole deadline, seconds
        # One member gets a third of it: a member that stalls (cut off, stopped)
        # leaves time to try the others within the same call.
        self.attempt = max(0.3, timeout / 3)
        self.index = 0
        self._client: aetcd.Client | None = None
        self.rotations = 0
        self._last_warning = 0.0

    @property
    def endpoint(self) -> str:
        host, port = self.target.endpoints[self.index]
        return f"{host}:{port}"

    async def client(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.target.endpoints[self.index]
            client = aetcd.Client(host, port, timeout=max(1, math.ceil(self.attempt)))
            # Refuse (and cancel watches) on a member without a leader: see above.
            client.metadata = (("hasleader", "true"),)
            await client.connect()
            self._client = client
        return self._client

    def follow(self, other: EtcdSession) -> None:
        """Move to the member `other` uses (one that just answered it)."""
        if other.index != self.index:
            self.rotate(f"moving to {other.endpoint}, which answers")
            self.index = other.index

    def rotate(self, why: object) -> None:
        """Leave the current member for the next one."""
        old = self._client
        self._client = None
        self.rotations += 1
        previous = self.endpoint
        self.index = (self.index + 1) % len(self.target.endpoints)
        # One line a second at most: with every member down, rotation is a loop.
        now = time.monotonic()
        level = logging.WARNING if now - self._last_warning >= 1.0 else logging.DEBUG
        if level == logging.WARNING:
            self._last_warning = now
        log.log(level, "etcd %s: %s; trying %s", previous, str(why) or type(why).__name__,
                self.endpoint)
        if old is not None:
            asyncio.get_running_loop().create_task(_close(old))

    async def call(self, fn: Callable[[aetcd.Client], Awaitable[T]], deadline: float) -> T:
        """`fn(client)` on a member that answers, trying the others until `deadline`
        (loop time); EtcdUnavailable after it."""
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise EtcdUnavailable(f"no etcd member answered in time ({last!r})")
            try:
                client = await asyncio.wait_for(self.client(), min(left, self.attempt))
                return await asyncio.wait_for(fn(client),
                                              min(deadline - loop.time(), self.attempt))
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # our caller is being cancelled
                # gRPC ends a call on a channel it closed under us (its member went
                # away mid-call) with CancelledError: a failure like the others.
                last = exc
                self.rotate("the call was cut")
            except FAILURES as exc:
                last = exc
                self.rotate(exc)
                # Every member failed at once: a breath before the next round.
                if self.index == 0:
                    await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))

    async def close(self) -> None:
        if self._client is not None:
            await _close(self._client)
            self._client = None


async def stop_watch(client: aetcd.Client, watch_id: int | None) -> None:
    """Cancel a watch, without waiting on a member that stalls (the usual reason to
    cancel one): the cancel request gets a moment, then the channel goes anyway."""
    if watch_id is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client._watcher.cancel(watch_id), 0.2)


async def _close(client: aetcd.Client) -> None:
    with contextlib.suppress(Exception):  # closing a broken channel may complain
        await client.close()
