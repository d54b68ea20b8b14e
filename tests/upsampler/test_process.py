"""The upsampler child process: scrubbed environment, flags, restarts, shutdown, parent death."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from upsampler_helpers import REPO_ROOT, pid_alive, wait_for

from inference.upsampler import PromptUpsampler

TORCHRUN_ENV = {
    "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0", "ROLE_RANK": "0", "ROLE_NAME": "default", "GROUP_WORLD_SIZE": "1",
    "ROLE_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
    "OMP_NUM_THREADS": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "0",
    "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_ERROR_FILE": "/nonexistent/error.json",
}


async def ready(upsampler: PromptUpsampler) -> dict:
    await wait_for(lambda: upsampler.status()["state"] == "ready", what="upsampler ready")
    return upsampler.status()


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.timeout(60)
def test_child_gets_scrubbed_environment_and_serving_flags(fake_child, monkeypatch):
    """Under torchrun's variables the child sees none of them, gets spawn/NVML/GPU settings and loopback flags with the memory budget."""
    for name, value in {**TORCHRUN_ENV, "CUDA_VISIBLE_DEVICES": "0,1"}.items():
        monkeypatch.setenv(name, value)

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config())
        await upsampler.start()
        try:
            await ready(upsampler)
        finally:
            await upsampler.stop()

    asyncio.run(scenario())
    record = fake_child.record()
    env, argv = record["env"], record["argv"]
    leaked = sorted(name for name in env if name in TORCHRUN_ENV or name.startswith("TORCHELASTIC_"))
    assert leaked == []
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert env["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert argv[argv.index("--host") - 1] == "Qwen/Qwen2.5-VL-3B-Instruct"  # vllm serve <model> --host ...
    assert flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--gpu-memory-utilization") == "0.3"
    assert flag(argv, "--max-model-len") == "2048"
    assert json.loads(flag(argv, "--limit-mm-per-prompt")) == {"image": 1, "video": 0}
    assert flag(argv, "--served-model-name") == "prompt-upsampler"
    assert "--tokenizer-mode" not in argv


@pytest.mark.timeout(60)
def test_killed_child_is_restarted(fake_child):
    """Killing the child by its pid brings a new child with a new pid that is ready and answers again."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config("--spawn-grandchild"))
        await upsampler.start()
        try:
            first = await ready(upsampler)
            grandchild = fake_child.record()["grandchild_pid"]
            os.kill(first["pid"], signal.SIGKILL)
            await wait_for(lambda: upsampler.status()["restarts"] >= 1, what="a restart")
            second = await ready(upsampler)
            assert second["pid"] != first["pid"] and second["restarts"] == 1
            assert "exited with code -9" in second["last_error"]
            assert not pid_alive(grandchild)  # the dead child's whole group was cleaned up
            result = await upsampler.upsample("a lighthouse")
            assert result.upsampled and "a lighthouse" in result.prompt
        finally:
            await upsampler.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_unhealthy_child_is_restarted(fake_child):
    """A child whose /health keeps failing is replaced, and the reason shows in status."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config())
        await upsampler.start()
        try:
            first = await ready(upsampler)
            fake_child.control(health_status=503)
            await wait_for(lambda: upsampler.status()["restarts"] >= 1, what="a restart")
            assert "GET /health answered 503" in upsampler.status()["last_error"]
            fake_child.control()
            second = await ready(upsampler)
            assert second["pid"] != first["pid"]
        finally:
            await upsampler.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_stop_leaves_no_process(fake_child):
    """stop() ends the child and the processes it spawned, and removes the pid file."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config("--spawn-grandchild"))
        await upsampler.start()
        status = await ready(upsampler)
        pids = [status["pid"], fake_child.record()["grandchild_pid"]]
        assert all(pid_alive(pid) for pid in pids)
        assert (fake_child.run_dir / "upsampler.pid").read_text().strip() == str(status["pid"])
        await upsampler.stop()
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert not (fake_child.run_dir / "upsampler.pid").exists()
        assert upsampler.status()["state"] == "stopped"

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_child_that_cannot_start_opens_breaker(fake_child):
    """A command that exits at once is retried with backoff, reports its last log line, and ends in state failed."""

    async def scenario():
        # argparse rejects the value and exits with code 2, like a vLLM given a bad flag.
        upsampler = PromptUpsampler(fake_child.config("--startup-delay", "soon", breaker_failures=2))
        await upsampler.start()
        try:
            await wait_for(lambda: upsampler.status()["state"] == "failed", what="state failed")
            status = upsampler.status()
            assert "exited with code 2 during start-up" in status["last_error"]
            assert "invalid float value: 'soon'" in status["last_error"]
            assert status["restarts"] >= 1 and status["breaker"]["state"] == "open"
            result = await upsampler.upsample("a castle")
            assert result.prompt == "a castle" and not result.upsampled
        finally:
            await upsampler.stop()

    asyncio.run(scenario())


PARENT_SCRIPT = """
import asyncio, json, sys
from inference.upsampler import PromptUpsampler, UpsamplerConfig

async def main():
    upsampler = PromptUpsampler(UpsamplerConfig(**json.loads(sys.argv[1])))
    await upsampler.start()
    while upsampler.status()["state"] != "ready":
        await asyncio.sleep(0.05)
    print(upsampler.status()["pid"], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_child_dies_with_its_parent(fake_child):
    """When the process owning the upsampler is killed with SIGKILL, the child terminates too."""
    config = fake_child.config()
    settings = {"enabled": True, "model": config.model, "command": config.command,
                "log_dir": str(fake_child.run_dir), "health_interval_s": 0.1}
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, json.dumps(settings)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert pid_alive(child_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(child_pid):
        os.kill(child_pid, signal.SIGKILL)
        raise AssertionError(f"child {child_pid} outlived its killed parent by 10 s")
