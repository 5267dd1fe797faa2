"""Hypercorn's settings for the HTTP/2 benchmark (`--config python:...`): no cap on
requests per connection (its default, 1,000, ends each of h2load's connections
with GOAWAY long before a run is over, and h2load does not reconnect), and no
access log, as on the cluster side."""

keep_alive_max_requests = 1_000_000_000
accesslog = None
errorlog = "-"
loglevel = "WARNING"
