"""A newcomer's path: own documents to a model using only what each stage printed as its next command.

Also the rules that make it work: `latest`, the newest artifact of a kind when none is named, default
names that say what went in, `--json` on every stage, and an input path's workspace taking the output.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autarky import artifact
from autarky.cli import app
from autarky.console import UserError
from tests.conftest import write_sources

# What the test adds to a printed command, to keep it to seconds: never a name.
FAST = {
    "tokenizer": ["--vocab-size", "512"],
    "train": ["--max-steps", "3", "--seq-len", "64", "--batch-size", "4", "--eval-tokens", "1024"],
    "generate": ["--max-tokens", "8", "--seed", "0"],
}


def _run(cwd: Path, words: list[str]) -> subprocess.CompletedProcess:
    """`autarky WORDS` as a user runs it, in `cwd`, with no $AUTARKY_WORKDIR set."""
    env = {k: v for k, v in os.environ.items() if k != "AUTARKY_WORKDIR"} | {"COLUMNS": "200"}
    command = [sys.executable, "-m", "autarky.cli", *words, *FAST.get(words[0], [])]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"autarky {shlex.join(words)}\n{done.stderr[-3000:]}"
    return done


def _next(done: subprocess.CompletedProcess) -> list[list[str]]:
    lines = [line.removeprefix("next: ") for line in done.stdout.splitlines() if line.startswith("next: ")]
    assert lines, done.stdout
    commands = [shlex.split(line) for line in lines]
    assert all(c[0] == "autarky" for c in commands)
    return [c[1:] for c in commands]


def test_own_documents_to_generated_text_by_following_next(tmp_path):
    """The README's walkthrough: curate → tokenizer → tokenize → train → generate, no name typed."""
    write_sources(tmp_path / "docs", n_docs=40)
    done = _run(tmp_path, ["curate", "docs", "-w", "ws"])
    made = []
    for verb in ("tokenizer", "tokenize", "train", "generate"):
        step = _next(done)[0]
        assert step[0] == verb and step[-2:] == ["-w", "ws"], step
        done = _run(tmp_path, step)
        made.append(step)
    tokenizer, tokens, model = (artifact.newest(tmp_path / "ws", k) for k in ("tokenizer", "tokens", "model"))
    assert tokenizer.name.startswith("docs-bpe512-") and tokens.name.startswith("docs-bpe512-")
    assert model.name.startswith("docs-tiny-") and made[-1][1] == model.name
    prompt = made[-1][2]
    assert done.stdout.startswith(prompt) and len(done.stdout) > len(prompt)
    assert not (tmp_path / "work").exists()  # -w ws carried through every step
    again = json.loads(_run(tmp_path, ["train", "-w", "ws", "--json"]).stdout)  # the newest tokens, reused
    assert (again["kind"], again["name"], again["id"]) == ("model", model.name, model.id)
    assert again["metrics"]["steps"] == 3 and again["next"][0] == shlex.join(["autarky", *made[-1]])


@pytest.fixture
def ws(pipeline, tmp_path, monkeypatch):
    """A copy of the session's corpus, tokenizer and tokens, and a current directory with no workspace."""
    copy = tmp_path / "ws"
    for a in (pipeline.corpus, pipeline.tokenizer, pipeline.tokens):
        shutil.copytree(a.path, copy / a.kind / a.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTARKY_WORKDIR", raising=False)
    return copy


def _cli(*words: str):
    result = CliRunner().invoke(app, list(words))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_json_is_the_artifact_its_metrics_and_next(ws, pipeline):
    made = json.loads(_cli("tokenize", "latest", "latest", "-w", str(ws), "--json").stdout)
    assert list(made)[:5] == ["kind", "name", "id", "path", "metrics"]
    tokens = artifact.load(made["path"])
    assert (made["kind"], made["name"], made["id"]) == ("tokens", tokens.name, tokens.id)
    assert made["metrics"] == tokens.metrics and made["name"] == pipeline.tokens.name  # reused: same recipe
    assert made["next"] == [f"autarky train {tokens.name} -w ws"]  # as typed from the current directory


STAGES = (
    "curate",
    "curate-chat",
    "tokenizer",
    "tokenize",
    "import",
    "train",
    "sft",
    "export",
    "eval",
    "card",
)


def test_every_stage_has_json_and_takes_its_inputs_by_default():
    import typer.main

    verbs = typer.main.get_command(app).commands
    for verb in STAGES:
        flags = {flag for p in verbs[verb].params for flag in p.opts}
        assert "--json" in flags, verb
    for verb in (
        "tokenizer",
        "tokenize",
        "train",
        "sft",
        "export",
        "eval",
        "card",
    ):  # an artifact in, none required
        assert not [p.name for p in verbs[verb].params if p.required], verb


def test_an_input_not_named_is_the_newest_of_its_kind_and_said(ws, pipeline):
    result = _cli("tokenizer", "--vocab-size", "300", "-w", str(ws))
    assert f"no corpus named: taking the newest in ws, {pipeline.corpus.name}" in result.stderr
    newer = artifact.newest(ws, "tokenizer")
    assert newer.name != pipeline.tokenizer.name and newer.metrics["vocab_size"] == 300
    assert f"next: autarky tokenize {pipeline.corpus.name} {newer.name} -w ws\n" in result.stdout
    result = _cli("tokenize", "-w", str(ws))
    assert f"no tokenizer named: taking the newest in ws, {newer.name}" in result.stderr
    assert artifact.newest(ws, "tokens").inputs("tokenizer")[0].name == newer.name
    assert (
        "latest tokenizer: " + newer.name
        in _cli("tokenize", pipeline.corpus.name, "latest", "-w", str(ws)).stderr
    )


def test_no_artifact_of_the_kind_says_which_verb_makes_one(tmp_path):
    with pytest.raises(UserError, match=r"holds no tokens yet; `autarky tokenize"):
        _cli("train", "-w", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"holds no model yet; `autarky train"):
        artifact.resolve(tmp_path, "latest", "model")


def test_an_input_path_in_a_workspace_takes_the_output_there(ws, pipeline, tmp_path):
    given = f"ws/corpus/{pipeline.corpus.name}"
    result = _cli("tokenizer", given, "--vocab-size", "300")
    assert f"output goes to the workspace ws, where corpus/{pipeline.corpus.name} lives" in result.stderr
    assert not (tmp_path / "work").exists() and len(list((ws / "tokenizer").iterdir())) == 2
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("next:")]
    assert line.endswith(" -w ws")
    result = _cli("tokenizer", given, "--vocab-size", "300", "-w", "elsewhere")
    said = " ".join(result.stderr.split())
    assert (
        f"warning: corpus/{pipeline.corpus.name} lives in the workspace ws, but the output goes to elsewhere"
        in said
    )
    assert (tmp_path / "elsewhere" / "tokenizer").is_dir()
    loose = tmp_path / "copied" / "docs"  # an artifact directory in no workspace: the output stays in ./work
    shutil.copytree(pipeline.corpus.path, loose)
    result = _cli("tokenizer", str(loose), "--vocab-size", "300")
    assert "output goes" not in result.stderr and (tmp_path / "work" / "tokenizer").is_dir()


def test_default_names_say_what_went_in_without_growing_hashes(pipeline):
    assert artifact.compose_name("docs-2678a849", "docs-bpe4096-787627db") == "docs-bpe4096"
    assert artifact.compose_name("docs-2678a849", "Qwen2.5-0.5B-1a2b3c4d") == "docs-Qwen2.5-0.5B"
    corpus = pipeline.corpus
    named = artifact.default_name(f"{corpus.name}-sft", "model", {}, [corpus])
    assert (
        named.startswith(f"{artifact.stem(corpus.name)}-sft-")
        and named.count("-") == corpus.name.count("-") + 1
    )
    assert pipeline.tokenizer.name.startswith(f"{artifact.stem(corpus.name)}-bpe512-")


def test_the_readme_walkthrough_runs_what_each_stage_printed():
    """The README's own-documents session: every command after the first is a `next:` line it printed."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    session = readme.split("## Your own documents")[1].split("```console\n")[1].split("```")[0]
    printed: list[str] = []
    commands = 0
    for line in session.splitlines():
        if line.startswith("$ "):
            if printed:
                assert line[2:].startswith(printed[0]), (line, printed[0])
            printed, commands = [], commands + 1
        elif line.startswith("next: "):
            printed.append(line.removeprefix("next: "))
    assert commands == 5
    corpus = artifact.stem(shlex.split(session.splitlines()[2].removeprefix("next: "))[2])
    assert (
        f"tokenizer work/tokenizer/{corpus}-bpe4096-" in session
        and f"model work/model/{corpus}-tiny-" in session
    )
