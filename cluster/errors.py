"""The one exception tree of `cluster`: every exception this package raises is one
of these, and each is defined here.

    ClusterError
    ├── ConfigError            a bad flag or environment value; raised once, at start
    ├── HandlerLoadError       --handler names nothing loadable
    ├── RouteError             a route pattern that cannot compile (found at import)
    ├── StoppedWhileStarting   SIGTERM or SIGINT while a process was still starting
    ├── ChildFailed            a supervised child did not become ready
    ├── CoordinatorUnreachable no answer from --coordinator at start
    ├── EtcdUnavailable        no etcd member answered within the deadline
    ├── SequencerDeposed       (etcd) the state sequencer's fence failed: it lost the
    │                          election, and the transaction applied nothing
    ├── WireError              untrusted bytes from a peer are not a valid envelope
    ├── PublisherError         (cluster.publisher) no coordinator, or no gateway
    ├── StateError             (cluster.state) a state operation was refused: a limit,
    │   │                      a bad argument; uncaught in a handler: 500
    │   ├── ReadOnlyKey        an upper-case (framework) key was written
    │   └── StateUnavailable   the state cannot be reached; uncaught: 503
    ├── StateLogDamaged        the coordinator's log or snapshot is corrupt: no start
    ├── BadResponse            a handler's answer is not a response we can send: 500
    │   └── BadField           a response header that would split or corrupt it
    ├── BadResponseHead        a worker's response head reached a gateway broken: 502
    ├── ASGIError              an ASGI app sent a message the spec does not allow then
    ├── LifespanError          an ASGI app's lifespan startup failed or never answered
    ├── ClientDisconnected     an ASGI app's send() after its client left (also an
    │                          OSError, as the ASGI spec asks)
    ├── GroupRefused           (cluster.rpc) a client asked to subscribe to a group the
    │                          app's allow() refused: answered "forbidden"
    ├── BadRpcArgument         (cluster.rpc) a built-in method's argument: "bad_request"
    └── CallError              (cluster.client) the server answered a call with an
        │                      error, or it got no answer; `kind` says which
        ├── CallTimeout        no answer within call_timeout
        ├── Disconnected       the connection dropped after the call was sent
        ├── QueueFull          queue_size calls already wait for a connection
        └── ClientClosed       the client was closed

HTTP parse failures are not exceptions that cross modules: the gateway's HTTP
cores turn them into a status (400, 408, 413, 414, 431) at the point of failure.
No exception's text reaches a client: clients get a status, a close code or a
fixed message, and the detail goes to the log.
"""


class ClusterError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ClusterError):
    """A flag or its environment twin has a value we cannot use."""


class HandlerLoadError(ClusterError):
    """`--handler pkg:obj` could not be imported or is not a handler."""


class RouteError(ClusterError):
    """A route pattern cannot be compiled (a programming error, found at import)."""


class StoppedWhileStarting(ClusterError):
    """SIGTERM or SIGINT came while the process was still starting."""


class ChildFailed(ClusterError):
    """A child did not become ready."""


class CoordinatorUnreachable(ClusterError):
    """A gateway or worker got no answer from the coordinator when it started."""


class EtcdUnavailable(ClusterError):
    """No etcd member answered within the deadline."""


class SequencerDeposed(ClusterError):
    """The state sequencer's transaction failed its fence (another gateway holds the
    sequencer key now): nothing of it was applied; the worker commits the batch."""


class WireError(ClusterError):
    """A ZeroMQ frame is not a valid msgpack envelope of our protocol."""


class PublisherError(ClusterError):
    """The coordinator could not be reached, or knows no gateway."""


class StateError(ClusterError):
    """A state operation was refused (a limit, a read-only key, a bad argument)."""


class StateLogDamaged(ClusterError):
    """The coordinator's state log or snapshot is corrupt: it refuses to start."""


class StateUnavailable(StateError):
    """The coordinator cannot be reached: writes are not possible right now."""


class ReadOnlyKey(StateError):
    """Keys beginning with an upper-case letter belong to the framework."""


class BadResponse(ClusterError):
    """The handler's return value is not a response we can send."""


class BadField(BadResponse):
    """A response header that would split or corrupt the response."""


class BadResponseHead(ClusterError):
    """A worker's response part has no valid status or header block (502)."""


class ASGIError(ClusterError):
    """The application sent a message the ASGI spec does not allow at that point."""


class LifespanError(ClusterError):
    """The app reported that its startup failed, or did not answer in time."""


class ClientDisconnected(ClusterError, OSError):
    """Raised in the app by send() after the client has gone (the spec asks for an
    OSError)."""


class GroupRefused(ClusterError):
    """A client asked to subscribe to (or see) a group the app's allow() refused."""


class BadRpcArgument(ClusterError, ValueError):
    """An argument a built-in RPC method cannot take; answered as bad_request."""


class CallError(ClusterError):
    """The server answered a client's call with an error, or it got no answer: `kind`
    is bad_request, not_found, forbidden or internal (cluster.rpc), or one of the
    client's own (timeout, disconnected, queue_full, closed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class CallTimeout(CallError):
    def __init__(self, timeout: float) -> None:
        super().__init__("timeout", f"no answer within {timeout:g} s")


class Disconnected(CallError):
    def __init__(self) -> None:
        super().__init__("disconnected", "the connection dropped before the answer came")


class QueueFull(CallError):
    def __init__(self, size: int) -> None:
        super().__init__("queue_full", f"{size} calls already wait for a connection")


class ClientClosed(CallError):
    def __init__(self) -> None:
        super().__init__("closed", "the client was closed")
