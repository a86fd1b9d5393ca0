"""The serving engine on a tiny one-layer Llama and a byte tokenizer: each test takes milliseconds.

Every engine result is checked against `generate.complete` run alone, so a mistake in row packing,
prefill chunking or the text rules shows up as different text.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from autarky.generate import Completion, SamplingParams, complete, stream
from autarky.model import Llama, ModelConfig
from autarky.runner import TorchRunner
from autarky.serve.engine import EmbedJob, Engine, Event, Request
from autarky.tokenizer import StreamDecoder


class ByteTokenizer:
    """What the engine and `TextPolicy` use of a tokenizer: ids 0-255 are bytes, then three specials."""

    eos_id, end_id, bos_id = 256, 257, 258
    stop_ids = {eos_id, end_id}
    vocab_size = 259

    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        if token_id < 256:
            return bytes([token_id])
        return b"" if skip_special else f"<|{token_id}|>".encode()

    def decode_stream(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special)


def tiny_model(context: int = 64) -> Llama:
    """A random one-layer Llama whose next tokens are clear winners, so a batch's last-bit
    differences from a lone run never flip one, and which never picks a special token."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=context,
        tie_word_embeddings=False,
    )
    model = Llama(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
        model.lm_head.weight[256:] = 0
    return model


MODEL, TOK = tiny_model(), ByteTokenizer()


def prompt(n: int, start: int = 65) -> list[int]:
    return [TOK.bos_id, *[(start + i) % 256 for i in range(n - 1)]]


def request(ids: list[int], **params) -> tuple[Request, list[Event]]:
    events: list[Event] = []
    return Request(ids, SamplingParams(**{"max_tokens": 8, **params}), events.append), events


def finished(events: list[Event]) -> bool:
    return bool(events) and events[-1].finish_reason is not None


def submit(engine: Engine, *requests: tuple[Request, list[Event]]) -> None:
    for r, _ in requests:
        engine.submit(r)


def run(engine: Engine, *requests: tuple[Request, list[Event]], max_steps: int = 300) -> int:
    """Step the engine until the requests have all finished; the steps it took."""
    for steps in range(1, max_steps + 1):
        engine.step()
        if all(finished(events) for _, events in requests):
            return steps
    raise AssertionError(f"not finished after {max_steps} steps")


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events)


def alone(ids: list[int], **params) -> str:
    return complete(MODEL, TOK, ids, SamplingParams(**{"max_tokens": 8, **params})).text


def test_a_one_slot_engine_and_generate_give_the_same_text():
    """One text policy: the engine's pieces, text and finish reason are exactly `generate`'s."""
    ids = prompt(6)
    free = alone(ids, max_tokens=30, seed=3, temperature=0.9)
    settings = [
        dict(max_tokens=30, seed=3, temperature=0.9, top_k=40, top_p=0.9),
        dict(max_tokens=30, seed=3, temperature=0.9, stop=["never", free[9:12]]),  # across tokens
        dict(max_tokens=12, temperature=0, presence_penalty=0.5, frequency_penalty=0.5),
    ]
    reasons = []
    for params in settings:
        done = Completion()
        pieces = list(stream(MODEL, TOK, ids, SamplingParams(**params), completion=done))
        r, events = request(ids, **params)
        engine = Engine(TorchRunner(MODEL, slots=1), TOK, prefill_chunk=4)
        submit(engine, (r, events))
        run(engine, (r, events))
        assert [e.text for e in events if e.text] == pieces
        assert text(events) == done.text and events[-1].finish_reason == done.finish_reason
        assert events[-1].completion_tokens == len(done.token_ids)
        reasons.append(done.finish_reason)
    assert reasons == ["length", "stop", "length"]


def test_rows_stay_packed_as_requests_finish_and_a_waiting_one_takes_the_freed_row():
    """Requests ending at different steps: after each release running[i] still owns row i (its
    length is its prompt and tokens so far) and every text is the request's text run alone."""
    engine = Engine(TorchRunner(MODEL, slots=3), TOK, prefill_chunk=64)
    work = [
        (prompt(4 + 3 * i, start=70 + i), dict(max_tokens=3 + 4 * i, seed=i, temperature=1.0))
        for i in range(4)
    ]
    requests = [request(ids, **params) for ids, params in work]
    submit(engine, *requests)
    for _ in range(100):
        engine.step()
        for row, seq in enumerate(engine.running):
            assert int(engine.runner.cache.lengths[row]) == len(seq.prompt) + len(seq.policy.token_ids) - 1
        assert not engine.runner.cache.lengths[len(engine.running) :].any()
        if all(finished(events) for _, events in requests):
            break
    for (ids, params), (_, events) in zip(work, requests, strict=True):
        assert text(events) == alone(ids, **params) and events[-1].finish_reason == "length"


def test_prompts_are_prefilled_in_chunks_that_share_one_budget_per_step():
    """Prompts shorter than, equal to and longer than the chunk, prefilled together: no step feeds
    the model more than the chunk plus one token per running request, and each text is unchanged."""
    fed: list[int] = []
    hook = MODEL.model.embed_tokens.register_forward_hook(lambda m, args, out: fed.append(args[0].numel()))
    try:
        engine = Engine(TorchRunner(MODEL, slots=4), TOK, prefill_chunk=4)
        work = [prompt(n, start=n) for n in (3, 4, 5, 11)]
        requests = [request(ids, max_tokens=5, temperature=0) for ids in work]
        submit(engine, *requests)
        while not all(finished(events) for _, events in requests):
            before, running = len(fed), len(engine.running)
            engine.step()
            assert sum(fed[before:]) <= engine.prefill_chunk + running + 1
    finally:
        hook.remove()
    for ids, (_, events) in zip(work, requests, strict=True):
        assert text(events) == alone(ids, max_tokens=5, temperature=0)


def test_a_request_cancelled_during_prefill_frees_its_slot_at_the_next_step():
    engine = Engine(TorchRunner(MODEL, slots=1), TOK, prefill_chunk=4)
    r, events = request(prompt(30), max_tokens=5)
    engine.submit(r)
    engine.step()
    engine.step()
    assert engine.prefilling is not None and engine.prefilling.prefilled == 8
    engine.cancel(r)
    engine.step()
    assert events[-1].finish_reason == "cancelled" and events[-1].text == ""
    assert engine.busy_slots == 0 and engine.queue_depth == 0
    after = request(prompt(9), max_tokens=6, seed=2, temperature=1.0)  # the prefill cache starts afresh
    submit(engine, after)
    run(engine, after)
    assert text(after[1]) == alone(prompt(9), max_tokens=6, seed=2, temperature=1.0)


def test_a_tiny_temperature_samples_greedily_and_fails_nobody():
    """Issue 8.4: temperature 1e-45 overflowed the logits to inf, the softmax gave NaN and the step
    failed every request in flight. Checked to fail on the old engine (every request got "error")."""
    engine = Engine(TorchRunner(MODEL, slots=2), TOK, prefill_chunk=64)
    tiny = request(prompt(5), max_tokens=10, temperature=1e-45)
    other = request(prompt(7, start=90), max_tokens=10, seed=1, temperature=1.0)
    submit(engine, tiny, other)
    run(engine, tiny, other)
    assert text(tiny[1]) == alone(prompt(5), max_tokens=10, temperature=0)
    assert text(other[1]) == alone(prompt(7, start=90), max_tokens=10, seed=1, temperature=1.0)
    assert tiny[1][-1].finish_reason == other[1][-1].finish_reason == "length"


@pytest.fixture
def poisoned():
    """Token 200's embedding is NaN: a prompt holding it gives NaN logits, as a broken model would."""
    with torch.no_grad():
        saved = MODEL.model.embed_tokens.weight[200].clone()
        MODEL.model.embed_tokens.weight[200] = float("nan")
    yield 200
    with torch.no_grad():
        MODEL.model.embed_tokens.weight[200] = saved


def test_a_request_whose_numbers_go_wrong_fails_alone_and_at_once(poisoned):
    """Issue 8.4: NaN logits failed every request in the step, and the one whose prefill they came
    from got no event at all (its client hung). Checked on the old engine: the running request
    failed too, and the step raised with the poisoned request left without an answer."""
    engine = Engine(TorchRunner(MODEL, slots=3), TOK, prefill_chunk=64)
    running = request(prompt(6), max_tokens=12, seed=4, temperature=1.0)
    engine.submit(running[0])
    engine.step()
    bad = request([TOK.bos_id, 65, poisoned, 66], max_tokens=12)
    engine.submit(bad[0])
    engine.step()  # its prefill ends in this step: it must be answered in it
    assert bad[1][-1].finish_reason == "error" and "not finite" in bad[1][-1].error
    run(engine, running)
    assert text(running[1]) == alone(prompt(6), max_tokens=12, seed=4, temperature=1.0)


def test_a_running_request_that_goes_nan_fails_alone_and_leaves_its_row_clean():
    """A NaN in one running row's cache fails that request alone; its row is zeroed before the last
    row moves in, or the mover (shorter than the NaN's position, in a batch whose longest row makes
    the attention read past its end) would turn NaN too (0 × NaN)."""
    engine = Engine(TorchRunner(MODEL, slots=3), TOK, prefill_chunk=64)
    work = [prompt(40, start=1), prompt(45, start=2), prompt(5, start=3)]
    requests = [request(ids, max_tokens=12, seed=i, temperature=1.0) for i, ids in enumerate(work)]
    submit(engine, *requests)
    while len(engine.running) < 3:
        engine.step()
    assert [s.request for s in engine.running] == [r for r, _ in requests]
    engine.runner.cache.v[0][0, :, 35] = float("nan")
    run(engine, *requests[1:])
    assert requests[0][1][-1].finish_reason == "error"
    for ids, i in ((work[1], 1), (work[2], 2)):
        assert text(requests[i][1]) == alone(ids, max_tokens=12, seed=i, temperature=1.0)


def reference_embedding(ids: list[int]) -> torch.Tensor:
    """The mean of the final normed hidden states of a whole-input forward pass, unit length."""
    states = []
    hook = MODEL.model.norm.register_forward_hook(lambda m, args, out: states.append(out))
    try:
        with torch.no_grad():
            MODEL(torch.tensor([ids]))
    finally:
        hook.remove()
    return torch.nn.functional.normalize(states[0][0].mean(dim=0), dim=0)


def test_embeddings_are_prefilled_in_chunks_between_decode_steps():
    """Issue 8.5: each engine step ran a whole embedding job, so with 4 embedding clients a
    20-token completion took 62 s. Now embedding inputs share the prefill budget: no step feeds
    the model more than the chunk plus the running batch, and the completion decodes every step.
    Checked to fail on the old engine (a step fed a whole job: 100 tokens)."""
    fed: list[int] = []
    hook = MODEL.model.embed_tokens.register_forward_hook(lambda m, args, out: fed.append(args[0].numel()))
    results: list = []
    try:
        engine = Engine(TorchRunner(MODEL, slots=2), TOK, prefill_chunk=8)
        completion = request(prompt(5), max_tokens=20, temperature=0)
        engine.submit(completion[0])
        engine.step()
        inputs = [prompt(50, start=i) for i in range(8)]
        for j in range(4):
            engine.embed(EmbedJob(inputs[2 * j : 2 * j + 2], lambda v, e: results.append((v, e))))
        steps = 0
        while not finished(completion[1]):
            before, running = len(fed), len(engine.running)
            engine.step()
            steps += 1
            assert sum(fed[before:]) <= engine.prefill_chunk + running
        assert steps <= 20
        while len(results) < 4:
            engine.step()
    finally:
        hook.remove()
    assert text(completion[1]) == alone(prompt(5), max_tokens=20, temperature=0)
    vectors = [v for pair, _ in results for v in pair]
    assert all(error is None for _, error in results)
    for ids, vector in zip(inputs, vectors, strict=True):
        assert torch.allclose(torch.tensor(vector), reference_embedding(ids), atol=1e-5)


def test_a_cancelled_embedding_stops_at_the_next_step():
    engine = Engine(TorchRunner(MODEL, slots=1), TOK, prefill_chunk=8)
    results: list = []
    job = EmbedJob([prompt(60), prompt(60)], lambda v, e: results.append((v, e)))
    engine.embed(job)
    engine.step()
    assert engine.prefilling is not None and engine.queue_depth == 1
    engine.cancel(job)
    engine.step()
    assert engine.prefilling is None and engine.queue_depth == 0 and not results


class Paused(Engine):
    """An engine whose thread the test plays by hand (`step`)."""

    alive = True


def test_embeddings_count_against_capacity_and_stop_when_their_client_leaves():
    """Issue 8.5: embeddings skipped the 429 queue and ran on after the client left. Checked to fail
    on the old code (no capacity check, and nothing watched for the client's disconnect)."""
    from autarky.serve.jobs import ClientGone, embed
    from autarky.serve.protocol import RequestError

    engine = Paused(TorchRunner(MODEL, slots=1), TOK, prefill_chunk=8)
    state = SimpleNamespace(engine=engine, settings=SimpleNamespace(max_queue=1), inflight=1)

    async def gone():
        return {"type": "http.disconnect"}

    async def main():
        with pytest.raises(RequestError) as refused:
            await embed(state, [prompt(10), prompt(10)], gone)
        assert refused.value.status == 429 and state.inflight == 1
        with pytest.raises(ClientGone):
            await embed(state, [prompt(60)], gone)
        assert state.inflight == 1

    asyncio.run(main())
    engine.step()
    assert engine.prefilling is None and engine.queue_depth == 0


def test_tokens_faster_than_the_stream_interval_are_sent_together():
    """The first token goes at once; later ones wait for the interval and go in one event, with
    their logprobs; the text is the same as a token at a time."""
    ids = prompt(5)
    texts = {}
    for interval in (0.0, 3600.0):
        r, events = request(ids, max_tokens=20, temperature=0)
        r.logprobs = 0
        engine = Engine(TorchRunner(MODEL, slots=1), TOK, stream_interval=interval)
        submit(engine, (r, events))
        run(engine, (r, events))
        texts[interval] = text(events)
        assert sum(len(e.logprobs) for e in events) == 20
        if interval:
            assert len(events) == 2 and len(events[0].logprobs) == 1 and events[1].finish_reason == "length"
        else:
            assert [len(e.logprobs) for e in events] == [1] * 20  # an event per token
    assert texts[0.0] == texts[3600.0] == alone(ids, max_tokens=20, temperature=0)
