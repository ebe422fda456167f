"""A fake model upstream speaking the real wire protocols of OpenAI, Anthropic, Cohere and Hugging Face.

One aiohttp.web server, shared by the provider tests and the benchmarks:

    python -m bench.fake_upstream --host 127.0.0.1 --port 9100   # uvloop when installed; --no-uvloop

or, in tests, `with FakeUpstream() as base_url: ...` (a background thread with its own loop, port 0).

Routes (every one is also served under `/k/{knobs}/...`, so knobs reach requests that name no model):

    POST /v1/chat/completions  OpenAI Chat Completions; Hugging Face router and TGI speak the same.
                               https://platform.openai.com/docs/api-reference/chat/create
                               https://platform.openai.com/docs/api-reference/chat-streaming
                               Stream: `data: {chat.completion.chunk}` lines (a role chunk, one chunk per
                               token, a chunk with finish_reason, a usage chunk with empty choices when
                               `stream_options.include_usage`), then `data: [DONE]`.
    POST /v1/messages          Anthropic Messages. https://docs.anthropic.com/en/api/messages-streaming
                               Stream: `event:` + `data:` pairs message_start (input usage),
                               content_block_start, ping, content_block_delta (text_delta) per token,
                               content_block_stop, message_delta (stop_reason, output usage), message_stop.
                               Requires `anthropic-version`, a key (`x-api-key`, or a Bearer token as
                               recent SDKs send) and `max_tokens`, as the API does.
    POST /v2/chat              Cohere v2 Chat. https://docs.cohere.com/reference/chat-stream
                               Stream: message-start, content-start, content-delta per token
                               (`delta.message.content.text`), content-end, message-end (`finish_reason`,
                               `usage.billed_units` and `usage.tokens`). Requires a Bearer key.
    GET  /v1/models            OpenAI's `{"object": "list", "data": [...]}`; Anthropic's shape when the
                               request has an `anthropic-version` header; Cohere's `{"models": [...]}`
                               when it has an `endpoint` query parameter (as Cohere's list-models allows).

Every POST also answers without `stream` (chat.completion / message / V2ChatResponse JSON).

Output is deterministic: N tokens "tok0", " tok1", ... " tok{N-1}" (see `expected_text`). Input usage is
the number of whitespace-separated words in all message contents (and Anthropic's `system`).
`max_tokens` below N cuts the reply to max_tokens tokens with the "length" finish reason of each protocol.

Knobs are comma-separated `name=value` items in the requested model name (or the `/k/{knobs}` prefix),
so adapters need no special support; a `fake-` prefix on an item is ignored (`fake-tokens=64,delay_ms=5`):

    tokens=N            reply with N tokens (default 16)
    delay_ms=N          pause N ms before each token after the first; ttft_ms=N pauses before the first
    fail=CODE           answer HTTP CODE with the protocol's error body (401 echoes the key it was sent,
                        in full, so tests can prove our adapters never repeat it)
    retry_after=V       Retry-After header value sent with a failure
    fail_times=N,key=K  fail (with `fail`, default 500) the first N requests naming key K, then succeed
    context_too_long    the protocol's context-length 400
    hang                never answer (the handler waits until the client leaves or the server stops)
    hang_after=N        send N tokens, then stall
    cut_after=N         send N tokens, then drop the connection (no terminating chunk)
    end_after=N         send N tokens, then end the body cleanly but without the protocol's final event
    malformed_after=N   send N tokens, then an event whose JSON is invalid, then end the response
    error_after=N       send N tokens, then the protocol's in-stream error (OpenAI `{"error": ...}` chunk,
                        Anthropic `event: error` overloaded_error, Cohere message-end ERROR)

Speed matters (benchmarks compare a proxy against this server): whole stream bodies are rendered once
per (model, tokens, usage) and cached, so a plain request costs one JSON parse and one write.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bench.fake_protocols import (
    LISTINGS,
    Script,
    anthropic_script,
    cohere_script,
    count_words,
    error_body,
    expected_text,
    malformed,
    midstream_error,
    openai_script,
)

__all__ = ["FakeUpstream", "Knobs", "count_words", "expected_text", "make_app", "parse_knobs"]

DEFAULT_TOKENS = 16
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
CLOSING = web.AppKey("closing", asyncio.Event)
FAILURES = web.AppKey("failures", dict[str, int])


@dataclass(frozen=True, slots=True)
class Knobs:
    tokens: int = DEFAULT_TOKENS
    delay_ms: float = 0.0
    ttft_ms: float = 0.0
    fail: int | None = None
    retry_after: str | None = None
    fail_times: int | None = None
    key: str | None = None
    context_too_long: bool = False
    hang: bool = False
    hang_after: int | None = None
    cut_after: int | None = None
    end_after: int | None = None
    malformed_after: int | None = None
    error_after: int | None = None

    @property
    def plain(self) -> bool:
        return (
            not self.delay_ms
            and not self.ttft_ms
            and self.hang_after is None
            and self.cut_after is None
            and self.end_after is None
            and self.malformed_after is None
            and self.error_after is None
        )


_INT_KNOBS = ("tokens", "fail", "fail_times", "hang_after", "cut_after", "end_after", "malformed_after", "error_after")


@functools.lru_cache(maxsize=4096)
def parse_knobs(text: str) -> Knobs:
    values: dict[str, Any] = {}
    for item in text.split(","):
        name, has_value, value = item.strip().partition("=")
        name = name.removeprefix("fake-")
        if name in ("hang", "context_too_long") and not has_value:
            values[name] = True
        elif name in _INT_KNOBS and value.isdigit():
            values[name] = int(value)
        elif name in ("delay_ms", "ttft_ms"):
            try:
                values[name] = float(value)
            except ValueError:
                continue
        elif name in ("retry_after", "key") and has_value:
            values[name] = value
    return Knobs(**values)


def _fail(protocol: str, status: int, key: str | None, knobs: Knobs, context: bool = False) -> web.Response:
    headers = {"Retry-After": knobs.retry_after} if knobs.retry_after else None
    body = error_body(protocol, status, key, context)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _key(protocol: str, request: web.Request) -> str | None:
    if protocol == "anthropic" and request.headers.get("x-api-key"):
        return request.headers["x-api-key"]
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ").strip() or None


async def _send(request: web.Request, script: Script, knobs: Knobs, protocol: str) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    if knobs.plain:
        await response.write(script.body)
        await response.write_eof()
        return response
    await response.write(script.head)
    if knobs.ttft_ms:
        await asyncio.sleep(knobs.ttft_ms / 1000)
    for index in range(len(script.deltas) + 1):
        if index == knobs.cut_after:
            # close() flushes what was written, then drops the connection without the terminating chunk.
            if request.transport is not None:
                request.transport.close()
            return response
        if index == knobs.end_after:
            await response.write_eof()  # a clean end of the HTTP body, but no terminating event
            return response
        if index == knobs.malformed_after or index == knobs.error_after:
            await response.write(malformed(protocol) if index == knobs.malformed_after else midstream_error(protocol))
            await response.write_eof()
            return response
        if index == knobs.hang_after:
            await request.app[CLOSING].wait()
            return response
        if index == len(script.deltas):
            break
        if knobs.delay_ms and index:
            await asyncio.sleep(knobs.delay_ms / 1000)
        await response.write(script.deltas[index])
    await response.write(script.tail)
    await response.write_eof()
    return response


async def _chat(request: web.Request, protocol: str) -> web.StreamResponse:
    try:
        payload = json.loads(await request.read())
    except ValueError:
        payload = None
    key = _key(protocol, request)
    if protocol == "anthropic" and not request.headers.get("anthropic-version"):
        return _fail(protocol, 400, key, Knobs())
    if protocol in ("anthropic", "cohere") and not key:
        return _fail(protocol, 401, key, Knobs())
    messages = payload.get("messages") if isinstance(payload, dict) else None
    model = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or not isinstance(model, str) or not isinstance(messages, list) or not messages:
        return _fail(protocol, 400, key, Knobs())
    if protocol == "anthropic" and not isinstance(payload.get("max_tokens"), int):
        return _fail(protocol, 400, key, Knobs())
    prefix = request.match_info.get("knobs")
    knobs = parse_knobs(f"{prefix},{model}" if prefix else model)
    failure = await _fault(request, protocol, knobs, key)
    if failure is not None:
        return failure
    tokens = knobs.tokens
    limit = payload.get("max_tokens") or payload.get("max_completion_tokens")
    length = False
    if isinstance(limit, int) and 0 < limit < tokens:
        tokens, length = limit, True
    input_tokens = count_words(messages, payload.get("system"))
    if protocol == "openai":
        options = payload.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        script = openai_script(model, tokens, length, usage, input_tokens)
    elif protocol == "anthropic":
        script = anthropic_script(model, tokens, length, input_tokens)
    else:
        script = cohere_script(model, tokens, length, input_tokens)
    if not payload.get("stream"):
        return web.Response(body=script.final, content_type="application/json")
    return await _send(request, script, knobs, protocol)


async def _fault(request: web.Request, protocol: str, knobs: Knobs, key: str | None) -> web.StreamResponse | None:
    if knobs.hang:
        await request.app[CLOSING].wait()
        return web.Response(status=503)
    if knobs.fail_times is not None:
        failures = request.app[FAILURES]
        counter = knobs.key or ""
        failures[counter] = failures.get(counter, 0) + 1
        if failures[counter] <= knobs.fail_times:
            return _fail(protocol, knobs.fail or 500, key, knobs)
        return None
    if knobs.context_too_long:
        return _fail(protocol, 400, key, knobs, context=True)
    if knobs.fail is not None:
        return _fail(protocol, knobs.fail, key, knobs)
    return None


async def openai_chat(request: web.Request) -> web.StreamResponse:
    return await _chat(request, "openai")


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    return await _chat(request, "anthropic")


async def cohere_chat(request: web.Request) -> web.StreamResponse:
    return await _chat(request, "cohere")


async def list_models(request: web.Request) -> web.StreamResponse:
    if request.headers.get("anthropic-version"):
        protocol = "anthropic"
    elif "endpoint" in request.query:
        protocol = "cohere"
    else:
        protocol = "openai"
    prefix = request.match_info.get("knobs")
    knobs = parse_knobs(prefix or "")
    failure = await _fault(request, protocol, knobs, _key(protocol, request))
    if failure is not None:
        return failure
    return web.Response(body=LISTINGS[protocol], content_type="application/json")


async def _on_startup(app: web.Application) -> None:
    app[CLOSING] = asyncio.Event()


async def _on_shutdown(app: web.Application) -> None:
    app[CLOSING].set()  # releases `hang` handlers so shutdown does not wait for them


def make_app() -> web.Application:
    app = web.Application()
    app[FAILURES] = {}
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    for prefix in ("", "/k/{knobs}"):
        app.router.add_post(prefix + "/v1/chat/completions", openai_chat)
        app.router.add_post(prefix + "/v1/messages", anthropic_messages)
        app.router.add_post(prefix + "/v2/chat", cohere_chat)
        app.router.add_get(prefix + "/v1/models", list_models)
    return app


def _runner() -> web.AppRunner:
    # handler_cancellation: a client that gives up on a `hang` must not leave its handler behind.
    return web.AppRunner(make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)


class FakeUpstream:
    """The server on a background thread with its own loop; `with FakeUpstream() as base_url: ...`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.base_url = ""
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("the fake upstream did not start") from self._error
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = _runner()
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
            host, port = runner.addresses[0][:2]
            self.base_url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--no-uvloop", action="store_true", help="stdlib event loop even if uvloop is there")
    args = parser.parse_args(argv)
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        print=lambda text: print(f"fake upstream on http://{args.host}:{args.port}", flush=True),
        loop=_new_loop(uvloop=not args.no_uvloop),
    )


def _new_loop(*, uvloop: bool) -> asyncio.AbstractEventLoop:
    # uvloop (installed with uvicorn[standard]) keeps the fake cheap, so benchmarks measure the proxy.
    if uvloop:
        try:
            import uvloop as fast
        except ImportError:
            pass
        else:
            return fast.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
