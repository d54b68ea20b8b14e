"""What we ask the vision-language model, and how its answer becomes a prompt.

Pure functions, no I/O: the chat-completions request body (our system prompt,
the user's prompt, the start image as a `data:` URL), the answer's extraction
and its sanitising.
"""

from __future__ import annotations

import base64
import io
import re

from PIL import Image, UnidentifiedImageError

# Bump whenever SYSTEM_PROMPT changes: it is part of every cache key.
SYSTEM_PROMPT_VERSION = "world-explore-v1"
SYSTEM_PROMPT = """\
You write scene descriptions for an interactive world model. The user gives a \
short prompt and usually a start image. The world model turns your description \
into a living video world that the user explores by walking and looking around \
with the keyboard.

Answer with one paragraph of at most 100 words that describes the world:
- what is visible, near and far: setting, main subjects, materials, colours;
- the light and time of day, the weather and the atmosphere;
- the visual style (photograph, painting, animation, game art...), matching the image when there is one;
- what moves by itself: water, clouds, leaves, smoke, people, animals, traffic.

Keep the user's intent: every subject, style and mood the user asked for stays, \
and nothing contradicts the image. Describe the place, never the camera: no \
camera moves, pans, zooms, cuts, shots or changes of viewpoint, because the \
user steers the view. No lists, headings, quotation marks or preamble; reply \
with the description only."""

IMAGE_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_LABEL = re.compile(r"^(?:here is[^:]*|detailed prompt|prompt|description|scene(?: description)?)\s*:\s*",
                    re.IGNORECASE)


class RewriteError(Exception):
    """The model's answer or the user's image cannot be used; the message says why."""


def prepare_image(image: bytes, max_side: int) -> tuple[bytes, str]:
    """Checks the start image and shrinks it to `max_side`; returns (bytes, mime type)."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            kind = opened.format
            if kind not in IMAGE_MIME:
                raise RewriteError(f"start image is {kind or 'unknown'}; expected JPEG, PNG or WebP")
            if max(opened.size) <= max_side:
                opened.verify()
                return image, IMAGE_MIME[kind]
            smaller = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RewriteError(f"start image cannot be decoded ({exc}); expected JPEG, PNG or WebP") from None
    smaller.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    smaller.save(out, format="JPEG", quality=90)
    return out.getvalue(), "image/jpeg"


def chat_request(*, model: str, prompt: str, image: tuple[bytes, str] | None,
                 temperature: float, max_tokens: int, seed: int) -> dict:
    """The OpenAI chat-completions body asking for one rewrite of `prompt`."""
    content: list[dict] = []
    if image is not None:
        data, mime = image
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": f"Short prompt: {prompt}"})
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": content},
        ],
        "temperature": temperature,
        "max_tokens": max_tokens,
        "seed": seed,
        "n": 1,
    }


def answer_text(body: object) -> str:
    """The assistant's text from a chat-completions response body."""
    try:
        text = body["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        raise RewriteError(
            f"answer {str(body)[:200]!r} has no choices[0].message.content; expected an OpenAI chat completion"
        ) from None
    if not isinstance(text, str):
        raise RewriteError(f"answer content is {text!r}; expected text")
    return text


def clean_rewrite(text: str, word_cap: int) -> str:
    """Strips quotes, labels and extra whitespace and cuts to `word_cap` words; rejects empty text."""
    cleaned = " ".join(text.split())
    previous = None
    while cleaned != previous:
        previous = cleaned
        cleaned = _LABEL.sub("", cleaned.strip(_QUOTES + " "))
    words = cleaned.split(" ")
    if len(words) > word_cap:
        cleaned = _cut_to_sentence(" ".join(words[:word_cap]))
    if not cleaned.strip(_QUOTES + " .,;:!?-"):
        raise RewriteError(f"answer {text[:80]!r} is empty after cleaning; expected a scene description")
    return cleaned


def _cut_to_sentence(text: str) -> str:
    """Ends a cut text at its last full sentence (or clause) when that keeps most of it."""
    if text.endswith((".", "!", "?")):
        return text
    sentence_end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if sentence_end >= len(text) // 2:
        return text[: sentence_end + 1]
    clause_end = max(text.rfind(", "), text.rfind("; "))
    if clause_end >= len(text) // 2:
        return text[:clause_end] + "."
    return text.rstrip(",;: -") + "."
