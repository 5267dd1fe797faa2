"""The gateway: client sockets, HTTP/1.1, dispatch to workers over ZeroMQ."""
