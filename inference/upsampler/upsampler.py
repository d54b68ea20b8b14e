"""PromptUpsampler: the front's asyncio entry point from short prompt (+ image) to detailed prompt.

Every service failure (not started, restarting, breaker open, busy, timeout,
bad answer) falls back to the user's own prompt with the reason in `error`;
`upsample` raises only for programming mistakes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

import aiohttp

from inference.upsampler.breaker import CircuitBreaker
from inference.upsampler.cache import RewriteCache, RewriteKey
from inference.upsampler.config import UpsamplerConfig
from inference.upsampler.rewrite import (
    SYSTEM_PROMPT_VERSION,
    RewriteError,
    answer_text,
    chat_request,
    clean_rewrite,
    prepare_image,
)
from inference.upsampler.service import UpsamplerService

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class UpsampleResult:
    """The prompt to use and how it came about."""

    prompt: str  # final prompt (the user's prompt on fallback)
    upsampled: bool  # True when the model's rewrite is used
    cached: bool  # True when the rewrite came from the cache, without asking the model
    error: str | None  # why it fell back (None when upsampled)


class _ServiceFailure(Exception):
    """The child failed to answer usefully in a way that counts against the breaker."""


class PromptUpsampler:
    """Owns the upsampler child (when enabled), its breaker and the cache of rewrites."""

    def __init__(self, config: UpsamplerConfig):
        self.config = config
        self._breaker = CircuitBreaker(threshold=config.breaker_failures,
                                       cooldown_s=config.breaker_cooldown_s)
        self._cache = RewriteCache(config.cache_size)
        self._service = UpsamplerService(config, self._breaker) if config.enabled else None
        self._http: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self._upsampled = 0
        self._fallbacks = 0
        self._last_request_error: str | None = None

    async def start(self) -> None:
        """Launches the child in the background and returns at once; no-op when disabled."""
        if self._service is None:
            return
        self._http = aiohttp.ClientSession()
        await self._service.start(self._http)

    async def stop(self) -> None:
        """Terminates the child's whole process group (SIGKILL after the grace period)."""
        if self._service is not None:
            await self._service.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def upsample(self, prompt: str, image: bytes | None = None) -> UpsampleResult:
        """The detailed prompt for `prompt` and the start image, or `prompt` itself on any failure."""
        if self._service is None:
            return UpsampleResult(prompt=prompt, upsampled=False, cached=False, error="upsampler disabled")
        if not prompt.strip():
            return self._fallback(prompt, "prompt is empty; expected text to upsample")
        key = RewriteKey(
            model=self.config.model, system_prompt_version=SYSTEM_PROMPT_VERSION,
            prompt=prompt.strip(), image_sha256=hashlib.sha256(image).hexdigest() if image else None,
            temperature=self.config.temperature, max_tokens=self.config.max_tokens,
            seed=self.config.seed,
        )
        rewrite = self._cache.get(key)
        if rewrite is not None:
            self._upsampled += 1
            return UpsampleResult(prompt=rewrite, upsampled=True, cached=True, error=None)
        if self._service.state != "ready":
            return self._fallback(prompt, f"upsampler is {self._service.state}, not ready")
        if self._in_flight >= self.config.max_pending:
            return self._fallback(prompt, f"upsampler busy: {self._in_flight} requests in flight "
                                          f"(max_pending={self.config.max_pending})")
        self._in_flight += 1
        try:
            return await self._ask(key, prompt, image)
        finally:
            self._in_flight -= 1

    async def _ask(self, key: RewriteKey, prompt: str, image: bytes | None) -> UpsampleResult:
        try:
            prepared = None
            if image:
                prepared = await asyncio.to_thread(prepare_image, image, self.config.image_max_side)
        except RewriteError as exc:
            return self._fallback(prompt, str(exc))
        if not self._breaker.allow():
            return self._fallback(
                prompt, f"upsampler circuit open after {self._breaker.consecutive_failures} failures; "
                        f"next try in {self._breaker.retry_in_s():.1f} s")
        body = chat_request(model=self.config.served_model_name, prompt=key.prompt, image=prepared,
                            temperature=key.temperature, max_tokens=key.max_tokens, seed=key.seed)
        outcome_recorded = False
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                answer = await self._post_chat(body)
            self._breaker.record_success()
            outcome_recorded = True
            rewrite = clean_rewrite(answer, self.config.word_cap)
        except TimeoutError:
            self._breaker.record_failure()
            outcome_recorded = True
            return self._fallback(prompt, f"upsampler timed out after {self.config.request_timeout_s:g} s")
        except _ServiceFailure as exc:
            self._breaker.record_failure()
            outcome_recorded = True
            return self._fallback(prompt, str(exc))
        except RewriteError as exc:
            return self._fallback(prompt, str(exc))
        finally:
            if not outcome_recorded:
                self._breaker.abandon()
        self._cache.put(key, rewrite)
        self._upsampled += 1
        return UpsampleResult(prompt=rewrite, upsampled=True, cached=False, error=None)

    async def _post_chat(self, body: dict) -> str:
        """POSTs the chat request; the answer's text, RewriteError for a client-side problem."""
        assert self._http is not None and self._service is not None
        url = f"{self._service.base_url}/v1/chat/completions"
        try:
            async with self._http.post(url, json=body) as response:
                if response.status >= 500:
                    raise _ServiceFailure(f"upsampler answered {response.status}: "
                                          f"{(await response.text())[:200]!r}")
                if response.status != 200:
                    raise RewriteError(f"upsampler refused the request with {response.status}: "
                                       f"{(await response.text())[:200]!r}")
                payload = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise _ServiceFailure(f"upsampler request failed: {exc!r}") from None
        except ValueError as exc:
            raise _ServiceFailure(f"upsampler answer is not JSON: {exc}") from None
        return answer_text(payload)

    def _fallback(self, prompt: str, error: str) -> UpsampleResult:
        self._fallbacks += 1
        self._last_request_error = error
        log.info("upsampler fallback to the user's prompt: %s", error)
        return UpsampleResult(prompt=prompt, upsampled=False, cached=False, error=error)

    def status(self) -> dict:
        """JSON-able state for /status: disabled | starting | ready | restarting | failed | stopped."""
        base = {"enabled": self.config.enabled, "model": self.config.model,
                "served_model_name": self.config.served_model_name,
                "system_prompt_version": SYSTEM_PROMPT_VERSION,
                "breaker": self._breaker.snapshot(), "cache": self._cache.snapshot(),
                "requests": {"upsampled": self._upsampled, "fallbacks": self._fallbacks,
                             "in_flight": self._in_flight},
                "last_request_error": self._last_request_error}
        if self._service is None:
            return {**base, "state": "disabled", "pid": None, "port": None, "restarts": 0,
                    "last_error": None}
        service = self._service.snapshot()
        state = service["state"]
        if state not in ("stopped", "failed") and self._breaker.state == "open":
            state = "failed"
        last_error = service["last_error"] or self._last_request_error
        return {**base, **service, "state": state, "last_error": last_error}
