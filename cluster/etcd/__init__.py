"""Membership and shared state on etcd (`--state-backend etcd://...`): no coordinator
process, no single point of failure among ours (docs/scale-out.md)."""
