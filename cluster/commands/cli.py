"""The commands: `cluster run|routes|coordinator|gateway|worker` and the
`cluster-coordinator`, `cluster-gateway`, `cluster-worker` scripts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from cluster.errors import (
    ConfigError,
    CoordinatorUnreachable,
    HandlerLoadError,
    StateLogDamaged,
)
from cluster.plumbing.config import (
    Common,
    CoordinatorConfig,
    GatewayConfig,
    RunConfig,
    WorkerConfig,
    parse,
)
from cluster.plumbing.lifecycle import setup_logging

DISTRIBUTION = "cluster-server"  # its name on PyPI; the command and package are `cluster`

USAGE = """usage: cluster COMMAND [flags]    (cluster --version: which one this is)

commands:
  run          start a coordinator, gateways and workers here, supervised
  routes       print the route map of an App: cluster routes pkg.module:app
  coordinator  membership and discovery
  gateway      HTTP front end; dispatches to workers
  worker       runs a handler: cluster worker --handler pkg.module:fun
  keygen       write CURVE key pairs: cluster keygen DIR [NAME...] [--export DIR2]
  probe        ask a process its /ready or /live: cluster probe ready [HOST:]PORT
  repair       cut a coordinator's damaged state log: cluster repair --data-dir DIR

`cluster COMMAND --help` lists a command's flags and their CLUSTER_* twins."""


def _role(prog: str, description: str, cls: type[Common],
          serve: Callable[[Common], None], argv: Sequence[str] | None) -> int:
    try:
        config = parse(cls, argv, prog, description)
        setup_logging(config.log_level, prog.removeprefix("cluster-"), config.log_format)
        serve(config)
    except (ConfigError, HandlerLoadError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except (CoordinatorUnreachable, StateLogDamaged) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # most often: the port or endpoint is taken (its text names it)
        print(f"{prog}: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def coordinator_main(argv: Sequence[str] | None = None) -> int:
    from cluster.coordinator.server import serve
    return _role("cluster-coordinator", "Cluster coordinator: membership and discovery.",
                 CoordinatorConfig, serve, argv)  # type: ignore[arg-type]


def gateway_main(argv: Sequence[str] | None = None) -> int:
    from cluster.gateway.server import serve
    return _role("cluster-gateway", "Cluster gateway: HTTP/1.1 in, workers over ZeroMQ.",
                 GatewayConfig, serve, argv)  # type: ignore[arg-type]


def worker_main(argv: Sequence[str] | None = None) -> int:
    from cluster.worker.server import serve
    return _role("cluster-worker", "Cluster worker: runs --handler for every gateway.",
                 WorkerConfig, serve, argv)  # type: ignore[arg-type]


def run_main(argv: Sequence[str] | None = None) -> int:
    from cluster.commands.supervisor import Supervisor
    from cluster.worker.loader import load_handler
    try:
        config = parse(RunConfig, argv, "cluster run",
                       "Start coordinator, gateways and workers on this machine.")
        setup_logging(config.log_level, "cluster", config.log_format)
        load_handler(config.handler, config.app_dir)  # a broken handler fails here, once
    except (ConfigError, HandlerLoadError) as exc:
        print(f"cluster run: {exc}", file=sys.stderr)
        return 2
    return Supervisor(config).run()


def keygen_main(argv: Sequence[str]) -> int:
    """`cluster keygen DIR [NAME...] [--export DIR2]`: a key pair per name (default: one
    per role), keeping pairs that exist. Every process given DIR as --keys allows them
    all. With --export, each DIR2/NAME that exists gets NAME's secret and the public
    keys alone (compose mounts one volume per role there)."""
    from cluster.plumbing.security import ROLE_KEYS, export, fingerprint, keygen
    args = list(argv)
    to = ""
    if "--export" in args:
        at = args.index("--export")
        to = args[at + 1] if at + 1 < len(args) else ""
        del args[at:at + 2]
    if not args or args[0].startswith("-") or ("--export" in argv and not to):
        print("usage: cluster keygen DIR [NAME...] [--export DIR2]  (names default to "
              f"{' '.join(ROLE_KEYS)})", file=sys.stderr)
        return 2
    directory, names = args[0], list(args[1:]) or list(ROLE_KEYS)
    try:
        written = keygen(directory, names)
        exported = export(directory, to) if to else []
    except (ConfigError, OSError) as exc:
        print(f"cluster keygen: {exc}", file=sys.stderr)
        return 2
    import zmq.auth
    for name in names:
        public, _ = zmq.auth.load_certificate(f"{directory}/{name}.key")
        state = "written" if name in written else "kept"
        where = f"; exported to {to}/{name}" if name in exported else ""
        print(f"{name}: {directory}/{name}.key_secret ({state}), fingerprint "
              f"{fingerprint(public)}{where}")
    return 0


def probe_main(argv: Sequence[str]) -> int:
    """`cluster probe ready|live [HOST:]PORT`: 0 if the process on that metrics port
    says yes, 1 if not (or no answer), with its answer on one line: for container
    healthchecks, where no curl is installed."""
    import urllib.error
    import urllib.request
    if len(argv) != 2 or argv[0] not in ("ready", "live"):
        print("usage: cluster probe ready|live [HOST:]PORT  (a metrics port)", file=sys.stderr)
        return 2
    host, _, port = argv[1].rpartition(":")
    url = f"http://{host or '127.0.0.1'}:{port}/{argv[0]}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            print(answer.read().decode(errors="replace").strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{exc.code}: {exc.read().decode(errors='replace').strip()}")
    except (OSError, ValueError) as exc:
        print(f"cluster probe: {url}: {exc}", file=sys.stderr)
    return 1


def repair_main(argv: Sequence[str]) -> int:
    """`cluster repair --data-dir DIR`: cut the coordinator's state log at its first
    damage, saying what that drops. Run it only with the coordinator stopped."""
    from pathlib import Path

    from cluster.coordinator.wal import repair
    if len(argv) != 2 or argv[0] != "--data-dir":
        print("usage: cluster repair --data-dir DIR  (with the coordinator stopped)",
              file=sys.stderr)
        return 2
    directory = Path(argv[1])
    if not (directory / "state.log").is_file():
        print(f"cluster repair: no state log in {directory}", file=sys.stderr)
        return 2
    try:
        kept, damage = repair(directory)
    except OSError as exc:
        print(f"cluster repair: {exc}", file=sys.stderr)
        return 1
    if damage is None:
        print(f"cluster repair: {directory}/state.log is whole ({kept} records); "
              "nothing cut")
    else:
        dropped = damage.later + 1
        print(f"cluster repair: cut {directory}/state.log at byte {damage.offset} "
              f"({damage.reason}): {kept} records kept, {dropped} dropped (the damaged "
              f"one and {damage.later} after it); the next start begins a new epoch")
    return 0


def routes_main(argv: Sequence[str]) -> int:
    from cluster.app import App
    from cluster.worker.loader import import_object
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: cluster routes pkg.module:app", file=sys.stderr)
        return 2
    try:
        app = import_object(argv[0])
    except HandlerLoadError as exc:
        print(f"cluster routes: {exc}", file=sys.stderr)
        return 2
    if not isinstance(app, App):
        print(f"cluster routes: {argv[0]} is not an App", file=sys.stderr)
        return 2
    rows = app.route_map()
    width_m = max([len(r[0]) for r in rows] + [7])
    width_p = max([len(r[1]) for r in rows] + [4])
    print(f"{'METHODS':<{width_m}}  {'PATH':<{width_p}}  VIEW")
    for methods, pattern, view in rows:
        print(f"{methods:<{width_m}}  {pattern:<{width_p}}  {view}")
    if app.not_found_view is not None:
        nf = app.not_found_view
        print(f"{'*':<{width_m}}  {'(not found)':<{width_p}}  {nf.__module__}.{nf.__qualname__}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": run_main,
    "routes": routes_main,
    "coordinator": coordinator_main,
    "gateway": gateway_main,
    "worker": worker_main,
    "keygen": keygen_main,
    "probe": probe_main,
    "repair": repair_main,
}


def version() -> str:
    """`cluster 0.2.0 (cluster-server, Python 3.11.7, compiled with mypyc)`: what is
    running, and whether its hot modules are compiled (cluster/compiled.py)."""
    from importlib import metadata
    try:
        number = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        number = "unknown (not installed)"
    from cluster import compiled
    return f"cluster {number} ({DISTRIBUTION}, Python {sys.version.split()[0]}, " \
        f"{compiled.MODE})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args and args[0] in ("-V", "--version"):
        print(version())
        return 0
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(args[0], COMMANDS, 1, 0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"cluster: unknown command {args[0]!r}{hint}; commands: "
              f"{', '.join(COMMANDS)}; `cluster --help` says what each does", file=sys.stderr)
        return 2
    return COMMANDS[args[0]](args[1:])


def entry(fn: Callable[[], int]) -> Callable[[], None]:
    def run() -> None:
        logging.captureWarnings(True)
        sys.exit(fn())
    return run


cluster = entry(main)
cluster_coordinator = entry(coordinator_main)
cluster_gateway = entry(gateway_main)
cluster_worker = entry(worker_main)
