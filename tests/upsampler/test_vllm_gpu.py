"""The real `vllm serve` path: a small vision-language model rewrites a prompt from an image."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import shlex
from pathlib import Path

import pytest
from PIL import Image
from upsampler_helpers import pid_alive, wait_for

from inference.upsampler import PromptUpsampler, UpsamplerConfig

# Small enough for any GPU of the project; override to try the production model.
GPU_TEST_MODEL = os.environ.get("UPSAMPLER_TEST_MODEL", "Qwen/Qwen2.5-VL-3B-Instruct")
# setup.sh --upsampler puts vLLM in its own venv (it pins its own torch); UPSAMPLER_CMD overrides.
OWN_VENV_VLLM = Path(__file__).resolve().parents[2] / ".venv-upsampler" / "bin" / "vllm"


def _command() -> list[str] | None:
    if os.environ.get("UPSAMPLER_CMD"):
        return shlex.split(os.environ["UPSAMPLER_CMD"])
    return [str(OWN_VENV_VLLM), "serve"] if OWN_VENV_VLLM.exists() else None


def _skip_reason() -> str | None:
    if _command() is None and importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (setup.sh --upsampler installs it into .venv-upsampler)"
    import torch  # the test process may use torch; the upsampler package never does

    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


@pytest.mark.gpu
@pytest.mark.timeout(1800)
def test_vllm_serve_rewrites_a_prompt_from_an_image(tmp_path):
    """A real vllm serve child becomes ready, rewrites a short prompt with an image into a longer one, and stop() ends it."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    image = io.BytesIO()
    Image.new("RGB", (832, 480), (40, 90, 160)).save(image, format="JPEG")
    config = UpsamplerConfig(enabled=True, model=GPU_TEST_MODEL, command=_command(),
                             gpus=os.environ.get("UPSAMPLER_GPUS"),
                             gpu_memory_utilization=0.3, max_model_len=4096, request_timeout_s=120.0,
                             startup_timeout_s=1500.0, log_dir=tmp_path)

    async def scenario():
        upsampler = PromptUpsampler(config)
        await upsampler.start()
        try:
            await wait_for(lambda: upsampler.status()["state"] in ("ready", "failed"),
                           timeout_s=1500.0, what="vllm serve ready")
            status = upsampler.status()
            assert status["state"] == "ready", f"vllm did not start: {status['last_error']}"
            result = await upsampler.upsample("a castle by the sea", image.getvalue())
            assert result.upsampled, result.error
            assert len(result.prompt.split()) > 8 and len(result.prompt.split()) <= config.word_cap
            pid = status["pid"]
        finally:
            await upsampler.stop()
        assert not pid_alive(pid)

    asyncio.run(scenario())
