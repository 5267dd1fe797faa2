"""The one exception tree of `cluster`.

    ClusterError
    ├── ConfigError          bad flag or environment value; raised once, at start
    ├── HandlerLoadError     --handler names nothing loadable
    ├── CoordinatorUnreachable  no answer from --coordinator at start
    ├── WireError            untrusted bytes from a peer are not a valid envelope
    ├── StateError           (cluster.state) a state operation was refused: a limit,
    │   │                    a bad argument; uncaught in a handler: 500
    │   ├── ReadOnlyKey      an upper-case (framework) key was written
    │   └── StateUnavailable the coordinator cannot be reached; uncaught: 503
    └── PublisherError       (cluster.publisher) no coordinator, or no gateway

HTTP parse failures are not exceptions that cross modules: the gateway's HTTP
core turns them into a status (400, 408, 413, 414, 431) at the point of failure.
"""


class ClusterError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ClusterError):
    """A flag or its environment twin has a value we cannot use."""


class HandlerLoadError(ClusterError):
    """`--handler pkg:obj` could not be imported or is not a handler."""


class CoordinatorUnreachable(ClusterError):
    """A gateway or worker got no answer from the coordinator when it started."""


class WireError(ClusterError):
    """A ZeroMQ frame is not a valid msgpack envelope of our protocol."""
