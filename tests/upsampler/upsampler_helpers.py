"""Helpers for upsampler tests: the fake child's config, record and switches; polling."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from inference.upsampler import UpsamplerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")
TEST_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


class FakeChild:
    """Paths and probes of one test's fake upsampler child."""

    def __init__(self, tmp_path: Path):
        self.record_path = tmp_path / "child-record.json"
        self.control_path = tmp_path / "child-control.json"
        self.run_dir = tmp_path / "run"

    def config(self, *switches: str, **overrides) -> UpsamplerConfig:
        """A small, fast config whose command is the fake server with `switches`."""
        command = [sys.executable, str(FAKE_SERVER), "--record", str(self.record_path),
                   "--control", str(self.control_path), *switches]
        settings = dict(
            enabled=True, model=TEST_MODEL, command=command, gpus="3",
            gpu_memory_utilization=0.3, max_model_len=2048, request_timeout_s=3.0,
            startup_timeout_s=30.0, health_interval_s=0.1, health_timeout_s=3.0,
            health_failures_to_restart=2, restart_backoff_s=0.1, restart_backoff_max_s=0.4,
            breaker_failures=2, breaker_cooldown_s=60.0, stop_grace_s=3.0, log_dir=self.run_dir,
        )
        settings.update(overrides)
        return UpsamplerConfig(**settings)

    def record(self) -> dict:
        return json.loads(self.record_path.read_text())

    def control(self, **switches) -> None:
        self.control_path.write_text(json.dumps(switches))

    async def chat_requests(self, port: int) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/stats") as response:
                return (await response.json())["chat_requests"]


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0,
                   what: str = "condition") -> None:
    """Polls `condition` until true; fails the test with `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a running (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"
