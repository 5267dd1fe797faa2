from __future__ import annotations

import pytest

from cluster.errors import ConfigError
from cluster.plumbing.config import GatewayConfig, RunConfig, WorkerConfig, parse, subset, to_argv


def test_flag_beats_env_beats_default() -> None:
    env = {"CLUSTER_PORT": "9000", "CLUSTER_MAX_BODY": "10"}
    config = parse(GatewayConfig, ["--port", "9001"], "t", "", env)
    assert config.port == 9001 and config.max_body == 10 and config.request_timeout == 30.0


def test_every_field_has_an_env_twin() -> None:
    config = parse(WorkerConfig, [], "t", "", {"CLUSTER_HANDLER": "a:b",
                                                "CLUSTER_HEARTBEAT_INTERVAL": "0.5"})
    assert config.handler == "a:b" and config.heartbeat_interval == 0.5


@pytest.mark.parametrize("argv,env,message", [
    (["--port", "x"], {}, "not a valid int"),
    (["--max-body", "0"], {}, "--max-body"),
    (["--request-timeout", "-1"], {}, "--request-timeout"),
    ([], {"CLUSTER_HEARTBEAT_INTERVAL": "0"}, "--heartbeat-interval"),
    (["--log-level", "loud"], {}, "--log-level"),
])
def test_invalid_values(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(GatewayConfig, argv, "t", "", env)


def test_worker_requires_a_handler() -> None:
    with pytest.raises(ConfigError, match="--handler"):
        parse(WorkerConfig, [], "t", "", {})
    with pytest.raises(ConfigError, match=r"pkg\.module:object"):
        parse(WorkerConfig, ["--handler", "nocolon"], "t", "", {})


def test_config_is_frozen_and_passes_to_children() -> None:
    run = parse(RunConfig, ["--handler", "a:b", "--max-body", "5", "--workers", "3"], "t", "", {})
    with pytest.raises(AttributeError):
        run.port = 1  # type: ignore[misc]
    gateway = subset(run, GatewayConfig, port=0)
    assert gateway.max_body == 5 and not hasattr(gateway, "workers")
    assert parse(GatewayConfig, to_argv(gateway), "t", "", {}) == gateway


def test_every_flag_has_one_place_in_the_help() -> None:
    import dataclasses

    from cluster.plumbing.config import COMMON, GROUPS
    placed = list(COMMON) + [n for names in GROUPS.values() for n in names]
    assert len(placed) == len(set(placed))  # one place each
    for cls in (RunConfig, GatewayConfig, WorkerConfig):
        missing = {f.name for f in dataclasses.fields(cls)} - set(placed)
        assert not missing, missing


@pytest.mark.parametrize(("argv", "value"), [
    ([], False), (["--reload"], True), (["--no-reload"], False), (["--reload", "false"], False),
    (["--reload", "true"], True),
])
def test_switches_read_both_ways(argv: list[str], value: bool) -> None:
    config = parse(RunConfig, ["--handler", "a:b", *argv], "t", "", {})
    assert config.reload is value


def test_a_switch_turned_off_reaches_a_child() -> None:
    run = parse(RunConfig, ["--handler", "a:b", "--no-http2", "--no-pin-workers"], "t", "", {})
    argv = to_argv(subset(run, GatewayConfig))
    assert "--no-http2" in argv and parse(GatewayConfig, argv, "t", "", {}).http2 is False


@pytest.mark.parametrize(("argv", "message"), [
    (["--prot", "80"], r"unknown flag --prot \(did you mean --port\?\); `t --help`"),
    (["--handler", "a:b", "stray"], "unexpected argument 'stray'"),
    (["--handler", "a:b", "--workers", "0"], "--workers must be >= 1"),
    (["--handler", "a:b", "--coordinator", "tcp://10.0.0.1:15999"],
     "cluster run starts a coordinator of its own"),
    (["--no-reload=1", "--handler", "a:b"], "takes no value"),
])
def test_a_mistake_is_one_short_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(RunConfig, argv, "t", "", {})
