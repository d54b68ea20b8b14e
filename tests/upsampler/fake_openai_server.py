"""A small OpenAI-compatible server that stands in for `vllm serve` in the upsampler tests.

Run as its own process through the upsampler's command override; it takes
vLLM's command line (model positional, --host, --port, --served-model-name,
other flags ignored) plus these switches of its own:

  --record PATH        write {"pid", "argv", "env", "grandchild_pid"} as JSON at start
  --control PATH       JSON read at every request: {"hang_chat": true} never answers chat,
                       {"chat_status": 500} answers chat with that status,
                       {"health_status": 503} answers /health with that status
  --exit-after N       exit (code 3) right after answering the Nth chat request
  --startup-delay S    sleep S seconds before listening (a model that loads slowly)
  --spawn-grandchild   start a sleeping child in the same process group, like vLLM's engine core

Chat answers are deterministic: "A detailed scene: <user text>, <image note>, ...".
GET /stats answers {"chat_requests": n, "pid": pid}.
"""

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--control", type=Path, default=None)
    parser.add_argument("--exit-after", type=int, default=0)
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--spawn-grandchild", action="store_true")
    args, _vllm_flags = parser.parse_known_args(argv)
    return args


class FakeUpsampler:
    """Request handlers and counters of the fake server."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.served_name = args.served_model_name or args.model
        self.chat_requests = 0

    def control(self) -> dict:
        if self.args.control is None or not self.args.control.exists():
            return {}
        return json.loads(self.args.control.read_text() or "{}")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.control().get("health_status", 200))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.served_name, "object": "model"}]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"chat_requests": self.chat_requests, "pid": os.getpid()})

    async def chat(self, request: web.Request) -> web.Response:
        self.chat_requests += 1
        control = self.control()
        if control.get("hang_chat"):
            await asyncio.sleep(3600)
        if "chat_status" in control:
            return web.json_response({"error": "forced failure"}, status=control["chat_status"])
        body = await request.json()
        if body.get("model") != self.served_name:
            return web.json_response({"error": f"model {body.get('model')!r} not served"}, status=404)
        text = answer_for(body["messages"])
        if self.args.exit_after and self.chat_requests >= self.args.exit_after:
            asyncio.get_running_loop().call_later(0.05, os._exit, 3)
        return web.json_response({
            "id": f"chatcmpl-{self.chat_requests}", "object": "chat.completion",
            "model": self.served_name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
        })


def answer_for(messages: list[dict]) -> str:
    """The deterministic rewrite: echoes the user's text and says whether an image arrived."""
    has_system = any(message["role"] == "system" for message in messages)
    user = [message for message in messages if message["role"] == "user"][-1]["content"]
    parts = user if isinstance(user, list) else [{"type": "text", "text": user}]
    text = " ".join(part["text"] for part in parts if part["type"] == "text")
    images = [part["image_url"]["url"] for part in parts if part["type"] == "image_url"]
    if images:
        header, data = images[0].split(",", 1)
        note = f"image {header.split(';')[0][5:]} of {len(base64.b64decode(data))} bytes"
    else:
        note = "no image"
    system = "with system prompt" if has_system else "without system prompt"
    return (f'  "A detailed scene: {text.removeprefix("Short prompt: ")}, {note}, {system}, '
            f'soft evening light over wet stones while leaves drift in the wind."  ')


def write_record(args: argparse.Namespace, grandchild_pid: int | None) -> None:
    record = {"pid": os.getpid(), "argv": sys.argv, "env": dict(os.environ),
              "grandchild_pid": grandchild_pid}
    partial = args.record.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(args.record)


def main() -> None:
    args = parse_args(sys.argv[1:])
    grandchild = None
    if args.spawn_grandchild:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    if args.startup_delay:
        time.sleep(args.startup_delay)
    if args.record is not None:
        write_record(args, grandchild.pid if grandchild else None)
    server = FakeUpsampler(args)
    app = web.Application()
    app.router.add_get("/health", server.health)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/stats", server.stats)
    app.router.add_post("/v1/chat/completions", server.chat)
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main()
