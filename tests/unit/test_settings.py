"""Server settings from the environment: defaults, clear errors, and the engine launch command."""

from __future__ import annotations

import pytest

from server.settings import Settings, SettingsError


def test_defaults_match_the_protocol():
    """Without variables the server listens on 8080/8765 on all interfaces with the sim engine."""
    s = Settings.from_env({})
    assert (s.http_port, s.ws_port, s.ws_host, s.engine) == (8080, 8765, "0.0.0.0", "sim")
    assert s.allowed_origins is None and s.auth_token == ""


@pytest.mark.parametrize("env,needle", [
    ({"WS_PORT": "x"}, "WS_PORT='x' is not an integer"),
    ({"HTTP_PORT": "70000"}, "HTTP_PORT=70000 is outside 0..65535"),
    ({"CONTROL_RATE": "fast"}, "CONTROL_RATE='fast' is not a number"),
    ({"ENGINE": "magic"}, "ENGINE='magic'"),
    ({"ENGINE": "lingbot-fast"}, "needs MODEL_DIR"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"HEARTBEAT_LATE_S": "20"}, "HEARTBEAT_LATE_S=20 is longer than HEARTBEAT_TIMEOUT_S=10"),
    ({"INIT_RATE": "0"}, "INIT_RATE=0.0 is outside"),
])
def test_bad_values_name_the_variable(env, needle):
    """A bad variable is refused with a message naming it and what was expected."""
    with pytest.raises(SettingsError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        Settings.from_env(env)


def test_origins_list_is_parsed():
    """ALLOWED_ORIGINS is a comma-separated list; '*' means any origin."""
    assert Settings.from_env({"ALLOWED_ORIGINS": "https://a.example, https://b.example"}).allowed_origins == [
        "https://a.example", "https://b.example"]
    assert Settings.from_env({"ALLOWED_ORIGINS": "*"}).allowed_origins is None


def test_engine_command_single_and_torchrun():
    """One GPU (or none) runs the engine as a plain process; NUM_GPUS>1 wraps it in torchrun with the rendezvous args."""
    single = Settings.from_env({"ENGINE_ARGS": "--max-batch 2"}).engine_command("tcp://127.0.0.1:5")
    assert single[1:5] == ["-m", "inference.engine", "--engine", "sim"] and single[-2:] == ["--max-batch", "2"]
    group = Settings.from_env({"ENGINE": "lingbot-fast", "MODEL_DIR": "m", "NUM_GPUS": "8"}).engine_command("e")
    assert group[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=8" in group
    assert group[group.index("--model-dir") + 1] == "m"
    multi = Settings.from_env({"NUM_GPUS": "8", "TORCHRUN_ARGS": "--nnodes=2 --rdzv-endpoint=host0:29500"})
    cmd = multi.engine_command("e")
    assert "--standalone" not in cmd and cmd[3:5] == ["--nnodes=2", "--rdzv-endpoint=host0:29500"]
