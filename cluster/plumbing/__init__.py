"""What every process of the cluster stands on, and no handler needs: the wire format
and its ZeroMQ pump, the link to the coordinator, configuration, process lifecycle,
metrics, CURVE security, child supervision, and response-header checks."""
