import inspect
import json
import subprocess
import sys

from autarky import artifact
from autarky.demo import export_python_docs, first_sentences, instruction_set
from tests.conftest import cli_env, write_sources


def test_python_docs_export_is_deterministic_and_leaks_no_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTARKY_TEST_SECRET", "hunter2-do-not-train-on-me")
    first = export_python_docs(tmp_path / "a")
    second = export_python_docs(tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*.txt"))
    assert len(files) > 100 and (first / "library" / "json.txt").is_file()
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.txt"))
    for rel in files:
        text = (first / rel).read_text()
        assert text == (second / rel).read_text()
        assert "hunter2" not in text and " at 0x" not in text


def test_the_instruction_set_is_made_from_the_docs_alone(tmp_path):
    docs = export_python_docs(tmp_path / "docs")
    chats = instruction_set(docs)
    assert chats == instruction_set(docs) and len(chats) > 1000
    answers = {c["messages"][0]["content"]: c["messages"][1]["content"] for c in chats}
    paragraph = inspect.getdoc(json.dumps).split("\n\n")[0]
    assert answers["What does `json.dumps` do?"] == first_sentences(paragraph)
    assert answers["Which module provides `Counter`?"] == "`Counter` is in the `collections` module."
    assert "Which module provides `dumps`?" not in answers  # json, pickle and marshal all have one
    assert answers["Tell me about assert."].startswith("Assert statements are a convenient way")
    assert all([m["role"] for m in c["messages"]] == ["user", "assistant"] for c in chats)


def _demo(workdir, source):
    args = [
        sys.executable,
        "-m",
        "autarky.cli",
        "demo",
        "--source",
        str(source),
        "--minutes",
        "0.5",
        "--max-steps",
        "12",
        "--sft-minutes",
        "0.5",
        "--vocab-size",
        "512",
    ]
    return subprocess.run(args, env=cli_env(workdir), capture_output=True, text=True, timeout=300)


def test_demo_runs_the_whole_pipeline_then_reuses_it(tmp_path):
    source = write_sources(tmp_path / "docs", n_docs=30)
    workdir = tmp_path / "work"
    first = _demo(workdir, source)
    assert first.returncode == 0, first.stderr[-3000:]
    for expected in ("1 · curate", "4 · train", "6 · chat data", "7 · sft", "what was made", "sample"):
        assert expected in first.stderr
    assert "source files" in first.stderr and "model>" in first.stderr.split("chat with")[1]
    finished, unfinished = artifact.list_workspace(workdir)
    kinds = sorted(a.kind for a in finished)
    made = ["card", "chat", "corpus", "eval", "model", "model", "tokenizer", "tokens"]
    assert (
        [k for k in kinds if k != "tasks"] == made and not unfinished and "8 · eval and card" in first.stderr
    )
    card = next(a for a in finished if a.kind == "card")
    assert (card.path / "bom.cdx.json").is_file() and artifact.verify(card.path)[1] == []
    chat_model = next(a for a in finished if a.kind == "model" and a.inputs("chat"))
    assert artifact.verify(chat_model.path)[1] == []
    for verb in ("chat", "serve"):  # it ends as every stage does, with how to use what it made
        assert f"next: autarky {verb} {chat_model.name}\n" in first.stdout
    second = _demo(workdir, source)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing finished model" in second.stderr
    assert [a.id for a in artifact.list_workspace(workdir)[0]] == [a.id for a in finished]


def test_demo_with_a_missing_source_is_one_clear_error(tmp_path):
    out = _demo(tmp_path / "work", tmp_path / "nope")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_every_verb_has_help_with_an_example():
    out = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "--help"], capture_output=True, text=True, env=cli_env("work")
    )
    from autarky.cli import app

    verbs = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"demo", "curate", "tokenizer", "tokenize", "train", "generate", "chat", "serve"} <= set(verbs)
    for verb in verbs:
        assert verb in out.stdout
        help_text = subprocess.run(
            [sys.executable, "-m", "autarky.cli", verb, "--help"],
            capture_output=True,
            text=True,
            env=cli_env("work"),
        ).stdout
        assert "Example" in help_text, verb
