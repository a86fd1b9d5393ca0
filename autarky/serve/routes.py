"""The endpoints: OpenAI's /v1 API, vLLM-style /tokenize and /detokenize, health, metrics and the page.

Each handler checks the key, parses and checks its body, fills in the audit record and hands the
work to the engine; what it needs (engine, settings, metrics, the in-flight count) is on
`request.app.state`, set by `create_app`.
"""

from __future__ import annotations

import base64
import struct
import uuid
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from autarky.console import UserError
from autarky.generate import SamplingParams
from autarky.serve.answers import ChatAnswer, CompletionAnswer, answer
from autarky.serve.jobs import Job, check_engine, embed
from autarky.serve.protocol import (
    CHAT_ROLES,
    SEED_END,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    Message,
    RequestError,
    Sampling,
    Strict,
    TokenizeRequest,
    parse,
)

if TYPE_CHECKING:
    from autarky.serve.app import Settings

router = APIRouter()
# The page's one script and style are inline; nothing loads from elsewhere, and no other site frames it.
CSP = "default-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


@router.get("/", include_in_schema=False)
async def index():
    page = resources.files("autarky.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Content-Security-Policy": CSP})


@router.get("/health")
async def health(request: Request):
    engine, settings = request.app.state.engine, request.app.state.settings
    check_engine(engine)
    return {
        "status": "ok",
        "model": settings.model_name,
        "busy_slots": engine.busy_slots,
        "slots": engine.slots,
        "queue_depth": engine.queue_depth,
        "keys_required": settings.keys.required,
    }


@router.get("/metrics")
async def metrics(request: Request):
    authorize(request)
    state = request.app.state
    gauges = {
        "autarky_queue_depth": state.engine.queue_depth,
        "autarky_busy_slots": state.engine.busy_slots,
        "autarky_slots": state.engine.slots,
        "autarky_inflight_sequences": state.inflight,
    }
    return PlainTextResponse(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(request: Request):
    authorize(request)
    return {"object": "list", "data": [model_card(request.app.state)]}


@router.get("/v1/models/{name}")
async def model(name: str, request: Request):
    authorize(request)
    check_model(name, request.app.state.settings)
    return model_card(request.app.state)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    state = request.app.state
    req: ChatRequest = await read_body(request, ChatRequest)
    messages = chat_messages(req.messages)
    if req.response_format is not None and req.response_format.type != "text":
        raise RequestError(
            f"response_format {req.response_format.type!r} is not supported: this server has no constrained "
            "decoding; only 'text' is accepted",
            param="response_format",
            code="unsupported_parameter",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("top_logprobs needs logprobs to be true", param="top_logprobs")
    include_usage = check_stream_options(req)
    n = req.n or 1
    check_capacity(state, n, "n")
    check_length(state, sum(len(m["content"]) for m in messages), "messages")
    prompt = await run_in_threadpool(state.engine.tokenizer.apply_chat_template, messages)
    max_tokens = budget(
        len(prompt), req.max_completion_tokens or req.max_tokens, state.engine.context, "messages", "messages"
    )
    job = Job(
        state, [prompt] * n, sampling(req, max_tokens, n), (req.top_logprobs or 0) if req.logprobs else None
    )
    record = request.state.audit
    record.update(model=req.model, user=req.user, tokens_in=len(prompt), prompt=messages)
    job.start(request.receive)
    shape = ChatAnswer(n, logprobs=bool(req.logprobs))
    return await answer(job, shape, record, state.settings.model_name, len(prompt), req.stream, include_usage)


@router.post("/v1/completions")
async def completions(request: Request):
    state = request.app.state
    tokenizer = state.engine.tokenizer
    req: CompletionRequest = await read_body(request, CompletionRequest)
    n = req.n or 1
    if req.best_of is not None and req.best_of != n:
        raise RequestError(
            "best_of other than n is not supported", param="best_of", code="unsupported_parameter"
        )
    include_usage = check_stream_options(req)
    prompts = prompt_list(req.prompt, "prompt")
    check_capacity(state, len(prompts) * n, "n" if n > 1 else "prompt")
    prompts = await prompt_ids(state, prompts, "prompt")
    max_tokens = min(
        budget(len(p), req.max_tokens, state.engine.context, "prompt", "prompt") for p in prompts
    )
    scored = bool(req.echo) and req.logprobs is not None  # every prompt token gets its logprob
    echoes = await run_in_threadpool(lambda: [echo_text(tokenizer, p) for p in prompts] if req.echo else None)
    # Choice index = prompt index × n + j, as OpenAI numbers them.
    job = Job(
        state,
        [p for p in prompts for _ in range(n)],
        sampling(req, max(max_tokens, 1), n) * len(prompts),
        req.logprobs,
        prompt_logprobs=req.logprobs if scored else None,
        generate=max_tokens > 0,
        end_logprob=True,
    )
    record = request.state.audit
    prompt_tokens = sum(len(p) for p in prompts)
    record.update(model=req.model, user=req.user, tokens_in=prompt_tokens, prompt=req.prompt)
    job.start(request.receive)
    texts = [echoes[i // n][0] if echoes else "" for i in range(len(job.requests))]
    offsets = [echoes[i // n][1] for i in range(len(job.requests))] if scored else None
    shape = CompletionAnswer(texts, logprobs=req.logprobs is not None, echo_offsets=offsets)
    return await answer(
        job, shape, record, state.settings.model_name, prompt_tokens, req.stream, include_usage
    )


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    state = request.app.state
    context = state.engine.context
    req: EmbeddingRequest = await read_body(request, EmbeddingRequest)
    inputs = prompt_list(req.input, "input")
    check_capacity(state, len(inputs), "input")
    inputs = await prompt_ids(state, inputs, "input")
    for i, ids in enumerate(inputs):
        if len(ids) > context:
            raise RequestError(
                f"input {i} has {len(ids)} tokens; the model's context is {context}",
                param="input",
                code="context_length_exceeded",
            )
    record = request.state.audit
    record.update(model=req.model, user=req.user, tokens_in=sum(len(i) for i in inputs), prompt=req.input)
    vectors = await embed(state, inputs, request.receive)
    if req.encoding_format == "base64":
        data = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    else:
        data = vectors
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "model": state.settings.model_name,
        "usage": {"prompt_tokens": record["tokens_in"], "total_tokens": record["tokens_in"]},
    }


@router.post("/tokenize")
async def tokenize(request: Request):
    state = request.app.state
    req: TokenizeRequest = await read_body(request, TokenizeRequest)
    if (req.prompt is None) == (req.messages is None):
        raise RequestError("give exactly one of prompt or messages", param="prompt")
    ids = await run_in_threadpool(token_ids, state.engine.tokenizer, req)
    request.state.audit["tokens_in"] = len(ids)
    return {"tokens": ids, "count": len(ids), "max_model_len": state.engine.context}


def token_ids(tokenizer, req: TokenizeRequest) -> list[int]:
    """What /tokenize counts: a prompt as /v1/completions does, or messages as the chat endpoint."""
    if req.prompt is not None:
        return tokenizer.encode_prompt(req.prompt) if req.add_special_tokens else tokenizer.encode(req.prompt)
    try:
        return tokenizer.apply_chat_template(template_messages(req.messages), req.add_generation_prompt)
    except UserError as e:
        raise RequestError(str(e), param="messages") from None


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request):
    """The tokenizer's settings, as vLLM's endpoint gives them, so that a client (lm-eval's remote
    tokenizer) counts tokens with this server's own /tokenize and /detokenize."""
    authorize(request)
    state = request.app.state
    tokenizer = state.engine.tokenizer
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokenizer.special_tokens,  # bos_token, eos_token, pad_token, ... as tokenizer_config.json names them
        # Text is never encoded as a control token, so a client cannot find these by tokenizing the
        # names above: the ids, for clients that read them.
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "vocab_size": tokenizer.vocab_size,
        "model_max_length": state.engine.context,
        "chat_template": tokenizer.chat_template.source if tokenizer.chat_template else None,
        "clean_up_tokenization_spaces": False,
    }


@router.post("/detokenize")
async def detokenize(request: Request):
    state = request.app.state
    tokenizer = state.engine.tokenizer
    req: DetokenizeRequest = await read_body(request, DetokenizeRequest)
    check_ids(req.tokens, tokenizer.vocab_size, "tokens")
    request.state.audit["tokens_in"] = len(req.tokens)
    return {"prompt": await run_in_threadpool(tokenizer.decode, req.tokens)}


# ---------------------------------------------------------------- checks shared by the endpoints


async def read_body(request: Request, model: type[Strict]) -> Strict:
    """Check the key, then parse the body as `model` and check the model it names."""
    authorize(request)
    req = parse(await request.body(), model)
    check_model(req.model, request.app.state.settings)
    return req


def authorize(request: Request) -> None:
    """Give the request its id and, when keys are required, check its bearer key (or raise a 401)."""
    keys = request.app.state.settings.keys
    record = request.state.audit
    record["request_id"] = uuid.uuid4().hex[:24]
    if not keys.required:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise RequestError(
            "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
            "(Authorization: Bearer YOUR_KEY).",
            status=401,
        )
    record["key_id"] = keys.check(key.strip())
    if record["key_id"] is None:
        raise RequestError("Incorrect API key provided.", status=401, code="invalid_api_key")


def check_model(name: str | None, settings: Settings) -> None:
    if name is not None and name != settings.model_name:
        raise RequestError(
            f"The model '{name}' does not exist; this server serves '{settings.model_name}'",
            status=404,
            param="model",
            code="model_not_found",
        )


def model_card(state) -> dict:
    return {
        "id": state.settings.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "autarky",
        "max_model_len": state.engine.context,
        "chat_tuned": state.settings.chat_tuned,  # null where the lineage cannot tell (autarky.model.chat_tuned)
    }


def budget(prompt_len: int, max_tokens: int | None, context: int, param: str, what: str) -> int:
    """The completion's token budget: `max_tokens`, or all the context the prompt leaves."""
    if max_tokens == 0 and prompt_len <= context:
        return 0  # a prompt scored and not continued may fill the context
    if prompt_len >= context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, your {what} "
            f"resulted in {prompt_len} tokens.",
            param=param,
            code="context_length_exceeded",
        )
    if max_tokens is None:
        return context - prompt_len
    if prompt_len + max_tokens > context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the {what}, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def check_capacity(state, sequences: int, param: str) -> None:
    """A 400 for a request larger than the server could ever run: a 429 would have it retry for ever."""
    capacity = state.engine.slots + state.settings.max_queue
    if sequences > capacity:
        raise RequestError(
            f"this request needs {sequences} sequences; this server runs or queues at most {capacity} "
            "at once (its slots and queue)",
            param=param,
        )


def check_length(state, chars: int, param: str) -> None:
    """A 400, before tokenizing, for text too long to fit the context whatever its tokens."""
    if state.max_prompt_chars is not None and chars > state.max_prompt_chars:
        raise RequestError(
            f"This model's maximum context length is {state.engine.context} tokens. However, your {param} "
            f"has {chars} characters, more than {state.engine.context} tokens can hold.",
            param=param,
            code="context_length_exceeded",
        )


def sampling(req: Sampling, max_tokens: int, n: int) -> list[SamplingParams]:
    stop = req.stops()
    return [
        SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            max_tokens=max_tokens,
            # Choice i of a seeded request gets seed+i, so n choices differ yet repeat exactly; the
            # sum wraps into torch's unsigned 64-bit range (where -1 and 2**64 - 1 are one seed).
            seed=None if req.seed is None else (req.seed + i) % SEED_END,
            stop=stop,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
        )
        for i in range(n)
    ]


def check_stream_options(req: Sampling) -> bool:
    """Whether to end the stream with a usage chunk."""
    if req.stream_options is not None and not req.stream:
        raise RequestError("stream_options is only allowed when stream is true", param="stream_options")
    return bool(req.stream and req.stream_options and req.stream_options.include_usage)


def chat_messages(messages: list[Message]) -> list[dict]:
    """A chat request's messages, checked, for the chat template."""
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise RequestError(
                f"Invalid value for 'messages[{i}].role': {m.role!r}; supported roles are {', '.join(CHAT_ROLES)} "
                "(tool messages need function calling, which this server does not do)",
                param=f"messages[{i}].role",
            )
        if m.content is None and m.role != "assistant":
            raise RequestError(f"messages[{i}].content is required", param=f"messages[{i}].content")
    return template_messages(messages)


def template_messages(messages: list[Message]) -> list[dict]:
    """Messages as the chat template takes them; OpenAI's 'developer' role is our 'system'."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


def echo_text(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """A prompt's text as echo shows it, and where each of its tokens starts in that text.

    Decoded as a stream: a special token (the <|bos|> a text prompt starts with) adds no text, and
    the tokens that share a character (a byte-level token may hold part of one) start where it does.
    """
    decoder = tokenizer.decode_stream()
    pieces, offsets, length = [], [], 0
    for token in ids:
        offsets.append(length)
        pieces.append(decoder.step(token))
        length += len(pieces[-1])
    return "".join(pieces) + decoder.finish(), offsets


def check_ids(ids: list[int], vocab_size: int, param: str) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", param=param)


def prompt_list(prompt, param: str) -> list:
    """A prompt (text, texts, ids or lists of ids) as a list of texts and lists of ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise RequestError(f"'{param}' must not be empty", param=param)
    if isinstance(prompt[0], int):
        prompt = [prompt]
    if len(prompt) > 64:
        raise RequestError(f"'{param}' takes at most 64 items", param=param)
    return prompt


async def prompt_ids(state, prompts: list, param: str) -> list[list[int]]:
    """Each prompt as ids; text gets <|bos|> as in training.

    Text is tokenized in a worker thread: a long prompt must not stall the event loop, and with it
    every other client. Text that cannot fit the context is refused before it is tokenized.
    """
    for p in prompts:
        if isinstance(p, str):
            check_length(state, len(p), param)
    tokenizer = state.engine.tokenizer

    def encode() -> list[list[int]]:
        return [tokenizer.encode_prompt(p) if isinstance(p, str) else list(p) for p in prompts]

    out = await run_in_threadpool(encode)
    for ids in out:
        if not ids:
            raise RequestError(f"'{param}' must not contain an empty list of tokens", param=param)
        check_ids(ids, tokenizer.vocab_size, param)
    return out
