import pytest
import torch

from autarky import generate
from autarky.generate import SamplingParams, TextPolicy, complete, find_stop, held_back, sample, stream
from autarky.model import load_pretrained
from autarky.tokenizer import Tokenizer
from tests.test_engine import MODEL, TOK


def test_greedy_and_top_k_one_agree():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5]])
    assert sample(logits, SamplingParams(temperature=0)).item() == 1
    assert sample(logits, SamplingParams(temperature=1.0, top_k=1)).item() == 1


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {sample(logits, SamplingParams(temperature=1.0, top_p=0.75), g).item() for _ in range(300)}
    assert seen == {0, 1}


def test_a_tiny_temperature_is_greedy_and_never_nan():
    """Issue 8.4: temperature 1e-45 divided the logits to inf and the softmax to NaN, and the
    sampler raised. Checked to fail on the old sampler (multinomial's "probability tensor contains
    either inf, nan or element < 0")."""
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5], [3e38, -3e38, 0.0, 1.0]])
    greedy = logits.argmax(dim=-1)
    for temperature in (1e-45, 1e-30, 1e-6):
        assert torch.equal(sample(logits, SamplingParams(temperature=temperature)), greedy)
    assert torch.equal(sample(logits, SamplingParams(temperature=1e-4)), greedy)  # sampled, yet one-hot
    assert sample(logits, SamplingParams(temperature=2.0), torch.Generator().manual_seed(0)).shape == (2,)
    with pytest.raises(ValueError, match="not finite"):
        sample(torch.tensor([[0.0, float("nan")]]), SamplingParams(temperature=0))


def test_stop_string_helpers():
    assert find_stop("hello wor", ["world"]) is None
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello wor", ["or", "world"]) == 3 and held_back("hello wo", ["or"]) == 1
    assert held_back("hello", ["world"]) == 0
    assert find_stop("a STOP b", ["STOP", "b"]) == 2


def feed(policy: TextPolicy, text: str) -> list[str]:
    """Feed `text` one byte token at a time; the pieces the policy lets out (final one included)."""
    pieces = []
    for token in text.encode():
        policy.accept(token)
        pieces.append(policy.take())
        if policy.finish_reason:
            break
    return pieces


def test_the_text_policy_holds_back_cuts_and_names_the_finish():
    policy = TextPolicy(TOK, ["world", "!!"], max_tokens=100)
    pieces = feed(policy, "hello wo! world again")
    # "w", "wo" and "!" wait until the next character shows they are no stop string's start
    assert pieces == [*"hello ", "", "", "wo", "! ", "", "", "", "", ""]
    assert policy.text == "hello wo! " and policy.finish_reason == "stop"
    assert len(policy.token_ids) == len("hello wo! world")  # the stop string's tokens count

    policy = TextPolicy(TOK, ["!!"], max_tokens=4)
    assert "".join(feed(policy, "ab!!cd")) == "ab" and policy.finish_reason == "stop"
    policy = TextPolicy(TOK, ["!!"], max_tokens=3)
    assert "".join(feed(policy, "ab!!cd")) == "ab!" and policy.finish_reason == "length"

    policy = TextPolicy(TOK, [], max_tokens=10)
    feed(policy, "мир")
    assert policy.accept(TOK.end_id) is False and policy.finish_reason == "stop"
    assert policy.text == "мир" and len(policy.token_ids) == len("мир".encode())


def test_a_stop_check_reads_only_the_tail_of_the_text(monkeypatch):
    """Issue 8.6: every token searched the whole text for every stop string and tried every prefix
    of each (39 ms a token at 32k characters). Now a token's check reads only the tail where a new
    match or a held-back start can be. Checked to fail on the old loop (it read the whole text)."""
    read: list[int] = []

    def spy(real):
        return lambda text, stops: read.append(len(text)) or real(text, stops)

    monkeypatch.setattr(generate, "find_stop", spy(generate.find_stop))
    monkeypatch.setattr(generate, "held_back", spy(generate.held_back))
    stop = "\x00" * 12  # never generated
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=60, stop=[stop, "\x01\x02"])
    done = complete(MODEL, TOK, [TOK.bos_id, 65], params)
    assert len(done.text) > 3 * len(stop) and done.finish_reason == "length"
    assert read and max(read) <= len(stop) + 4  # a token's text is at most a few characters


def test_seeded_generation_repeats_and_cache_matches_recompute(trained):
    model, tok = load_pretrained(trained.path), Tokenizer.load(trained.path)
    prompt = [tok.bos_id, *tok.encode("The")]
    params = SamplingParams(temperature=0.9, max_tokens=20, seed=7)
    a = complete(model, tok, prompt, params)
    b = complete(model, tok, prompt, params)
    assert a.token_ids == b.token_ids and a.text == b.text
    greedy = SamplingParams(temperature=0, max_tokens=20)
    cached = complete(model, tok, prompt, greedy)
    pieces = list(stream(model, tok, prompt, greedy, use_cache=False))
    assert "".join(pieces) == cached.text


def test_stop_string_is_never_sent(trained):
    model, tok = load_pretrained(trained.path), Tokenizer.load(trained.path)
    prompt = [tok.bos_id, *tok.encode("The")]
    free = complete(model, tok, prompt, SamplingParams(temperature=0, max_tokens=30))
    assert len(free.text) > 4
    stop = free.text[2:4]
    pieces = list(stream(model, tok, prompt, SamplingParams(temperature=0, max_tokens=30, stop=[stop])))
    assert "".join(pieces) == free.text[: free.text.find(stop)]


def test_generate_and_chat_commands_stream_text(trained):
    import subprocess
    import sys

    from tests.conftest import cli_env

    env = cli_env(trained.workspace)
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "autarky.cli",
            "generate",
            trained.name,
            "The",
            "--max-tokens",
            "12",
            "--seed",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("The") and len(gen.stdout) > 5 and "finish reason" in gen.stderr
    chat = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "chat", str(trained.path), "--max-tokens", "8", "--seed", "1"],
        input="hello there\n/reset\nагой\n/exit\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("model> ") == 2
    assert "never chat-tuned" in chat.stderr  # only pretrained: it continues text, and chat says so
    import shutil

    alone = trained.workspace.parent / "newest-ws"  # a workspace whose newest model is this one
    shutil.copytree(trained.path, alone / "model" / trained.name, dirs_exist_ok=True)
    newest = subprocess.run(  # no model named: the newest in the workspace, and chat says which
        [sys.executable, "-m", "autarky.cli", "chat", "--engine", "torch", "-w", str(alone)],
        input="/exit\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert newest.returncode == 0 and f"taking the newest in {alone}, {trained.name}" in newest.stderr, (
        newest.stderr
    )
    from typer.testing import CliRunner

    from autarky.cli import app

    tok = Tokenizer.load(trained.path)
    prompt = next(p for k in range(1, 512) if len(tok.encode_prompt(p := "The list " * k)) > 500)
    room = 512 - len(tok.encode_prompt(prompt))  # the context of the tiny preset
    long = CliRunner().invoke(app, ["generate", str(trained.path), prompt, "--max-tokens", "50"])
    assert long.exit_code == 0, long.output
    assert f"the model's context (512 tokens) capped --max-tokens 50 at {room}," in long.stderr
    assert "capped" not in gen.stderr


def test_chat_ctrl_c_stops_the_reply_not_the_session(tmp_path_factory):
    """Ctrl-C in a reply ended the whole chat; now it ends the reply, and /help lists the commands."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import cli_env
    from tests.test_serve import shared_model_dir

    model = shared_model_dir(tmp_path_factory)  # never ends on its own: each reply fills the context
    chat = subprocess.Popen(
        [sys.executable, "-m", "autarky.cli", "chat", str(model), "--max-tokens", "1000", "--seed", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(tmp_path_factory.mktemp("work")),
    )
    chat.stdin.write(b"/help\nhello\n")
    chat.stdin.flush()
    seen = b""
    while not seen.endswith(b"model> ") or len(seen) == 0:
        byte = os.read(chat.stdout.fileno(), 1)
        assert byte, chat.stderr.read().decode()
        seen += byte
    os.read(chat.stdout.fileno(), 1)  # the reply has begun
    chat.send_signal(signal.SIGINT)
    out, err = chat.communicate(b"again\n/exit\n", timeout=120)
    text, err = (seen + out).decode(), err.decode()
    assert chat.returncode == 0, err
    assert "(stopped)" in err and "interrupted" not in err
    assert text.count("model> ") == 2  # the session went on to answer the next line
    assert "/reset starts over" in err.split("chatting;")[1]  # /help's list, besides the greeting's


def test_a_model_is_chat_tuned_when_a_chat_corpus_is_upstream(tmp_path):
    from autarky.artifact import Builder
    from autarky.model import chat_tuned

    def make(kind: str, name: str, inputs=(), config=None):
        with Builder(tmp_path / "work", kind, name, config or {"name": name}, list(inputs)) as b:
            (b.dir / "x").write_text(name)
            return b.finish()

    pretrained = make("model", "base")
    chat = make("chat", "talk")
    tuned = make("model", "base-sft", [pretrained, chat])
    more = make("model", "base-sft-more", [tuned])  # trained further with --init: it was chat-tuned
    imported = make("model", "qwen", config={"origin": "imported"})
    assert chat_tuned(pretrained.path) is False
    assert chat_tuned(tuned.path) is True and chat_tuned(more.path) is True
    assert chat_tuned(imported.path) is None  # its maker's training is not in the lineage
    assert chat_tuned(tmp_path) is None  # a checkpoint without a manifest


def test_a_long_conversation_drops_its_oldest_turns_not_the_session(trained):
    import pytest

    from autarky.console import UserError
    from autarky.generate import fit_conversation

    tok = Tokenizer.load(trained.path)
    system = {"role": "system", "content": "be brief"}
    turns = [{"role": r, "content": f"turn {i} " * 20} for i, r in enumerate(["user", "assistant"] * 6)]
    messages, ids = fit_conversation(tok, [system, *turns, {"role": "user", "content": "last"}], 1, 50, 256)
    assert messages[0] == system and messages[-1]["content"] == "last"
    assert len(messages) < 14 and len(ids) + 50 <= 256
    assert ids == tok.apply_chat_template(messages)
    with pytest.raises(UserError, match="alone takes"):
        fit_conversation(tok, [{"role": "user", "content": "word " * 400}], 0, 50, 256)
