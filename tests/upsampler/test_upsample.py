"""PromptUpsampler against the fake OpenAI server: rewrites, cache, timeouts, breaker, disabled."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from upsampler_helpers import wait_for

from inference.upsampler import PromptUpsampler, UpsamplerConfig


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


async def ready(upsampler: PromptUpsampler) -> dict:
    await wait_for(lambda: upsampler.status()["state"] == "ready", what="upsampler ready")
    return upsampler.status()


@pytest.mark.timeout(60)
def test_rewrite_is_cached_per_prompt_and_image(fake_child):
    """A rewrite comes back cleaned, a repeat is served from the cache without a request, and another image misses."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config())
        await upsampler.start()
        try:
            port = (await ready(upsampler))["port"]
            first = await upsampler.upsample("a castle", png((200, 10, 10)))
            assert first.upsampled and not first.cached and first.error is None
            assert first.prompt.startswith("A detailed scene: a castle, image image/png")
            assert "with system prompt" in first.prompt and first.prompt.endswith("wind.")
            again = await upsampler.upsample("a castle", png((200, 10, 10)))
            assert again.cached and again.prompt == first.prompt
            assert await fake_child.chat_requests(port) == 1
            other = await upsampler.upsample("a castle", png((10, 10, 200)))
            assert other.upsampled and not other.cached
            assert await fake_child.chat_requests(port) == 2
            big = await upsampler.upsample("a castle", png((0, 90, 0), size=(3000, 1500)))
            assert "image image/jpeg" in big.prompt  # shrunk to image_max_side and re-encoded
            text_only = await upsampler.upsample("a castle")
            assert "no image" in text_only.prompt
            cache = upsampler.status()["cache"]
            assert (cache["hits"], cache["misses"]) == (1, 4)
        finally:
            await upsampler.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_hanging_model_times_out_then_opens_breaker(fake_child):
    """Requests to a hanging model fall back after the timeout, and after two failures fall back at once without a request."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config(request_timeout_s=0.5, breaker_failures=2))
        await upsampler.start()
        try:
            port = (await ready(upsampler))["port"]
            fake_child.control(hang_chat=True)
            for attempt in range(2):
                result = await upsampler.upsample(f"a harbour {attempt}")
                assert result.prompt == f"a harbour {attempt}" and not result.upsampled
                assert result.error == "upsampler timed out after 0.5 s"
            assert await fake_child.chat_requests(port) == 2
            blocked = await upsampler.upsample("a harbour at dawn")
            assert blocked.prompt == "a harbour at dawn" and not blocked.upsampled
            assert "circuit open" in blocked.error
            assert await fake_child.chat_requests(port) == 2
            status = upsampler.status()
            assert status["state"] == "failed" and status["breaker"]["state"] == "open"
        finally:
            await upsampler.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_server_errors_fall_back_with_the_reason(fake_child):
    """A 500 from the model falls back to the user's prompt and names the status in the error."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config())
        await upsampler.start()
        try:
            await ready(upsampler)
            fake_child.control(chat_status=500)
            result = await upsampler.upsample("a desert road")
            assert (result.prompt, result.upsampled) == ("a desert road", False)
            assert result.error.startswith("upsampler answered 500")
            not_image = await upsampler.upsample("a desert road", b"GIF89a-not-really")
            assert not not_image.upsampled and "expected JPEG, PNG or WebP" in not_image.error
        finally:
            await upsampler.stop()

    asyncio.run(scenario())


def test_disabled_upsampler_passes_prompt_through():
    """With the upsampler disabled the user's prompt comes back unchanged and status says disabled."""

    async def scenario():
        upsampler = PromptUpsampler(UpsamplerConfig(enabled=False))
        await upsampler.start()
        result = await upsampler.upsample("a castle", b"\x89PNG")
        assert (result.prompt, result.upsampled, result.cached) == ("a castle", False, False)
        assert result.error == "upsampler disabled"
        status = upsampler.status()
        assert (status["state"], status["pid"]) == ("disabled", None)
        await upsampler.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_requests_before_ready_fall_back_at_once(fake_child):
    """While the model is still loading, upsample answers with the user's prompt and says it is starting."""

    async def scenario():
        upsampler = PromptUpsampler(fake_child.config("--startup-delay", "3"))
        await upsampler.start()
        try:
            result = await upsampler.upsample("a forest")
            assert (result.prompt, result.upsampled) == ("a forest", False)
            assert result.error == "upsampler is starting, not ready"
            assert upsampler.status()["state"] == "starting"
        finally:
            await upsampler.stop()

    asyncio.run(scenario())
