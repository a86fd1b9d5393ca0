"""The llama.cpp engine against the PyTorch one, on a model trained in the test session.

Both runners feed the same ids and our sampler picks from their logits, so at f32 the answers must
be the same token for token, and the prompt's log-probabilities the same to float precision. The
serving API on both engines is covered by tests/test_serve.py and tests/test_serve_scoring.py,
which run every test on each; here are the runners, the engine's batching on llama.cpp, the
export it serves, and what goes wrong at start-up.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from autarky import artifact, llamacpp
from autarky.console import UserError
from autarky.generate import SamplingParams, complete
from autarky.gguf import FILE
from autarky.model import load_pretrained
from autarky.runner import TorchRunner, open_runner
from autarky.serve.engine import EmbedJob, Engine, Event, Request
from autarky.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(llamacpp.available() is not None, reason="llama-cpp-python is not installed")

PROMPTS = ["The list data type", "Мороз и солнце; день чудесный!", "def f(x):\n    return", "class"]


@pytest.fixture(scope="module")
def tok(trained) -> Tokenizer:
    return Tokenizer.load(trained.path)


@pytest.fixture(scope="module")
def torch_model(trained):
    return load_pretrained(trained.path).eval()


@pytest.fixture(scope="module")
def cpp(trained):
    """The trained model in llama.cpp at f32, three running rows."""
    return open_runner(trained.path, "llama.cpp", "fp32", slots=3)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n)


def test_greedy_64_tokens_are_the_same_on_both_engines(trained, tok, torch_model):
    for text in PROMPTS:
        ids = tok.encode_prompt(text)
        want = complete(torch_model, tok, ids, greedy(64))
        got = complete(open_runner(trained.path, "llama.cpp", "fp32"), tok, ids, greedy(64))
        assert got.token_ids == want.token_ids and got.text == want.text
        assert got.finish_reason == want.finish_reason
        assert len(want.token_ids) == 64 or want.finish_reason == "stop"


def test_prompt_log_probabilities_agree_within_1e_3(cpp, tok, torch_model):
    ids = tok.encode_prompt(" ".join(PROMPTS))
    cpp.clear()
    cpp.stage()
    chunks = [cpp.prefill(ids[i : i + 7], all_logits=True) for i in range(0, len(ids), 7)]
    got = F.log_softmax(torch.cat(chunks).float(), dim=-1)
    with torch.no_grad():
        want = F.log_softmax(torch_model(torch.tensor([ids]))[0][0].float(), dim=-1)
    rows = torch.arange(len(ids) - 1)
    chosen = torch.tensor(ids[1:])
    assert (got[rows, chosen] - want[rows, chosen]).abs().max() < 1e-3
    assert (got - want).abs().max() < 1e-3


def test_hidden_states_for_embeddings_agree(cpp, tok, torch_model):
    ids = tok.encode_prompt(PROMPTS[1])
    cpp.clear()
    cpp.stage()
    got = torch.cat([cpp.hidden(ids[:5]), cpp.hidden(ids[5:])])
    reference = TorchRunner(torch_model)
    reference.stage()
    with torch.no_grad():
        want = reference.hidden(ids)
    assert got.shape == want.shape and torch.allclose(got, want.float(), atol=1e-4, rtol=1e-4)


def run(engine: Engine, work: list[tuple[Request, list[Event]]], max_steps: int = 500) -> None:
    with torch.inference_mode():
        for _ in range(max_steps):
            engine.step()
            if all(events and events[-1].finish_reason for _, events in work):
                return
    raise AssertionError("the requests did not finish")


def test_requests_join_and_leave_a_llama_cpp_batch_and_each_answer_is_its_own(cpp, tok, torch_model):
    """Six requests through three rows, prompts fed four tokens a step between decodes, sampled
    and greedy: every text is the one PyTorch gives the request alone."""
    cpp.clear()
    engine = Engine(cpp, tok, prefill_chunk=4)
    settings = [
        dict(temperature=0, max_tokens=12 + 3 * i) if i % 2 else dict(temperature=0.9, seed=i, max_tokens=20)
        for i in range(6)
    ]
    work = []
    for i, params in enumerate(settings):
        events: list[Event] = []
        ids = tok.encode_prompt(PROMPTS[i % len(PROMPTS)] * (1 + i % 3))
        work.append((Request(ids, SamplingParams(**params), events.append), events))
        engine.submit(work[-1][0])
    run(engine, work)
    for (req, events), params in zip(work, settings, strict=True):
        alone = complete(torch_model, tok, req.prompt_ids, SamplingParams(**params))
        assert "".join(e.text for e in events) == alone.text
        assert events[-1].finish_reason == alone.finish_reason
    assert not engine.running and sorted(cpp.free) == [0, 1, 2, 3]


def test_a_cancelled_request_frees_its_llama_cpp_sequence(cpp, tok):
    cpp.clear()
    engine = Engine(cpp, tok, prefill_chunk=4)
    events: list[Event] = []
    req = Request(tok.encode_prompt(PROMPTS[0] * 4), greedy(50), events.append)
    other: list[Event] = []
    engine.submit(req)
    engine.submit(Request(tok.encode_prompt(PROMPTS[1]), greedy(8), other.append))
    with torch.inference_mode():
        engine.step()  # part of the first prompt is in
        engine.cancel(req)
    run(engine, [(req, events)])
    assert events[-1].finish_reason == "cancelled"
    run(engine, [(None, other)])
    assert other[-1].finish_reason == "length" and sorted(cpp.free) == [0, 1, 2, 3]
    vectors: list = []
    engine.embed(
        EmbedJob([tok.encode_prompt("one"), tok.encode_prompt("two")], lambda v, e: vectors.append(v))
    )
    with torch.inference_mode():
        for _ in range(10):
            engine.step()
    assert len(vectors[0]) == 2 and abs(sum(x * x for x in vectors[0][0]) - 1) < 1e-5


def test_the_served_gguf_is_an_export_artifact_made_once_and_checked(trained, tmp_path):
    """Its manifest records the model and the precision; a second start reuses it; a changed file is
    refused in one sentence."""
    workdir = tmp_path / "work"
    shutil.copytree(trained.path.parent.parent, workdir)
    model_dir = workdir / "model" / trained.name
    first = llamacpp.gguf_for(model_dir, "int8")
    export = artifact.load(first.parent, "export")
    assert export.config["dtype"] == "q8_0" and export.manifest["inputs"][0]["id"] == trained.id
    exports = sorted((workdir / "export").iterdir())
    assert llamacpp.gguf_for(model_dir, "int8") == first and sorted((workdir / "export").iterdir()) == exports
    with first.open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(UserError, match="differs from the sha256 in its manifest"):
        open_runner(model_dir, "llama.cpp", "int8")
    assert FILE == first.name


def test_without_llama_cpp_auto_runs_on_torch_and_llama_cpp_is_refused(trained, monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: "llama-cpp-python is not installed")
    assert isinstance(open_runner(trained.path, "auto"), TorchRunner)
    with pytest.raises(UserError, match="llama-cpp-python is not installed"):
        open_runner(trained.path, "llama.cpp")


def test_a_model_llama_cpp_cannot_take_runs_on_torch_under_auto(trained, monkeypatch):
    def refuse(path, dtype):
        raise UserError("architecture Foo has no GGUF form")

    monkeypatch.setattr(llamacpp, "gguf_for", refuse)
    assert isinstance(open_runner(trained.path, "auto"), TorchRunner)
    with pytest.raises(UserError, match="no GGUF form"):
        open_runner(trained.path, "llama.cpp")
    with pytest.raises(UserError, match="unknown --engine"):
        open_runner(trained.path, "vllm")


def test_a_sequence_past_its_context_fails_alone(trained, tok):
    runner = open_runner(trained.path, "llama.cpp", slots=1, context=16)
    runner.stage()
    with pytest.raises(ValueError, match="past its 16-token context"):
        runner.prefill(list(range(20)))
    runner.clear()
    runner.stage()
    assert runner.prefill(tok.encode_prompt("ok")).shape == (1, runner.vocab_size)
