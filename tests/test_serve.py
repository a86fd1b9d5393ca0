"""`autarky serve` end to end: a real uvicorn server on 127.0.0.1, driven by the official openai client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn

from autarky.artifact import Builder
from autarky.console import UserError
from autarky.generate import SamplingParams
from autarky.model import Llama, load_pretrained, preset_config, save_pretrained
from autarky.serve import SERVED_FILES, ServeConfig, build_app, check_exposure, serve
from autarky.serve import engine as engine_module
from autarky.serve.access import AuditLog, Keys, key_id, key_id_secret
from autarky.serve.connection import Limits, server_config
from autarky.serve.gate import HostPolicy
from autarky.serve.precision import Int8Linear, decode_weight_bytes, prepare, quantize_int8
from autarky.tokenizer import SPECIAL_TOKENS, Tokenizer
from autarky.train import TOKENIZER_FILES

CONTEXT = 256
KEY = "sk-test-0123456789"


def make_model_dir(root: Path) -> Path:
    """A random tiny Llama with a real tokenizer, made to never end on its own (so lengths are exact)."""
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer
    from tests.conftest import write_sources

    corpus = curate([write_sources(root / "src", n_docs=30)], root / "work")
    tokenizer_artifact = train_tokenizer(corpus, root / "work", vocab_size=512)
    tok = Tokenizer.load(tokenizer_artifact.path)
    torch.manual_seed(0)
    config = preset_config("tiny", tok.vocab_size, tie_word_embeddings=False, max_position_embeddings=CONTEXT)
    model = Llama(config).eval()
    with torch.no_grad():
        model.model.norm.weight.fill_(20.0)  # peaked logits, so greedy choices are clear-cut
        model.lm_head.weight[[tok.eos_id, tok.end_id]] = 0.0  # end-of-text is never likely
    directory = root / "model"
    save_pretrained(model, directory)
    for f in TOKENIZER_FILES:
        shutil.copy(tokenizer_artifact.path / f, directory / f)
    return directory


class Server:
    """uvicorn on a free loopback port in a thread, as `autarky serve` runs it."""

    def __init__(self, app, limits: Limits = Limits()):
        self.engine = app.state.engine
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, limits))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def shared_model_dir(tmp_path_factory) -> Path:
    """One test model per test session, whichever serving test module asks first."""
    root = tmp_path_factory.getbasetemp() / "serve-model"
    if not (root / "model" / "tokenizer.json").is_file():
        make_model_dir(root)
    return root / "model"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return shared_model_dir(tmp_path_factory)


ENGINES = ["llama.cpp", "torch"]  # every API test runs on both engines: what is above them is the same


@pytest.fixture(scope="module", params=ENGINES)
def server(model_dir, tmp_path_factory, request):
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    config = ServeConfig(
        slots=8, max_queue=32, audit_log=audit, audit_content=True, model_name="tiny", engine=request.param
    )
    app, settings = build_app(model_dir, config)
    with Server(app) as s:
        s.audit, s.name = audit, settings.model_name
        yield s
    settings.audit.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat(client, content="Hello there", **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def prompt_count(server, messages) -> int:
    return httpx.post(server.url + "/tokenize", json={"messages": messages}).json()["count"]


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


# ---------------------------------------------------------------- endpoints


def test_models_health_tokenize_detokenize(server, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 8
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "Мороз и солнце"}).json()
    assert ids["count"] == len(ids["tokens"]) and ids["max_model_len"] == CONTEXT
    text = httpx.post(server.url + "/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == "Мороз и солнце"


def test_chat_completion_usage_seed_and_logprobs(server, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    a = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        seed=5,
        temperature=1.0,
        logprobs=True,
        top_logprobs=3,
        user="alice",
    )
    assert a.object == "chat.completion" and a.model == "tiny" and a.id.startswith("chatcmpl-")
    choice = a.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert a.usage.prompt_tokens == prompt_count(server, messages)
    assert a.usage.completion_tokens == 12 and a.usage.total_tokens == a.usage.prompt_tokens + 12
    content = choice.logprobs.content
    assert len(content) == 12 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in content).startswith(
        choice.message.content[:1]
    )
    b = client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=12, seed=5, temperature=1.0
    )
    assert b.choices[0].message.content == choice.message.content  # same seed, same text
    two = chat(client, max_tokens=6, n=2, seed=1)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 12


def test_streaming_chat_matches_the_whole_answer(server, client):
    whole = chat(client, max_tokens=10, seed=3)
    stream = chat(client, max_tokens=10, seed=3, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    # the raw stream ends with [DONE]
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
        },
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert (
        lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    )


def test_completions_and_a_stop_string_across_tokens(server, client):
    free = client.completions.create(
        model="tiny", prompt="The list", max_tokens=24, temperature=0, logprobs=0
    )
    assert free.object == "text_completion" and free.choices[0].finish_reason == "length"
    pieces = free.choices[0].logprobs.tokens
    text = free.choices[0].text
    # a stop string made of the end of one token and the start of the next
    i = next(
        i
        for i in range(3, len(pieces) - 1)
        if pieces[i] and pieces[i + 1] and "\ufffd" not in pieces[i] + pieces[i + 1]
    )
    stop = pieces[i][-1] + pieces[i + 1][0]
    cut = text.find(stop)
    assert cut >= 0
    stopped = client.completions.create(
        model="tiny", prompt="The list", max_tokens=24, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].text == text[:cut] and stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny", prompt="The list", max_tokens=24, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == text[:cut]
    assert chunks[-1].choices[0].finish_reason == "stop"
    echo = client.completions.create(
        model="tiny", prompt=["a b", "c d"], max_tokens=2, temperature=0, echo=True
    )
    assert [c.text[:3] for c in echo.choices] == ["a b", "c d"]


def test_async_client_and_embeddings(server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        reply = await aclient.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        stream = await aclient.completions.create(model="tiny", prompt="x", max_tokens=4, stream=True)
        pieces = [c async for c in stream]
        emb = await aclient.embeddings.create(model="tiny", input=["the cat", "the cat", "Мороз"])
        floats = await aclient.embeddings.create(model="tiny", input="the cat", encoding_format="float")
        await aclient.close()
        return reply, pieces, emb, floats

    reply, pieces, emb, floats = asyncio.run(main())
    assert reply.usage.completion_tokens == 4 and pieces[-1].choices[0].finish_reason == "length"
    vectors = [torch.tensor(d.embedding) for d in emb.data]
    assert [len(v) for v in vectors] == [256] * 3 and emb.usage.prompt_tokens > 0
    assert all(abs(v.norm().item() - 1) < 1e-4 for v in vectors)
    assert torch.allclose(vectors[0], vectors[1]) and not torch.allclose(vectors[0], vectors[2])
    assert torch.allclose(torch.tensor(floats.data[0].embedding), vectors[0], atol=1e-6)


def test_32_concurrent_streams_all_complete_with_right_usage(server):
    messages = [[{"role": "user", "content": f"Question number {i}: {'why ' * (i % 5)}?"}] for i in range(32)]
    lengths = [4 + i % 9 for i in range(32)]
    generated_before = metric(server, "autarky_generation_tokens_total")

    async def one(aclient, i):
        stream = await aclient.chat.completions.create(
            model="tiny",
            messages=messages[i],
            max_tokens=lengths[i],
            stream=True,
            logprobs=True,
            stream_options={"include_usage": True},
            temperature=0.8,
            seed=i,
        )
        tokens, usage, finish = 0, None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                tokens += len(c.logprobs.content) if c.logprobs and c.logprobs.content else 0
                finish = c.finish_reason or finish
        return tokens, usage, finish

    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        out = await asyncio.gather(*(one(aclient, i) for i in range(32)))
        await aclient.close()
        return out

    results = asyncio.run(main())
    for i, (tokens, usage, finish) in enumerate(results):
        assert finish == "length"
        assert tokens == usage.completion_tokens == lengths[i]
        assert usage.prompt_tokens == prompt_count(server, messages[i])
    assert metric(server, "autarky_generation_tokens_total") - generated_before == sum(lengths)
    assert metric(server, "autarky_busy_slots") == 0 and metric(server, "autarky_inflight_sequences") == 0


def make_ending_model_dir(model_dir: Path, directory: Path, p_end: float = 0.25) -> Path:
    """The test model made to end by itself: <|end|> has probability `p_end` at every step.

    Every token gets the same embedding, so the last hidden state is the same whatever the prompt
    (attention averages identical values), and <|end|>'s row of lm_head is set along it.
    """
    model = load_pretrained(model_dir)
    tok = Tokenizer.load(model_dir)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:] = embed[tok.bos_id].clone()
        hidden = {}
        hook = model.lm_head.register_forward_hook(lambda m, args, out: hidden.update(h=args[0][0, -1]))
        logits = model(torch.tensor([[tok.bos_id]]))[0][0, -1]
        hook.remove()
        others = torch.cat([logits[: tok.end_id], logits[tok.end_id + 1 :]]).logsumexp(0)
        target = others + torch.tensor(p_end / (1 - p_end)).log()
        h = hidden["h"]
        model.lm_head.weight[tok.end_id] = h * target / h.dot(h)
    save_pretrained(model, directory)
    for f in TOKENIZER_FILES:
        shutil.copy(model_dir / f, directory / f)
    return directory


def test_a_model_that_ends_by_itself_stops_with_the_right_usage(model_dir, tmp_path):
    app, settings = build_app(
        make_ending_model_dir(model_dir, tmp_path / "ending"), ServeConfig(slots=4, model_name="model")
    )
    messages = [{"role": "user", "content": "Say something short"}]
    with Server(app) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        prompt_tokens = prompt_count(s, messages)
        whole = client.chat.completions.create(
            model="model", messages=messages, max_tokens=64, n=4, seed=7, logprobs=True
        )
        lengths = [len(c.logprobs.content or []) for c in whole.choices]
        assert [c.finish_reason for c in whole.choices] == ["stop"] * 4
        assert all(n < 64 for n in lengths) and any(lengths)  # it ended early, and not always at once
        assert whole.usage.prompt_tokens == prompt_tokens  # the prompt counts once however many choices
        assert whole.usage.completion_tokens == sum(lengths)  # the end token itself is not counted
        assert whole.usage.total_tokens == prompt_tokens + sum(lengths)
        stream = client.chat.completions.create(
            model="model",
            messages=messages,
            max_tokens=64,
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content  # same seed as choice 0
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == ["stop"] and chunks[-1].usage.completion_tokens == lengths[0]
        legacy = client.completions.create(model="model", prompt="x", max_tokens=64, seed=7, logprobs=0)
        assert legacy.choices[0].finish_reason == "stop"
        tokens = legacy.choices[0].logprobs.tokens  # the end token is listed last, but not counted
        assert legacy.usage.completion_tokens == len(tokens) - 1 < 64 and tokens[-1] == "<|end|>"
    settings.audit.close()


# ---------------------------------------------------------------- bad input


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_bad_inputs_get_the_right_4xx_and_the_server_carries_on(server, client):
    url = server.url + "/v1/chat/completions"
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert_openai_error(
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert_openai_error(httpx.post(url, json=[good]), 400)
    assert_openai_error(httpx.post(url, json={**good, "temperature": "hot"}), 400, "temperature")
    assert_openai_error(httpx.post(url, json={**good, "max_tokens": "3"}), 400, "max_tokens")
    assert_openai_error(httpx.post(url, json={**good, "messages": "hi"}), 400, "messages")
    assert_openai_error(httpx.post(url, json={**good, "max_tokens": -1}), 400, "max_tokens")
    error = assert_openai_error(httpx.post(url, json={**good, "max_tokens": 10**9}), 400, "max_tokens")
    assert error["code"] == "context_length_exceeded"
    assert_openai_error(httpx.post(url, json={**good, "messages": []}), 400, "messages")
    assert_openai_error(
        httpx.post(url, json={**good, "messages": [{"role": "tool", "content": "x"}]}),
        400,
        "messages[0].role",
    )
    assert_openai_error(
        httpx.post(url, json={**good, "messages": [{"content": "x"}]}), 400, "messages[0].role"
    )
    assert_openai_error(httpx.post(url, json={**good, "model": "gpt-4o"}), 404, "model")
    assert_openai_error(httpx.post(url, json={**good, "tools": [{"type": "function"}]}), 400, "tools")
    assert_openai_error(
        httpx.post(url, json={**good, "response_format": {"type": "json_schema"}}), 400, "response_format"
    )
    assert_openai_error(httpx.post(url, json={**good, "frobnicate": 1}), 400, "frobnicate")
    assert_openai_error(httpx.post(url, json={**good, "n": 0}), 400, "n")
    assert_openai_error(httpx.post(url, json={**good, "stop": ["a", "b", "c", "d", "e"]}), 400, "stop")
    assert_openai_error(httpx.post(url, json={**good, "stream_options": {"include_usage": True}}), 400)
    long_prompt = {**good, "messages": [{"role": "user", "content": "word " * 400}], "max_tokens": None}
    assert assert_openai_error(httpx.post(url, json=long_prompt), 400)["code"] == "context_length_exceeded"
    big = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 10_000_000 + b'"}]}'
    assert_openai_error(httpx.post(url, content=big, headers={"content-type": "application/json"}), 413)
    assert_openai_error(
        httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": [10**6]}), 400
    )
    assert_openai_error(httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": []}), 400)
    assert_openai_error(httpx.post(server.url + "/detokenize", json={"tokens": [-1]}), 400, "tokens")
    assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404)
    # the official client raises the matching exceptions
    with pytest.raises(openai.BadRequestError):
        chat(client, max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert chat(client, max_tokens=3).usage.completion_tokens == 3
    assert metric(server, 'autarky_requests_total{endpoint="/v1/chat/completions",status="500"}') == 0


def test_a_vanished_client_frees_its_slot(server, client):
    generated = metric(server, "autarky_generation_tokens_total")
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 240,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        next(response.iter_lines())
    deadline = time.time() + 5
    while httpx.get(server.url + "/health").json()["busy_slots"] and time.time() < deadline:
        time.sleep(0.02)
    assert httpx.get(server.url + "/health").json()["busy_slots"] == 0
    assert metric(server, "autarky_generation_tokens_total") - generated < 240  # it was stopped, not finished
    assert chat(client, max_tokens=2).choices[0].finish_reason == "length"
    records = [json.loads(line) for line in server.audit.read_text().splitlines()]
    assert any(r["status"] == 499 and r["endpoint"] == "POST /v1/chat/completions" for r in records)
    assert any(r.get("completion") and r.get("prompt") for r in records)  # --audit-content is on here


def test_an_out_of_range_seed_is_a_400_and_the_engine_carries_on(server, client):
    url = server.url + "/v1/chat/completions"
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for seed in (2**64, -(2**63) - 1, 10**30):
        error = assert_openai_error(httpx.post(url, json={**good, "seed": seed}), 400, "seed")
        assert error["type"] == "invalid_request_error"
    # the ends of the range are fine; seed + i for choice i wraps around 2**64 (as torch takes -1)
    edge = httpx.post(url, json={**good, "seed": 2**64 - 1, "n": 2}, timeout=30)
    assert edge.status_code == 200 and len(edge.json()["choices"]) == 2
    assert httpx.post(url, json={**good, "seed": -(2**63)}, timeout=30).status_code == 200
    wrapped = httpx.post(url, json={**good, "seed": -1, "temperature": 1.0}, timeout=30).json()
    top = httpx.post(url, json={**good, "seed": 2**64 - 1, "temperature": 1.0}, timeout=30).json()
    assert wrapped["choices"][0]["message"] == top["choices"][0]["message"]
    assert chat(client, max_tokens=3, seed=7).usage.completion_tokens == 3
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    # `autarky generate/chat --seed` checks the same range
    with pytest.raises(UserError, match="seed"):
        SamplingParams(seed=2**64).validate()
    with pytest.raises(UserError, match="seed"):
        SamplingParams(seed=-(2**63) - 1).validate()
    SamplingParams(seed=2**64 - 1).validate()


def test_a_request_that_cannot_be_admitted_fails_alone(server, client, monkeypatch):
    real = engine_module.Sequence

    def flaky(request, *args):
        if request.params.seed == 4242:
            raise RuntimeError("injected failure")
        return real(request, *args)

    monkeypatch.setattr(engine_module, "Sequence", flaky)
    url = server.url + "/v1/chat/completions"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "stream": True}
    with httpx.stream("POST", url, json={**body, "max_tokens": 40, "seed": 1}, timeout=30) as running:
        lines = running.iter_lines()
        next(lines)  # the running request is in the batch
        # a streamed one gets an error event; a whole one a 500 (both with OpenAI's error body)
        with httpx.stream("POST", url, json={**body, "max_tokens": 5, "seed": 4242}, timeout=30) as failed:
            events = [json.loads(line[6:]) for line in failed.iter_lines() if line.startswith("data: {")]
        assert events[-1]["error"]["type"] == "server_error"
        assert "injected failure" in events[-1]["error"]["message"]
        with pytest.raises(openai.InternalServerError, match="injected failure"):
            chat(client, max_tokens=5, seed=4242)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"  # the request already running finished as if nothing happened
    finals = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in rest if x.startswith("data: {")]
    assert finals[-1] == "length"
    assert chat(client, max_tokens=3, seed=5).usage.completion_tokens == 3
    assert server.engine.alive and httpx.get(server.url + "/health").status_code == 200
    assert metric(server, "autarky_inflight_sequences") == 0


@pytest.mark.parametrize("engine", ["torch", "llama.cpp"])
def test_max_model_len_caps_each_request_and_the_cache(model_dir, engine):
    app, settings = build_app(model_dir, ServeConfig(slots=2, max_model_len=64, engine=engine))
    engine = app.state.engine
    runner = engine.runner
    if runner.name == "torch":
        assert runner.cache.max_len == 64 and runner.staged.max_len == 64 and runner.cache.k[0].shape[0] == 2
    else:  # two running rows and the staged prompt of 64 tokens each (llama.cpp pads to 256 cells)
        assert runner.context == 64 and runner.api.llama_n_seq_max(runner.ctx) == 3
        assert 64 <= runner.api.llama_n_ctx_seq(runner.ctx) <= 256
    assert engine.context == 64
    messages = [{"role": "user", "content": "How long?"}]
    with Server(app) as s:
        assert httpx.get(s.url + "/v1/models").json()["data"][0]["max_model_len"] == 64
        n = prompt_count(s, messages)
        url = s.url + "/v1/chat/completions"
        body = {"model": "model", "messages": messages, "temperature": 0}
        error = assert_openai_error(httpx.post(url, json={**body, "max_tokens": 65 - n}), 400, "max_tokens")
        assert error["code"] == "context_length_exceeded" and "64" in error["message"]
        whole = httpx.post(url, json=body, timeout=30).json()  # no max_tokens: the rest of the 64
        assert whole["usage"]["completion_tokens"] == 64 - n
        assert whole["choices"][0]["finish_reason"] == "length"
        legacy = {"model": "model", "prompt": list(range(10, 74))}
        assert_openai_error(httpx.post(s.url + "/v1/completions", json=legacy), 400, "prompt")
        embed = {"model": "model", "input": list(range(10, 75))}
        assert_openai_error(httpx.post(s.url + "/v1/embeddings", json=embed), 400, "input")
    settings.audit.close()


def test_health_is_503_when_the_engine_is_not_running(model_dir):
    app, settings = build_app(model_dir, ServeConfig(slots=1))
    with Server(app) as s:
        assert httpx.get(s.url + "/health").json()["status"] == "ok"
        s.engine.stop()  # as if the engine thread had died
        assert not s.engine.alive
        error = assert_openai_error(httpx.get(s.url + "/health"), 503)
        assert error["type"] == "server_error" and error["code"] == "engine_not_running"
        body = {"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert_openai_error(httpx.post(s.url + "/v1/chat/completions", json=body, timeout=10), 503)
        embed = {"model": "model", "input": "hi"}
        assert_openai_error(httpx.post(s.url + "/v1/embeddings", json=embed, timeout=10), 503)
    settings.audit.close()


# ---------------------------------------------------------------- one request must not hurt another


def post_json(url: str, raw: str, **kw) -> httpx.Response:
    """A body sent as written (JSON with NaN, say, which httpx's json= would refuse to send)."""
    return httpx.post(url, content=raw.encode(), headers={"content-type": "application/json"}, **kw)


def test_sampling_values_that_break_the_arithmetic_are_400s(server, client):
    """`temperature` 1e-45 turned the logits into inf and NaN and failed every request in flight.

    A temperature is 0 (greedy) or from 0.01 to 2, and no number may be NaN or infinite.
    """
    url = server.url + "/v1/chat/completions"
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for temperature in (1e-45, 5e-324, 0.009):
        assert_openai_error(httpx.post(url, json={**good, "temperature": temperature}), 400, "temperature")
    head = json.dumps(good)[:-1]
    for field, value in [
        ("temperature", "NaN"),
        ("top_p", "NaN"),
        ("presence_penalty", "-Infinity"),
        ("frequency_penalty", "Infinity"),
    ]:
        assert_openai_error(post_json(url, f'{head}, "{field}": {value}}}'), 400, field)
    legacy = '{"model": "tiny", "prompt": "x", "max_tokens": 2, "temperature": 1e-45}'
    assert_openai_error(post_json(server.url + "/v1/completions", legacy), 400, "temperature")
    for temperature in (0, 0.01, 2):
        assert chat(client, max_tokens=3, temperature=temperature).usage.completion_tokens == 3


def test_stop_strings_are_bounded_in_number_and_length(server, client):
    """Stop strings had no length limit (each is searched for at every token): at most 4, of at most
    256 characters each, else a 400."""
    url = server.url + "/v1/chat/completions"
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for stop in (["a"] * 5, "x" * 257, ["ok", "y" * 100_000], [""], ""):
        assert_openai_error(httpx.post(url, json={**good, "stop": stop}), 400, "stop")
    legacy = {"model": "tiny", "prompt": "x", "max_tokens": 2, "stop": "z" * 257}
    assert_openai_error(httpx.post(server.url + "/v1/completions", json=legacy), 400, "stop")
    assert chat(client, max_tokens=3, stop=["q" * 256] * 4).choices[0].finish_reason == "length"


def test_tokenizing_a_prompt_leaves_the_event_loop_free(server, monkeypatch):
    """A 1 MB prompt was tokenized on the event loop: /health went from 3 ms to 1.2 s for everyone.

    Tokenizing is made to wait here; /health must answer meanwhile, for every endpoint that tokenizes.
    """
    tokenizer = server.engine.tokenizer
    encode, template = tokenizer.encode, tokenizer.apply_chat_template
    entered, release = threading.Event(), threading.Event()

    def slow(text: str) -> None:
        if "SLOW" in text:
            entered.set()
            release.wait(10)

    def slow_encode(text: str) -> list[int]:
        slow(text)
        return encode(text)

    def slow_template(messages: list[dict], *args) -> list[int]:  # chat is encoded from the template
        slow(" ".join(m["content"] for m in messages))
        return template(messages, *args)

    monkeypatch.setattr(tokenizer, "encode", slow_encode)
    monkeypatch.setattr(tokenizer, "apply_chat_template", slow_template)
    chat_body = {"model": "tiny", "messages": [{"role": "user", "content": "SLOW"}], "max_tokens": 1}
    for path, body in [
        ("/v1/chat/completions", chat_body),
        ("/v1/completions", {"model": "tiny", "prompt": "SLOW", "max_tokens": 1}),
        ("/v1/embeddings", {"model": "tiny", "input": "SLOW"}),
        ("/tokenize", {"prompt": "SLOW"}),
        ("/tokenize", {"messages": [{"role": "user", "content": "SLOW"}]}),
    ]:
        entered.clear()
        release.clear()
        done = {}
        worker = threading.Thread(
            target=lambda: done.update(r=httpx.post(server.url + path, json=body, timeout=30))  # noqa: B023
        )
        worker.start()
        assert entered.wait(10), path
        try:
            assert httpx.get(server.url + "/health", timeout=3).status_code == 200, path
        finally:
            release.set()
            worker.join(30)
        assert done["r"].status_code == 200, (path, done["r"].text)


def test_text_too_long_for_the_context_is_refused_before_tokenizing(server, monkeypatch):
    """Text longer than the context could hold (the longest token times the context) is a 400 at once,
    so a near-1 MB prompt costs no tokenizer time."""
    monkeypatch.setattr(server.engine.tokenizer, "encode", lambda text: pytest.fail("tokenized"))
    huge = "word " * 150_000
    url = server.url + "/v1/chat/completions"
    body = {"model": "tiny", "messages": [{"role": "user", "content": huge}]}
    error = assert_openai_error(httpx.post(url, json=body), 400, "messages")
    assert error["code"] == "context_length_exceeded"
    legacy = {"model": "tiny", "prompt": ["short", huge]}
    assert_openai_error(httpx.post(server.url + "/v1/completions", json=legacy), 400, "prompt")
    embed = {"model": "tiny", "input": huge}
    assert_openai_error(httpx.post(server.url + "/v1/embeddings", json=embed), 400, "input")


def read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sends until it closes the connection; None if it is still open at `deadline`."""
    data = b""
    try:
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            if not (chunk := sock.recv(4096)):
                return data
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        return data


def test_half_sent_requests_are_closed_in_time_and_others_are_served(model_dir, tmp_path):
    """Slowloris: 500 half-sent requests all stayed open after 75 s.

    Now a request's head must arrive within the header timeout and its body within the body
    timeout, else the connection is closed (a late body is answered 408 and audited so).
    """
    audit = tmp_path / "audit.jsonl"
    app, settings = build_app(model_dir, ServeConfig(slots=1, audit_log=audit))
    limits = Limits(header_timeout=1.0, body_timeout=1.0, max_connections=100)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with Server(app, limits) as s:
        started = time.monotonic()
        sockets = []
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", s.port))
            if i % 3 == 0:
                sock.sendall(head + b"X-Slow: ")  # half a head
            elif i % 3 == 1:
                sock.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"model": "m')  # half a body
            sockets.append(sock)  # and every third says nothing at all
        assert httpx.get(s.url + "/health", timeout=5).status_code == 200  # others are served meanwhile
        answers = [read_until_closed(sock, started + 4) for sock in sockets]  # 1 s timeouts, 3 s spare
        for i, answer in enumerate(answers):
            assert answer is not None, f"connection {i} is still open"
            assert answer.startswith(b"HTTP/1.1 408") if i % 3 == 1 else answer == b"", answer
            sockets[i].close()
        body = {"model": "model", "prompt": "x", "max_tokens": 2}
        assert httpx.post(s.url + "/v1/completions", json=body, timeout=30).status_code == 200
    settings.audit.close()
    statuses = [json.loads(line)["status"] for line in audit.read_text().splitlines()]
    assert statuses.count(408) == 10 and statuses.count(200) == 1


def test_connections_over_the_cap_are_refused_at_once(model_dir):
    """Open connections are capped: one over the cap gets a 503 and is closed, and the server serves
    again once connections go."""
    app, settings = build_app(model_dir, ServeConfig(slots=1))
    with Server(app, Limits(header_timeout=5.0, body_timeout=5.0, max_connections=4)) as s:
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", s.port)) as extra:
            answer = read_until_closed(extra, time.monotonic() + 3)
        assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 3
        while True:
            try:
                assert httpx.get(s.url + "/health", timeout=3).status_code == 200
                break
            except (httpx.TransportError, AssertionError):  # the closes are still on their way
                assert time.monotonic() < deadline
                time.sleep(0.05)
    settings.audit.close()


def test_a_web_page_cannot_use_the_server(server):
    """The default server (loopback, no key) took text/plain cross-origin POSTs and any Host, so any web
    page its operator visited could use it (CSRF), or read it through DNS rebinding.

    A POST body must be application/json (415: a page cannot send that cross-origin without a CORS
    preflight, which the server never grants); a Host the server does not answer for is a 421 on
    every path; a request whose Origin is another site is a 403.
    """
    url = server.url + "/v1/chat/completions"
    good = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    raw = json.dumps(good).encode()
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        response = httpx.post(url, content=raw, headers={"content-type": content_type})
        assert assert_openai_error(response, 415)["code"] == "unsupported_media_type"
    assert_openai_error(httpx.post(url, content=raw), 415)  # no content type at all
    charset = {"content-type": "Application/JSON; charset=utf-8"}
    assert httpx.post(url, content=raw, headers=charset, timeout=30).status_code == 200
    # DNS rebinding: a page at evil.example whose name has been pointed at 127.0.0.1
    rebound = {"host": f"evil.example:{server.port}"}
    for path in ("/", "/health", "/v1/models", "/metrics"):
        assert (
            assert_openai_error(httpx.get(server.url + path, headers=rebound), 421)["code"]
            == "host_not_allowed"
        )
    assert_openai_error(httpx.post(url, json=good, headers=rebound), 421)
    for host in ("localhost", f"localhost:{server.port}", "127.0.0.1", f"[::1]:{server.port}"):
        assert httpx.get(server.url + "/health", headers={"host": host}).status_code == 200, host
    # cross-origin: another site, or another port of this machine
    for origin in ("http://evil.example", "http://localhost:3000", "null"):
        assert_openai_error(httpx.post(url, json=good, headers={"origin": origin}), 403)
    assert httpx.post(url, json=good, headers={"origin": server.url}, timeout=30).status_code == 200
    preflight = httpx.options(
        url,
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_host_policy_answers_its_own_names():
    """Which Host headers a server answers: its address, loopback names on loopback, the operator's."""
    loopback = HostPolicy("127.0.0.1")
    for host in ("127.0.0.1:8000", "127.0.0.2", "localhost", "LOCALHOST.:8000", "[::1]:8000"):
        assert loopback.allows(host), host
    for host in ("evil.example", "localhost.evil.example", "10.0.0.5", "", "a b"):
        assert not loopback.allows(host), host
    wildcard = HostPolicy("0.0.0.0", ["chat.example.org"])
    for host in ("10.0.0.5:8000", "[fe80::1]", "localhost", "chat.example.org:443", "Chat.Example.Org"):
        assert wildcard.allows(host), host
    assert not wildcard.allows("evil.example")
    assert HostPolicy("::1").allows("[::1]:8000") and HostPolicy("::1").allows("localhost")
    assert HostPolicy("::").allows("[fe80::1]:8000") and not HostPolicy("::").allows("evil.example")
    assert HostPolicy("myhost.lan").allows("MyHost.lan:8000") and not HostPolicy("myhost.lan").allows(
        "localhost"
    )
    one = HostPolicy("192.168.1.5")
    assert one.allows("192.168.1.5:8000") and not one.allows("192.168.1.6") and not one.allows("localhost")
    assert HostPolicy("127.0.0.1", ["*"]).allows("anything.example")
    assert loopback.same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not loopback.same_origin("http://127.0.0.1:9000", "127.0.0.1:8000")
    assert not loopback.same_origin("null", "127.0.0.1:8000")
    proxied = HostPolicy("127.0.0.1", ["chat.example.org"])
    assert proxied.same_origin("https://chat.example.org", "127.0.0.1:8000")


def test_nested_json_and_oversize_requests_are_400s(server):
    """JSON nested 100,000 deep was a 500, and a request for more sequences than slots + queue a 429 that
    could never succeed; both are 400s that say why."""
    url = server.url + "/v1/chat/completions"
    errors = 'autarky_requests_total{endpoint="/v1/chat/completions",status="500"}'
    errors_before = metric(server, errors)
    for raw in (
        "[" * 100_000 + "]" * 100_000,
        '{"model": "tiny", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ):
        assert_openai_error(post_json(url, raw), 400)
    prompts = {"model": "tiny", "prompt": ["a"] * 8, "n": 8, "max_tokens": 1}  # 64 > 8 slots + 32 queued
    error = assert_openai_error(httpx.post(server.url + "/v1/completions", json=prompts), 400, "n")
    assert "at most 40" in error["message"]
    assert metric(server, errors) == errors_before


def test_a_stream_the_client_left_is_audited_with_the_tokens_it_made(server):
    """A client that left mid-stream was audited with tokens_out 0, whatever had been generated."""
    marker = f"leaver-{time.time_ns()}"
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 240,
        "stream": True,
        "user": marker,
    }
    seen = 0
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                seen += 1
            if seen == 5:
                break
    deadline = time.monotonic() + 5
    while not (
        records := [
            r for r in map(json.loads, server.audit.read_text().splitlines()) if r.get("user") == marker
        ]
    ):
        assert time.monotonic() < deadline, "no audit record"
        time.sleep(0.05)
    assert records[0]["status"] == 499 and 5 <= records[0]["tokens_out"] < 240


def test_the_audit_log_keeps_one_line_per_request(tmp_path):
    """U+2028 went into the audit log raw (a line break to Python's splitlines and to JavaScript), and a
    1 MB `user` made a 1 MB line. Line separators are escaped, and fields other than the texts capped."""
    path = tmp_path / "serve.jsonl"
    log = AuditLog(path, content=True)
    log.write({"user": "a\u2028b" + "x" * 1_000_000, "endpoint": "POST /v1/x", "prompt": "p\u2029q\x85r"})
    log.close()
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1 and "\u2028" not in text and "\x85" not in text
    record = json.loads(text)
    assert record["prompt"] == "p\u2029q\x85r"  # the text itself is kept whole
    assert record["user"].startswith("a\u2028b") and len(record["user"]) < 300


def test_key_ids_are_keyed_hashes_under_a_secret_beside_the_log(tmp_path):
    """key_id was the first 48 bits of an unsalted SHA-256 of the key: anyone who could read the log
    could test guesses at keys. It is an HMAC-SHA256 under a per-deployment secret, made on first use
    (0600) beside the audit log."""
    audit = tmp_path / "audit" / "serve.jsonl"
    secret = key_id_secret(audit)
    path = audit.parent / "key-id.secret"
    assert path.stat().st_mode & 0o777 == 0o600 and key_id_secret(audit) == secret  # made once, then read
    kid = Keys.load([KEY], None, secret=secret).check(KEY)
    assert kid == key_id(KEY, secret) and hashlib.sha256(KEY.encode()).hexdigest()[:12] not in kid
    assert Keys.load([KEY], None, secret=b"another deployment").check(KEY) != kid
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        key_id_secret(audit)


def test_keys_from_the_environment_and_a_warning_for_the_command_line(
    model_dir, tmp_path, monkeypatch, capsys
):
    """A key given with --api-key is readable by every local user (the process list): the server warns,
    and takes keys from AUTARKY_API_KEYS (or --api-keys-file) instead."""
    monkeypatch.setenv("AUTARKY_API_KEYS", f"{KEY}, sk-second-key-0123")
    app, settings = build_app(model_dir, ServeConfig(slots=1))
    assert settings.keys.check(KEY) and settings.keys.check("sk-second-key-0123")
    assert not settings.keys.check("sk-other-key-0123")
    settings.audit.close()
    monkeypatch.delenv("AUTARKY_API_KEYS")
    with pytest.raises(UserError):  # stops at the missing model, after the warning
        serve(tmp_path / "missing", ServeConfig(api_keys=[KEY]))
    assert "process list" in " ".join(capsys.readouterr().err.split())


def test_weights_that_differ_from_the_manifest_are_not_served(model_dir, tmp_path):
    """`serve` loaded weights without checking their hashes; now the files it reads must match the model
    artifact's manifest, and a mismatch names the file."""
    with Builder(tmp_path / "work", "model", "served", config={}) as builder:
        for name in [*SERVED_FILES, "tokenizer_config.json"]:
            shutil.copy(model_dir / name, builder.dir / name)
        artifact = builder.finish()
    app, settings = build_app(artifact.path, ServeConfig(slots=1))  # as made: served
    settings.audit.close()
    with open(artifact.path / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")  # one weight turned into inf
    with pytest.raises(UserError, match="model.safetensors differs"):
        build_app(artifact.path, ServeConfig(slots=1))


# ---------------------------------------------------------------- keys, audit, capacity


def test_keys_audit_and_429(model_dir, tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n{KEY}\n")
    app, settings = build_app(
        model_dir, ServeConfig(slots=1, max_queue=1, api_keys_file=keys_file, audit_log=audit)
    )
    with Server(app) as s:
        url = s.url + "/v1/chat/completions"
        good = {"model": "model", "messages": [{"role": "user", "content": "secret words"}], "max_tokens": 3}
        assert_openai_error(httpx.post(url, json=good), 401)
        bad = assert_openai_error(
            httpx.post(url, json=good, headers={"Authorization": "Bearer wrong-key-123"}), 401
        )
        assert bad["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="nope-nope", max_retries=0).models.list()
        keyed = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)
        assert keyed.chat.completions.create(**good).usage.completion_tokens == 3
        auth = {"Authorization": f"Bearer {KEY}"}
        # more sequences than slots + queue could ever hold: a 400 naming the limit, not a 429 to retry
        never = assert_openai_error(httpx.post(url, json={**good, "n": 3}, headers=auth), 400, "n")
        assert "at most 2" in never["message"]
        # slots and queue taken by a request the engine has not got to: a 429 that a retry gets past
        go_on = threading.Event()
        step = s.engine.step
        monkeypatch.setattr(s.engine, "step", lambda: go_on.wait(10) and step())
        with httpx.stream("POST", url, json={**good, "n": 2, "stream": True}, headers=auth) as held:
            lines = held.iter_lines()  # kept: a dropped iterator would close the connection
            next(lines)
            full = httpx.post(url, json=good, headers=auth)
            assert_openai_error(full, 429)
            assert full.headers["retry-after"] == "1"
            go_on.set()
            assert [line for line in lines if line][-1] == "data: [DONE]"
        assert httpx.get(s.url + "/health").status_code == 200  # health needs no key
        assert_openai_error(httpx.get(s.url + "/metrics"), 401)
    settings.audit.close()
    text = audit.read_text()
    assert (
        KEY not in text and "secret words" not in text
    )  # neither the key nor, without --audit-content, the text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["status"] for r in records] == [401, 401, 401, 200, 400, 429, 200]  # /metrics is not audited
    ok = records[3]
    assert (
        ok["key_id"] == settings.keys.check(KEY)
        and ok["tokens_out"] == 3
        and ok["tokens_in"] > 0
        and ok["latency_ms"] > 0
    )
    assert ok["key_id"] == key_id(KEY, key_id_secret(audit))  # the secret beside the log
    assert ok["endpoint"] == "POST /v1/chat/completions" and records[0]["key_id"] is None


def test_keys_file_comments_and_a_key_with_a_hash(tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\n   # alice left\nsk-with#hash-0123\n\n" + KEY + "\n")
    keys = Keys.load([], keys_file)
    assert keys.check("sk-with#hash-0123") == key_id("sk-with#hash-0123", keys.secret)
    assert keys.check(KEY) == key_id(KEY, keys.secret)
    assert keys.check("sk-with") is None and keys.check("# team keys") is None


def test_the_audit_log_is_created_owner_only(tmp_path):
    path = tmp_path / "audit" / "serve.jsonl"
    log = AuditLog(path, content=True)
    log.write({"prompt": "private"})
    log.close()
    assert path.stat().st_mode & 0o777 == 0o600
    AuditLog(path).close()  # reopening appends
    assert path.read_text().count("private") == 1


def test_no_key_beyond_loopback_needs_allow_no_key(model_dir):
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, keys_required=False, allow_no_key=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(UserError, match="--allow-no-key"):
            check_exposure(host, keys_required=False, allow_no_key=False)
        check_exposure(host, keys_required=True, allow_no_key=False)
        check_exposure(host, keys_required=False, allow_no_key=True)
    with pytest.raises(UserError, match="--allow-no-key"):  # refused before anything is loaded
        build_app(model_dir, ServeConfig(host="0.0.0.0"))


# ---------------------------------------------------------------- precision and the stage


def test_int8_linear_is_close_and_serves(model_dir):
    linear = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(5, 64)
    for kernel in ("dequant", "int8pack"):
        q = Int8Linear(linear, kernel)
        error = (q(x) - linear(x)).abs().max() / linear(x).abs().max()
        assert error < 0.03, kernel
    model = load_pretrained(model_dir)
    fp32_bytes = decode_weight_bytes(model)
    quantize_int8(model)
    assert decode_weight_bytes(model) < fp32_bytes / 3.5
    app, settings = build_app(model_dir, ServeConfig(dtype="int8", slots=2))
    with Server(app) as s:
        reply = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert reply.usage.completion_tokens == 5


def test_serve_settings_mistakes_are_user_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="dtype"):
        build_app(model_dir, ServeConfig(dtype="fp8"))
    with pytest.raises(UserError, match="dtype"):
        prepare(load_pretrained(model_dir), "fp8")
    for flags, named in [
        ({"threads": -1}, "--threads"),
        ({"slots": 0}, "--slots"),
        ({"max_queue": -1}, "--max-queue"),
        ({"prefill_chunk": 0}, "--prefill-chunk"),
        ({"stream_interval_ms": -1}, "--stream-interval-ms"),
        ({"max_body_bytes": 10}, "--max-body"),
        ({"port": 70000}, "--port"),
        ({"max_model_len": 1}, "--max-model-len"),
        ({"max_model_len": CONTEXT + 1}, "--max-model-len"),
    ]:
        with pytest.raises(UserError, match=named):
            build_app(model_dir, ServeConfig(**flags))
    with pytest.raises(UserError, match="keys file"):
        build_app(model_dir, ServeConfig(api_keys_file=tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="at least 8"):
        build_app(model_dir, ServeConfig(api_keys=["short"]))


def test_a_foreign_tokenizer_is_a_user_error_at_start(model_dir, tmp_path):
    """A tokenizer that cannot render a conversation (or is larger than the model) is refused before serving."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    def model_with(vocab: dict[str, int]) -> Path:
        directory = tmp_path / f"foreign-{len(vocab)}"
        directory.mkdir()
        for f in ("config.json", "model.safetensors"):
            (directory / f).symlink_to(model_dir / f)
        HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(directory / "tokenizer.json"))
        return directory

    # <|eos|> and <|end|> are there, so the engine could start; no tokenizer_config.json names a chat template
    lacking = model_with({"[UNK]": 0, "<|eos|>": 1, "<|end|>": 2, "a": 3})
    with pytest.raises(UserError, match="has no chat template"):
        build_app(lacking, ServeConfig())
    words = {t: i for i, t in enumerate(SPECIAL_TOKENS)} | {
        f"w{i}": len(SPECIAL_TOKENS) + i for i in range(600)
    }
    too_big = model_with({"[UNK]": len(words), **words})
    with pytest.raises(UserError, match="do not belong together"):
        build_app(too_big, ServeConfig())
