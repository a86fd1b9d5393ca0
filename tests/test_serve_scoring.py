"""Prompt scoring on /v1/completions (echo with logprobs) and /tokenizer_info, checked against one
in-process forward pass, and lm-evaluation-harness run against the server offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
import torch.nn.functional as F

from autarky.evaluate.score import loglikelihood as score_in_process
from autarky.generate import SamplingParams
from autarky.model import load_pretrained, save_pretrained
from autarky.runner import TorchRunner
from autarky.serve import ServeConfig, build_app
from autarky.serve.engine import Engine, Request
from autarky.tokenizer import CHAT_TEMPLATE, Tokenizer
from autarky.train import TOKENIZER_FILES
from tests.test_serve import CONTEXT, ENGINES, Server, shared_model_dir

# Log-probabilities from the server's chunked prefill and from one forward pass agree this closely
# in fp32 (the bar for lm-eval's numbers against ours).
EXACT = 1e-4
PROMPT = "Мороз и солнце; день чудесный! The list of built-in functions, in order. " * 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The serving tests' model with its logits softened, so prompt tokens get varied logprobs."""
    shared = shared_model_dir(tmp_path_factory)
    directory = tmp_path_factory.mktemp("scoring") / "model"
    model = load_pretrained(shared)
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)
    save_pretrained(model, directory)
    for f in TOKENIZER_FILES:
        shutil.copy(shared / f, directory / f)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    return load_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def tok(model_dir) -> Tokenizer:
    return Tokenizer.load(model_dir)


@pytest.fixture(scope="module", params=ENGINES)
def server(model_dir, tmp_path_factory, request):
    # A prefill chunk of 32 tokens, so most prompts here are scored over several chunks.
    config = ServeConfig(
        slots=4,
        max_queue=16,
        prefill_chunk=32,
        model_name="tiny",
        audit_log=tmp_path_factory.mktemp("a") / "a",
        engine=request.param,
    )
    app, settings = build_app(model_dir, config)
    with Server(app) as s:
        yield s
    settings.audit.close()


def reference(model, ids: list[int]) -> torch.Tensor:
    """Every position's log-probabilities from one forward pass over `ids`, with no cache."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return F.log_softmax(logits[0].float(), dim=-1)


def score(server, **body) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/completions", json={"model": "tiny", "echo": True, **body}, timeout=60
    )


# ---------------------------------------------------------------- the engine, stepped by hand


def soft_engine_model():
    """test_engine's one-layer model with its logits left as initialised (not made peaked)."""
    from tests.test_engine import tiny_model

    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.div_(50)
    return model


def step_until_done(engine: Engine, events: list) -> None:
    """Step the engine as its thread does (in inference mode) until the request has finished."""
    with torch.inference_mode():
        for _ in range(300):
            engine.step()
            if events and events[-1].finish_reason is not None:
                return
    raise AssertionError("the request did not finish in 300 steps")


def test_the_engine_scores_a_prompt_beside_a_running_request_without_taking_its_slot():
    from tests.test_engine import TOK, finished, prompt, request

    model = soft_engine_model()
    engine = Engine(TorchRunner(model, slots=1), TOK, prefill_chunk=5)
    engine.stop_ids = set()  # nothing ends the running request early
    runner = request(prompt(4), max_tokens=40)
    engine.submit(runner[0])
    with torch.inference_mode():
        engine.step()
    assert len(engine.running) == 1  # the only slot is taken
    ids, events = prompt(23), []
    engine.submit(
        Request(ids, SamplingParams(max_tokens=1), events.append, prompt_logprobs=2, generate=False)
    )
    step_until_done(engine, events)
    assert not finished(runner[1])  # scored while the other request kept its slot
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 0
    entries = sum((e.prompt_logprobs for e in events), [])
    assert [e.token_id for e in entries] == ids and entries[0].logprob is None
    ref = reference(model, ids)
    for i, e in enumerate(entries[1:]):
        assert abs(e.logprob - ref[i, ids[i + 1]].item()) <= 1e-5
        assert [lp for *_, lp in e.top] == pytest.approx(ref[i].topk(2).values.tolist(), abs=1e-5)


@pytest.mark.parametrize("end_logprob", [True, False])
def test_the_end_token_that_stops_a_scored_prompt_is_listed_when_asked(end_logprob):
    """lm-eval drops the last entry as the generated one: a greedy end token must still be there."""
    from tests.test_engine import TOK, prompt

    model = soft_engine_model()
    ids = prompt(9)
    engine = Engine(TorchRunner(model, slots=1), TOK, prefill_chunk=4)
    engine.stop_ids = {int(reference(model, ids)[-1].argmax())}  # the greedy next token ends it
    events = []
    params = SamplingParams(max_tokens=1, temperature=0)
    engine.submit(Request(ids, params, events.append, logprobs=1, prompt_logprobs=1, end_logprob=end_logprob))
    step_until_done(engine, events)
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 0
    assert len(sum((e.prompt_logprobs for e in events), [])) == len(ids)
    assert len(sum((e.logprobs for e in events), [])) == (1 if end_logprob else 0)


# ---------------------------------------------------------------- over HTTP


def test_echo_scores_every_prompt_token_as_one_forward_pass_would(server, model, tok):
    r = score(server, prompt=PROMPT, logprobs=2, max_tokens=0)
    assert r.status_code == 200, r.text
    choice, ids = r.json()["choices"][0], [tok.bos_id, *tok.encode(PROMPT)]
    assert len(ids) > 64  # scored over three chunks
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert r.json()["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None and lp["tokens"][0] == "<|bos|>"
    ref = reference(model, ids)
    expected = torch.tensor([ref[i, ids[i + 1]].item() for i in range(len(ids) - 1)])
    assert (torch.tensor(lp["token_logprobs"][1:]) - expected).abs().max() <= EXACT
    assert expected.std() > 0.5  # the scores differ from token to token: the check has teeth
    for i, top in enumerate(lp["top_logprobs"][1:]):
        # Two alternatives, one key when both show as the same text (halves of characters): the
        # likelier one's logprob is kept, so the top-1 is always right.
        assert 1 <= len(top) <= 2 and max(top.values()) == pytest.approx(ref[i].max().item(), abs=EXACT)
        assert max(top.values()) >= lp["token_logprobs"][i + 1]
    # Each token's text sits at its offset in the echoed text; <|bos|> adds none.
    assert lp["text_offset"][:2] == [0, 0]
    for token, offset in zip(lp["tokens"][1:], lp["text_offset"][1:], strict=True):
        if "\ufffd" not in token:
            assert PROMPT[offset : offset + len(token)] == token


def test_batched_token_prompts_as_lm_eval_sends_them(server, model, tok):
    """lm-eval's loglikelihood request: id lists, echo, logprobs 1, max_tokens 1, temperature 0.

    It sums token_logprobs[ctxlen:-1], so each choice must hold exactly its prompt's tokens and one
    generated token, and `is_greedy` compares each logprob with its top-1.
    """
    prompts = [tok.encode(t) for t in ("The cat", "Мороз и солнце; день", PROMPT)]
    r = score(server, prompt=prompts, logprobs=1, max_tokens=1, temperature=0, seed=1234)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert len(choices) == 3
    for ids, choice in zip(prompts, choices, strict=True):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1 and choice["finish_reason"] == "length"
        ref = reference(model, ids)
        expected = [ref[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        assert lp["token_logprobs"][1:-1] == pytest.approx(expected, abs=EXACT)
        # The generated token is the greedy one: its logprob is its top-1's, to the bit.
        assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())
        assert lp["token_logprobs"][-1] == pytest.approx(ref[-1].max().item(), abs=EXACT)
        assert choice["text"].startswith(tok.decode(ids))


def test_a_streamed_echo_sends_the_prompt_with_its_logprobs_first(server):
    whole = score(server, prompt="The list of", logprobs=1, max_tokens=3, temperature=0).json()["choices"][0]
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "The list of",
            "echo": True,
            "logprobs": 1,
            "max_tokens": 3,
            "temperature": 0,
            "stream": True,
        },
    ) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line and line != "data: [DONE]"]
    first = chunks[0]["choices"][0]
    assert first["text"].startswith("The list of") and first["logprobs"]["token_logprobs"][0] is None
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    streamed = sum((c["choices"][0]["logprobs"]["token_logprobs"] for c in chunks), [])
    assert streamed == whole["logprobs"]["token_logprobs"]
    offsets = sum((c["choices"][0]["logprobs"]["text_offset"] for c in chunks), [])
    assert offsets == whole["logprobs"]["text_offset"]


def test_a_prompt_may_fill_the_context_when_nothing_is_generated(server, tok):
    full = (tok.encode(PROMPT * 20))[:CONTEXT]
    r = score(server, prompt=full, logprobs=0, max_tokens=0)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"][0]["logprobs"]["token_logprobs"]) == CONTEXT
    for body in (
        {"prompt": full + full[:1], "max_tokens": 0},  # one token past the context
        {"prompt": full, "max_tokens": 1},  # no room left to generate
    ):
        r = score(server, logprobs=1, **body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


@pytest.mark.parametrize(
    "body, param",
    [
        ({"logprobs": 6}, "logprobs"),  # above OpenAI's maximum of 5
        ({"logprobs": -1}, "logprobs"),
        ({"echo": False, "max_tokens": 0}, "max_tokens"),  # nothing to return
        ({"max_tokens": -1}, "max_tokens"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [10**6]}, "prompt"),  # outside the vocabulary
    ],
)
def test_scoring_requests_the_server_cannot_answer_are_400s(server, body, param):
    r = score(server, **{"prompt": "The cat", "max_tokens": 0, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_tokenizer_info_lets_a_client_count_with_the_servers_tokenizer(server, tok):
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|eos|>" and info["bos_token"] == "<|bos|>"
    assert info["eos_token_id"] == tok.eos_id and info["bos_token_id"] == tok.bos_id
    assert info["model_max_length"] == CONTEXT and info["chat_template"] == CHAT_TEMPLATE
    # What lm-eval's remote tokenizer sends: no model, no special tokens.
    ids = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert ids["tokens"] == tok.encode(PROMPT)
    back = httpx.post(server.url + "/detokenize", json={"tokens": ids["tokens"]}).json()
    assert back["prompt"] == PROMPT


# ---------------------------------------------------------------- lm-evaluation-harness, offline

# A multiple-choice task in lm-eval's format, from a local JSONL file: Russian and English, the
# continuation after a space, as lm-eval's target_delimiter puts it.
TASK_DOCS = [
    {"question": "Мороз и солнце; день", "choices": ["чудесный!", "дождливый.", "вечер"], "label": 0},
    {"question": "Под голубыми небесами великолепными", "choices": ["коврами", "домами"], "label": 0},
    {"question": "The list of built-in", "choices": ["functions", "cats", "rivers and hills"], "label": 0},
    {"question": "Return the absolute value of a", "choices": ["number.", "string", "list"], "label": 0},
    {"question": "Ещё ты дремлешь, друг", "choices": ["прелестный.", "старый", "мой"], "label": 1},
]
TASK_YAML = """\
task: autarky_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def lm_eval_pairs(sample: dict) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval logged for a sample, in either of its layouts."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}
        return [(a["arg_0"], a["arg_1"]) for a in args.values()]
    return [(a[0], a[1]) for a in args]


def lm_eval_ids(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The ids lm-eval sends for a pair with a remote tokenizer: trailing spaces of the context move
    to the continuation, the continuation is what encoding the whole adds after the context's own
    tokens, and no <|bos|> (its remote tokenizer adds no special tokens)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tok.encode(context)
    return ctx, tok.encode(context + continuation)[len(ctx) :]


def summed(model, ctx: list[int], cont: list[int]) -> float:
    """The continuation's log-probabilities summed, from one forward pass over context + continuation."""
    ids = ctx + cont
    logprobs = reference(model, ids)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))


def test_lm_eval_multiple_choice_matches_our_loglikelihoods(server, model, tok, tmp_path, monkeypatch):
    """lm-eval's `local-completions` with its remote tokenizer, fully offline, against the server."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval[api] is in the dev extra")
    from lm_eval.tasks import TaskManager

    data = tmp_path / "choice.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in TASK_DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "autarky_choice.yaml").write_text(TASK_YAML.format(data=data, cache=tmp_path / "cache"))
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": server.url + "/v1/completions",
            "model": "tiny",
            "tokenizer_backend": "remote",
            "tokenized_requests": True,
            "max_length": CONTEXT,
            "max_retries": 1,
        },
        tasks=["autarky_choice"],
        task_manager=TaskManager(include_path=str(tasks)),
        batch_size=4,  # several prompts a request, as token-id lists
        log_samples=True,
    )
    samples = results["samples"]["autarky_choice"]
    assert len(samples) == len(TASK_DOCS)
    theirs, requests = [], []
    for sample in samples:
        pairs = lm_eval_pairs(sample)
        assert len(pairs) == len(sample["doc"]["choices"]) == len(sample["resps"])
        theirs += [resp[0] for resp in sample["resps"]]
        requests += [lm_eval_ids(tok, context, continuation) for context, continuation in pairs]
    assert len(theirs) == sum(len(d["choices"]) for d in TASK_DOCS)
    # `autarky eval`'s in-process scorer, given the same ids, agrees on the sum and on greediness.
    ours = score_in_process(model, requests)
    for (their_sum, their_greedy), (our_sum, our_greedy), (ctx, cont) in zip(
        theirs, ours, requests, strict=True
    ):
        assert abs(their_sum - our_sum) <= EXACT and abs(their_sum - summed(model, ctx, cont)) <= EXACT
        assert their_greedy == our_greedy
    assert 0 <= results["results"]["autarky_choice"]["acc,none"] <= 1
