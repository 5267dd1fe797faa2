"""Configuration: parsed once per process into a frozen dataclass, then passed down.

Every field is a command-line flag and an environment variable of the same name:
`request_timeout` <-> `--request-timeout` <-> `CLUSTER_REQUEST_TIMEOUT`. A flag wins
over the environment, which wins over the default. Nothing else reads `os.environ`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, TypeVar

from cluster.errors import ConfigError

ENV_PREFIX = "CLUSTER_"


def opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Common:
    coordinator: str = opt("tcp://127.0.0.1:5555", "coordinator endpoint to register with")
    state_backend: str = opt("", "etcd://HOST:PORT[,HOST:PORT...][/NAME]: membership and "
                             "shared state on these etcd members, under /NAME/ (default "
                             "cluster); no coordinator then. Empty: the coordinator")
    heartbeat_interval: float = opt(1.0, "seconds between heartbeats, every link")
    heartbeat_liveness: int = opt(3, "missed heartbeats before a peer is dropped")
    log_level: str = opt("info", "debug, info, warning or error")
    log_format: str = opt("text", "text or json: one line per event either way")
    metrics_host: str = opt("127.0.0.1", "address the Prometheus /metrics endpoint binds")
    metrics_port: int = opt(0, "port of /metrics (0: any free port; the coordinator's "
                            "discovery endpoint lists it; -1: no endpoint)")
    advertise_host: str = opt("", "host name peers use to reach this process (default: bind host)")
    max_frame: int = opt(64 * 1024 * 1024, "largest ZeroMQ frame accepted, bytes")
    start_timeout: float = opt(10.0, "seconds a gateway or worker waits for the coordinator "
                               "when it starts before it gives up (exit 1)")
    keys: str = opt("", "directory of CURVE keys (`cluster keygen DIR NAME...`): this "
                    "process's KEY_NAME.key_secret, the coordinator's coordinator.key, and "
                    "the public keys (*.key) allowed to connect to this process")
    key_name: str = opt("", "which key pair in --keys is this process's (default: its "
                        "role: coordinator, gateway or worker)")
    insecure: bool = opt(False, "plaintext, unauthenticated ZeroMQ: anyone who reaches a "
                         "port is a member (a warning says so at start)")
    shutdown_grace: float = opt(10.0, "seconds to finish in-flight work on SIGTERM: a "
                                "gateway's requests (503 after), a worker's handlers")
    ready_fd: int = opt(-1, "write one JSON line with bound addresses to this fd when "
                        "ready, and a beat byte every --heartbeat-interval", hidden=True)

    def validate(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ConfigError("--heartbeat-interval must be > 0")
        if self.start_timeout <= 0:
            raise ConfigError("--start-timeout must be > 0")
        if self.shutdown_grace <= 0:
            raise ConfigError("--shutdown-grace must be > 0")
        if self.heartbeat_liveness < 1:
            raise ConfigError("--heartbeat-liveness must be >= 1")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"--log-level {self.log_level!r} is not a level")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format {self.log_format!r}: text or json")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError("--metrics-port must be a port, 0 (any) or -1 (off)")
        if self.state_backend:
            from cluster.etcd.session import parse_backend
            parse_backend(self.state_backend)  # ConfigError when it is not one

    @property
    def peer_expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass(frozen=True)
class HistoryWindow(Common):
    """What a group keeps for reconnecting clients (cluster.publish): checked by the
    coordinator, or on etcd by the gateway a client recovers through."""

    history_size: int = opt(1000, "messages kept per group published with history "
                            "(cluster.publish), for clients that reconnect")
    history_ttl: float = opt(300.0, "seconds a group's message is kept for recovery")

    def validate(self) -> None:
        super().validate()
        if self.history_size < 1:
            raise ConfigError("--history-size must be >= 1")
        if self.history_ttl <= 0:
            raise ConfigError("--history-ttl must be > 0")


@dataclass(frozen=True)
class StateLimits(Common):
    """The shared state's limits: checked by the coordinator, or on etcd by whoever
    commits (the sequencer gateway, or a worker committing its own batches)."""

    max_value: int = opt(1024 * 1024, "largest state value, bytes (msgpack-encoded)")
    max_keys: int = opt(1_000_000, "most keys in the shared state")

    def validate(self) -> None:
        super().validate()
        if self.max_value < 1 or self.max_keys < 1:
            raise ConfigError("--max-value and --max-keys must be >= 1")


@dataclass(frozen=True)
class CoordinatorConfig(HistoryWindow, StateLimits):
    coordinator_bind: str = opt("tcp://127.0.0.1:5555", "endpoint the coordinator binds")
    state_bind: str = opt("", "endpoint of the state update publisher "
                          "(default: the coordinator's host, any port)")
    data_dir: str = opt("", "directory for the state log and snapshots (empty: memory only)")
    fsync: str = opt("batch", "always: every ack waits for an fsync covering it; batch: "
                     "written before the ack, fsynced every --fsync-interval")
    fsync_interval: float = opt(0.01, "seconds between fsyncs with --fsync batch")
    snapshot_every: int = opt(10_000, "log records between snapshots")

    def validate(self) -> None:
        super().validate()
        if self.fsync not in ("always", "batch"):
            raise ConfigError("--fsync must be always or batch")
        if self.fsync_interval <= 0:
            raise ConfigError("--fsync-interval must be > 0")
        if self.snapshot_every < 1:
            raise ConfigError("--snapshot-every must be >= 1")


@dataclass(frozen=True)
class GatewayConfig(HistoryWindow, StateLimits):
    host: str = opt("127.0.0.1", "HTTP listen address")
    port: int = opt(8000, "HTTP listen port (0: any free port)")
    dispatch_bind: str = opt("tcp://127.0.0.1:0",
                             "ZeroMQ endpoint workers connect to (port 0: any)")
    max_body: int = opt(1024 * 1024, "largest request body, bytes (413 above)")
    max_request_line: int = opt(8 * 1024, "longest request line, bytes (414 above)")
    max_header_bytes: int = opt(16 * 1024, "largest header block, bytes (431 above)")
    max_header_count: int = opt(100, "most header fields (431 above)")
    request_timeout: float = opt(30.0, "seconds a worker may take before the client gets 504")
    header_timeout: float = opt(10.0, "seconds to receive a request's headers (408 after)")
    keepalive_timeout: float = opt(5.0, "seconds an idle keep-alive connection stays open")
    body_timeout: float = opt(20.0, "seconds a request body may go without a byte (408 "
                              "after; HTTP/2: the stream is answered 408 and reset)")
    body_total_timeout: float = opt(60.0, "seconds from a request's headers to the last "
                                    "byte of its body (408 after)")
    send_timeout: float = opt(30.0, "seconds a client may read nothing of what we send it "
                              "(a response, a file) before its connection is cut")
    max_body_buffer: int = opt(256 * 1024 * 1024, "bytes of unfinished request bodies one "
                               "gateway holds, all connections together; a body that finds "
                               "no room gets 503 + Retry-After")
    max_queue: int = opt(4096, "requests waiting for worker credit before 503")
    max_pipeline: int = opt(32, "pipelined requests in flight per connection before reading pauses")
    defer_timeout: float = opt(60.0, "seconds a deferred request waits for reply() (504 after)")
    ws_ping_interval: float = opt(20.0, "seconds between WebSocket keepalive pings")
    ws_ping_timeout: float = opt(20.0, "seconds to wait for a pong before closing")
    ws_deflate: bool = opt(True, "negotiate permessage-deflate")
    ws_max_size: int = opt(1024 * 1024, "largest incoming WebSocket message, bytes, after "
                           "decompression (1009 above)")
    ws_max_queue: int = opt(1024 * 1024, "bytes waiting to be sent to one WebSocket client "
                            "before it is closed as too slow (1013)")
    ws_origins: str = opt("", "comma-separated origins a browser's WebSocket may come from "
                          "besides the request's own host (* for any); a browser sending "
                          "another Origin gets 403; clients sending none are let in")
    static: str = opt("", "serve files at the gateway: /url=DIRECTORY[,/url2=DIR2]")
    static_dotfiles: bool = opt(False, "serve files and directories under --static whose "
                                "names begin with a dot (.env, .git/): 404 otherwise")
    certfile: str = opt("", "TLS certificate chain (PEM): serve HTTPS and WSS")
    keyfile: str = opt("", "TLS private key (PEM) for --certfile")
    http2: bool = opt(True, "speak HTTP/2: by ALPN over TLS, and with prior knowledge "
                      "(the client starts with HTTP/2's preface) on the cleartext port")
    h2_max_streams: int = opt(100, "HTTP/2 streams per connection at once, counting "
                              "requests a client reset that are still at a worker")
    h2_stall_timeout: float = opt(30.0, "seconds an HTTP/2 response may wait for the client "
                                  "to open its stream's flow-control window before the "
                                  "stream is reset (a client that reads nothing at all: "
                                  "--send-timeout)")
    max_connections: int = opt(10_000, "open client connections at most; one more is "
                               "answered 503 and closed at once (TLS: closed)")
    wait_for_worker: bool = opt(False, "open the HTTP port only once a worker is linked, "
                                "so the first request is served (at most --start-timeout; "
                                "then open anyway, answering 503 until one links)")
    access_log: bool = opt(False, "log one line per HTTP response (method, target, status, "
                           "duration, request id)")
    state_sequencer: bool = opt(True, "on etcd: stand for election as the state "
                                "sequencer, which commits every worker's state writes "
                                "together (docs/scale-out.md)")
    local_reply: str = opt("", "answer every request with this text in the gateway itself, "
                           "no worker (the benchmark's no-hop limit)", hidden=True)

    def validate(self) -> None:
        super().validate()
        for name in ("max_body", "max_request_line", "max_header_bytes", "max_header_count",
                     "max_queue", "max_pipeline", "ws_max_size", "ws_max_queue",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--certfile and --keyfile go together")
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"--{name} {path!r}: no such file")
        for name in ("request_timeout", "header_timeout", "keepalive_timeout",
                     "ws_ping_interval", "ws_ping_timeout",
                     "defer_timeout", "body_timeout", "body_total_timeout", "send_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0")


@dataclass(frozen=True)
class WorkerConfig(StateLimits):
    handler: str = opt("", "the handler to run, as pkg.module:object", required=True)
    app_dir: str = opt(".", "directory the handler's module is imported from (put first "
                       "on the import path)")
    concurrency: int = opt(64, "requests this worker runs at once")
    prefetch: int = opt(1, "requests a gateway may send beyond --concurrency (credit per "
                        "gateway = concurrency + prefetch); they wait here, so a freed slot "
                        "starts the next at once instead of after a round trip to the "
                        "gateway. A waiting one can sit behind a slow request: 0 turns it off")
    threads: int = opt(8, "synchronous handlers that run at once, each on a thread; one "
                       "that waits for a state write or members() lends its slot, and "
                       "another thread starts (up to --concurrency + --prefetch)")
    state_timeout: float = opt(3.0, "seconds a state write waits for the coordinator")
    stream_stall_timeout: float = opt(60.0, "seconds a streamed response waits for a "
                                      "client that takes nothing before it is cut")
    gzip_min_size: int = opt(1024, "gzip whole text-like responses of at least this many "
                             "bytes when the client accepts it (0: never); done here, in "
                             "the worker, so it costs the gateways nothing")
    lifespan_timeout: float = opt(30.0, "seconds an ASGI app's lifespan startup, and "
                                  "again its shutdown, may take")
    cpu: int = opt(-1, "pin this worker (its loop, handler threads and ZeroMQ thread) to "
                   "this CPU; -1: not pinned. Sync handlers hand every request to a thread, "
                   "and on one CPU that hand-off costs a quarter less (docs/performance.md)")

    def validate(self) -> None:
        super().validate()
        if ":" not in self.handler:
            raise ConfigError(f"--handler {self.handler!r} must look like pkg.module:object")
        if self.concurrency < 1 or self.threads < 1:
            raise ConfigError("--concurrency and --threads must be >= 1")
        if self.prefetch < 0:
            raise ConfigError("--prefetch must be >= 0")
        if min(self.state_timeout, self.stream_stall_timeout, self.lifespan_timeout) <= 0:
            raise ConfigError("--state-timeout, --stream-stall-timeout and "
                              "--lifespan-timeout must be > 0")
        if self.gzip_min_size < 0:
            raise ConfigError("--gzip-min-size must be >= 0")
        if self.cpu < -1:
            raise ConfigError("--cpu must be a CPU number, or -1 (not pinned)")


@dataclass(frozen=True)
class RunConfig(GatewayConfig, WorkerConfig, CoordinatorConfig):
    """`cluster run`: everything a gateway and a worker take, plus the counts."""

    # Flags of the roles that `cluster run` sets itself: not in its --help.
    NOT_IN_HELP: ClassVar[frozenset[str]] = frozenset({"coordinator", "coordinator_bind",
                                                       "cpu"})

    gateways: int = opt(1, "gateway processes (ports PORT .. PORT+N-1)")
    workers: int = opt(2, "worker processes")
    coordinator_port: int = opt(0, "coordinator port on 127.0.0.1 (0: any free port)")
    pin_workers: bool = opt(True, "pin each worker to one CPU, round robin over the CPUs "
                            "this process may use, the first ones left to the gateways "
                            "(see a worker's --cpu)")
    child_timeout: float = opt(10.0, "seconds a child may give no sign of life (its loop "
                               "beats every --heartbeat-interval) before it is killed and "
                               "restarted")
    reload: bool = opt(False, "development: roll the workers when a Python file under the "
                       "handler's package changes")

    def validate(self) -> None:
        super().validate()
        if self.gateways < 1 or self.workers < 1:
            raise ConfigError("--gateways and --workers must be >= 1 (with no worker, "
                              "every request would get 503)")
        if self.coordinator != Common.coordinator:
            raise ConfigError("--coordinator: cluster run starts a coordinator of its own; "
                              "to join a running cluster, start cluster-gateway and "
                              "cluster-worker with --coordinator")
        if self.child_timeout <= 2 * self.heartbeat_interval:
            raise ConfigError("--child-timeout must be more than 2 heartbeat intervals")
        if self.cpu != -1:
            raise ConfigError("--cpu names one worker's CPU; cluster run spreads its "
                              "workers itself (--pin-workers)")


C = TypeVar("C", bound=Common)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(f: dataclasses.Field[Any], raw: str, source: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float,
                                                    "str": str, "bool": bool}[str(f.type)]
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{source}: {raw!r} is not a valid {kind.__name__}") from None


# `--help` shows these first, in this order: the dozen a newcomer needs. The rest
# follow in named groups (GROUPS); a test checks that every flag has a group.
COMMON = ("handler", "app_dir", "host", "port", "workers", "gateways", "reload",
          "static", "data_dir", "certfile", "keyfile", "log_level", "coordinator",
          "keys", "metrics_port")

GROUPS: dict[str, tuple[str, ...]] = {
    "HTTP limits and timeouts": (
        "max_body", "max_body_buffer", "max_request_line", "max_header_bytes",
        "max_header_count", "request_timeout", "header_timeout", "body_timeout",
        "body_total_timeout", "send_timeout", "keepalive_timeout", "max_queue",
        "max_pipeline", "defer_timeout", "max_connections", "wait_for_worker",
        "access_log", "static_dotfiles", "dispatch_bind", "local_reply"),
    "HTTP/2 and TLS": ("http2", "h2_max_streams", "h2_stall_timeout"),
    "WebSocket": ("ws_ping_interval", "ws_ping_timeout", "ws_deflate", "ws_max_size",
                  "ws_max_queue", "ws_origins"),
    "worker": ("concurrency", "prefetch", "threads", "state_timeout",
               "stream_stall_timeout", "gzip_min_size", "lifespan_timeout", "cpu",
               "pin_workers"),
    "coordinator and shared state": (
        "state_backend", "state_sequencer", "coordinator_bind", "coordinator_port",
        "state_bind", "fsync",
        "fsync_interval", "snapshot_every", "max_value", "max_keys", "history_size",
        "history_ttl"),
    "cluster links and keys": ("key_name", "insecure", "advertise_host", "max_frame",
                               "heartbeat_interval", "heartbeat_liveness",
                               "start_timeout"),
    "processes and logs": ("log_format", "metrics_host", "shutdown_grace",
                           "child_timeout", "ready_fd"),
}


class ShortErrors(argparse.ArgumentParser):
    """A mistyped flag is one line naming it, the nearest real one and --help, not
    the whole usage (argparse prints 44 lines of it before the error)."""

    def error(self, message: str) -> NoReturn:
        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hint = ""
        unknown = message.partition("unrecognized arguments: ")[2].split()
        if unknown:
            close = difflib.get_close_matches(unknown[0].partition("=")[0], flags, 1, 0.6)
            message = f"unknown flag {unknown[0]}" if unknown[0].startswith("-") else \
                f"unexpected argument {unknown[0]!r}"
            hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{message}{hint}; `{self.prog} --help` lists the flags")


class Switch(argparse.Action):
    """A bool flag: `--reload` or `--no-reload` (`--reload false` works too)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        name = option_strings[0]
        super().__init__([name, "--no-" + name[2:]], dest, nargs="?", **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, "false")
        else:
            setattr(namespace, self.dest, "true" if values is None else values)


class Help(argparse.HelpFormatter):
    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, Switch):
            return "/".join(action.option_strings)
        return super()._format_action_invocation(action)



def build_parser(cls: type[Common], prog: str, description: str) -> argparse.ArgumentParser:
    required = " ".join(f"{flag(f.name)} {_metavar(f)}" for f in dataclasses.fields(cls)
                        if f.metadata.get("required"))
    parser = ShortErrors(prog=prog, description=description, formatter_class=Help,
                         usage=f"{prog} {required + ' ' if required else ''}[flags]",
                         add_help=False, epilog="Every flag has an environment twin: "
                         "--max-body is CLUSTER_MAX_BODY. A flag wins over the environment, "
                         "which wins over the default.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    common = parser.add_argument_group("common options")
    common.add_argument("-h", "--help", action="help", help="show this help and exit")
    sections = [(common, [n for n in COMMON if n in fields])]
    sections += [(parser.add_argument_group(title), [n for n in names if n in fields])
                 for title, names in GROUPS.items()]
    for group, names in sections:
        for name in names:
            f = fields[name]
            default = "" if f.default in ("", None) else f", default {f.default!r}"
            if f.type in (bool, "bool"):
                default = f", default {'on' if f.default else 'off'}"
            hidden = f.metadata.get("hidden") or name in getattr(cls, "NOT_IN_HELP", ())
            help_text = argparse.SUPPRESS if hidden else (
                f"{f.metadata['help']} [{env_name(f.name)}{default}]")
            if f.type in (bool, "bool"):
                group.add_argument(flag(f.name), dest=f.name, default=None, help=help_text,
                                   action=Switch, metavar="")
            else:
                group.add_argument(flag(f.name), dest=f.name, default=None, help=help_text,
                                   metavar=_metavar(f))
    return parser


METAVARS = {"handler": "PKG.MODULE:OBJ", "app_dir": "DIR", "host": "ADDRESS",
            "static": "/URL=DIR", "data_dir": "DIR", "certfile": "FILE", "keyfile": "FILE",
            "log_level": "LEVEL", "log_format": "FORMAT", "coordinator": "ENDPOINT",
            "keys": "DIR", "key_name": "NAME", "state_backend": "etcd://HOST:PORT",
            "coordinator_bind": "ENDPOINT", "state_bind": "ENDPOINT",
            "dispatch_bind": "ENDPOINT", "advertise_host": "HOST", "metrics_host": "ADDRESS",
            "fsync": "MODE", "ws_origins": "ORIGINS", "local_reply": "TEXT"}


def _metavar(f: dataclasses.Field[Any]) -> str:
    if f.name in METAVARS:
        return METAVARS[f.name]
    return "SECONDS" if str(f.type) == "float" else "N"


def parse(cls: type[C], argv: Sequence[str] | None, prog: str, description: str,
          environ: Mapping[str, str] | None = None) -> C:
    """Flags, then environment, then defaults -> a validated frozen `cls`."""
    environ = os.environ if environ is None else environ
    args = build_parser(cls, prog, description).parse_args(argv)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name)
        if raw is not None:
            values[f.name] = _convert(f, raw, flag(f.name))
        elif env_name(f.name) in environ:
            values[f.name] = _convert(f, environ[env_name(f.name)], env_name(f.name))
        elif f.metadata.get("required"):
            raise ConfigError(f"{flag(f.name)} (or {env_name(f.name)}) is required")
    config = cls(**values)
    config.validate()
    return config


def subset(config: Common, cls: type[C], **overrides: Any) -> C:
    """The fields of `config` that `cls` also has, with overrides: for child processes."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in names}
    values.update(overrides)
    return cls(**values)


def to_argv(config: Common) -> list[str]:
    """Flags that rebuild `config` in a child process."""
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value == f.default:
            continue
        if f.type in (bool, "bool"):
            argv.append(flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [flag(f.name), str(value)]
    return argv
