"""The ASGI app: the endpoints (routes.py) behind the gate (gate.py), with the engine's lifetime.

The app runs on uvicorn's event loop; the engine runs in its own thread (jobs.py bridges the two).
A gate in front of every route limits the body size, counts and times requests, and writes the
audit log; every error, ours or FastAPI's, leaves as OpenAI's error body.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from autarky.serve.access import AuditLog, Keys
from autarky.serve.engine import Engine
from autarky.serve.gate import Gate, HostPolicy
from autarky.serve.jobs import ClientGone
from autarky.serve.metrics import Metrics
from autarky.serve.protocol import RequestError, error_response
from autarky.serve.routes import router


@dataclass
class Settings:
    model_name: str
    keys: Keys = field(default_factory=lambda: Keys([]))
    max_queue: int = 64
    max_body_bytes: int = 1_000_000
    audit: AuditLog = field(default_factory=lambda: AuditLog(None))
    hosts: HostPolicy = field(default_factory=lambda: HostPolicy("127.0.0.1"))
    chat_tuned: bool | None = None  # False: the web chat says the model only continues text


def create_app(engine: Engine, settings: Settings, start_engine: bool = True) -> Gate:
    """The app for one engine; with `start_engine`, the engine thread runs while the app does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_engine:
            engine.start()
        yield
        if start_engine:
            engine.stop()

    app = FastAPI(title="autarky", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    state = app.state
    state.engine, state.settings, state.metrics, state.inflight = engine, settings, Metrics(), 0
    state.created = int(time.time())
    state.max_prompt_chars = max_prompt_chars(engine.tokenizer, engine.context)
    engine.on_tokens = _token_counter(state.metrics)
    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
    app.add_exception_handler(ClientGone, on_client_gone)
    app.include_router(router)
    return Gate(app, state)


async def on_request_error(request: Request, error: RequestError) -> Response:
    return error_response(error)


async def on_http_error(request: Request, error: HTTPException) -> Response:
    """FastAPI's own 404 and 405, in OpenAI's error shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
    message = f"{request.method} {request.url.path}: {error.detail}"
    return error_response(RequestError(message, status=error.status_code, code=code))


async def on_bug(request: Request, error: Exception) -> Response:
    return error_response(RequestError(f"internal server error: {error}", status=500, type="server_error"))


async def on_client_gone(request: Request, error: ClientGone) -> Response:
    request.state.audit["status"] = 499
    return Response(status_code=499)


def max_prompt_chars(tokenizer, context: int) -> int | None:
    """The most characters `context` tokens can stand for, so longer text is refused untokenized.

    A byte-level token stands for at most as many characters as its longest byte string; a
    tokenizer that normalizes text may change its length, so then there is no such bound (None).
    """
    if tokenizer.hf.normalizer is not None:
        return None
    longest = max(len(tokenizer.token_bytes(i, skip_special=False)) for i in range(tokenizer.vocab_size))
    return context * max(longest, 1)


def _token_counter(metrics: Metrics):
    def count(prompt: int, generated: int) -> None:
        if prompt:
            metrics.inc("autarky_prompt_tokens_total", prompt)
        if generated:
            metrics.inc("autarky_generation_tokens_total", generated)

    return count
