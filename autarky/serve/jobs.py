"""The bridge between the async app and the engine thread, and the server-sent events it streams.

An API call becomes one `Job` (one engine request per choice); the engine's events come back
through `loop.call_soon_threadsafe` into the job's asyncio queue. `embed` does the same for one
embeddings call with a future. Both are admitted against the same capacity (slots + queue, else
429) and cancel their work in the engine when the client leaves.
"""

from __future__ import annotations

import asyncio
import json

from fastapi.responses import Response

from autarky.generate import SamplingParams
from autarky.serve.engine import EmbedJob, Engine, Event, Request
from autarky.serve.protocol import RequestError


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


class EngineError(RequestError):
    """A request the engine failed: a 500 with OpenAI's error body, handled like any refusal.

    Not a bare exception: Starlette re-raises those after their handler's answer, and uvicorn then
    closes the connection under a client that may already be sending its next request on it.
    """

    def __init__(self, message: str):
        super().__init__(message, status=500, type="server_error")


def check_engine(engine: Engine) -> None:
    """A 503 when the engine thread is not running: nothing handed to it would ever be answered."""
    if not engine.alive:
        raise RequestError(
            "the inference engine is not running; the server must be restarted (see its log)",
            status=503,
            type="server_error",
            code="engine_not_running",
        )


class Job:
    """The engine requests of one API call (one per choice) and their events as they arrive."""

    def __init__(
        self,
        app_state,
        prompts: list[list[int]],
        params: list[SamplingParams],
        logprobs: int | None,
        **request: bool | int | None,
    ):
        """`request`: the `Request` fields every choice shares (prompt_logprobs, generate, end_logprob)."""
        loop = asyncio.get_running_loop()
        self.state = app_state
        self.events: asyncio.Queue = asyncio.Queue()

        def emitter(i: int):
            return lambda event: loop.call_soon_threadsafe(self.events.put_nowait, (i, event))

        self.requests = [
            Request(prompt, p, emitter(i), logprobs=logprobs, **request)
            for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))
        ]
        self.open: set[int] = set()
        self._watcher: asyncio.Task | None = None

    def start(self, receive) -> None:
        """Admit the job (or refuse it: 503 with no engine, 429 at capacity) and hand it to the engine."""
        admit(self.state, len(self.requests))
        self.open = set(range(len(self.requests)))
        for r in self.requests:
            self.state.engine.submit(r)
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive) -> None:
        await disconnected(receive)
        self.events.put_nowait((None, None))

    async def next(self) -> tuple[int, Event]:
        """The next event of any choice; raises ClientGone, or EngineError for an engine error."""
        i, event = await self.events.get()
        if i is None:
            raise ClientGone()
        if event.finish_reason is not None and i in self.open:
            self.open.discard(i)
            self.state.inflight -= 1
            r = self.requests[i]
            if r.first_token_at is not None:
                self.state.metrics.observe(
                    "autarky_time_to_first_token_seconds", r.first_token_at - r.submitted
                )
        if event.error:
            raise EngineError(event.error)
        return i, event

    def close(self) -> None:
        """Cancel whatever has not finished (a vanished client frees its slots at the next step)."""
        if self._watcher is not None:
            self._watcher.cancel()
        for i in self.open:
            self.state.engine.cancel(self.requests[i])
        self.state.inflight -= len(self.open)
        self.open = set()

    async def results(self) -> list[dict]:
        """Wait for every choice to finish: its text, logprobs, finish reason and token counts."""
        out = [
            {
                "text": "",
                "logprobs": [],
                "prompt_logprobs": [],
                "finish_reason": None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            for _ in self.requests
        ]
        try:
            while self.open:
                i, event = await self.next()
                out[i]["text"] += event.text
                out[i]["logprobs"] += event.logprobs
                out[i]["prompt_logprobs"] += event.prompt_logprobs
                if event.finish_reason:
                    out[i].update(
                        finish_reason=event.finish_reason,
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                    )
        finally:
            self.close()
        return out


async def embed(app_state, inputs: list[list[int]], receive) -> list[list[float]]:
    """One vector per input, computed in the engine thread between its decode steps.

    Admitted as completions are (each input one sequence, so a full server answers 429), and a
    client that leaves (ClientGone) or a cancelled call cancels its work there.
    """
    engine: Engine = app_state.engine
    admit(app_state, len(inputs))
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def done(vectors, error):
        try:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result((vectors, error)))
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass

    job = EmbedJob(inputs, done)
    engine.embed(job)
    gone = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait([future, gone], return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            raise ClientGone()
    finally:
        gone.cancel()
        if not future.done():
            engine.cancel(job)
        app_state.inflight -= len(inputs)
    vectors, error = future.result()
    if error:
        raise EngineError(error)
    return vectors


def admit(app_state, sequences: int) -> None:
    """Count `sequences` more in flight, or refuse them: 503 with no engine, 429 at capacity."""
    engine: Engine = app_state.engine
    check_engine(engine)
    capacity = engine.slots + app_state.settings.max_queue
    if app_state.inflight + sequences > capacity:
        raise RequestError(
            f"the server is at capacity ({capacity} sequences running or queued); retry shortly",
            status=429,
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )
    app_state.inflight += sequences


async def disconnected(receive) -> None:
    """Return when the client has closed the connection (the request's body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """Server-sent events from an async generator; the generator is closed however the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, events):
        self.events, self.status_code, self.background = events, 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # no Content-Length

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we were writing
            scope["state"]["audit"]["status"] = 499
        finally:
            await self.events.aclose()


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
