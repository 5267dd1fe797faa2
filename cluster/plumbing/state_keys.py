"""Which shared-state keys belong to the framework: those beginning with an upper-case
letter (WORKER, GATEWAYS, ...), read-only for handlers. The handler API checks it
before a write leaves the worker; the coordinator checks it again as it applies one."""


def framework_key(key: str) -> bool:
    return bool(key) and key[0].isupper()
