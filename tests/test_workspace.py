"""Workspace care: ls that fits the terminal, show, rm, gc, names for lineage and verify, --force's warning,
and verify across workspaces and over the recorded source files. Artifacts are built directly: small and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from autarky import artifact, workspace
from autarky.cli import app
from autarky.console import UserError
from tests.conftest import cli_env

LONG = "handbook-licences-2678a849"  # a name as default_name makes them

METRICS = {
    "corpus": {"documents_kept": 66, "bytes_kept": 275601},
    "tokenizer": {"vocab_size": 4096},
    "tokens": {"train": {"tokens": 133388}, "val": {"tokens": 712}},
    "model": {"parameters": 1234567, "val_bpb": 2.3456},
    "eval": {"bpb": {"docs": 3.725}},
}


def make(workdir, kind, name, inputs=(), sources=None, content=b"x"):
    builder = artifact.Builder(workdir, kind, name, {"n": name}, list(inputs), sources)
    with builder:
        (builder.dir / "data.bin").write_bytes(content)
        builder.metrics = METRICS.get(kind, {})
        return builder.finish()


@pytest.fixture
def ws(tmp_path):
    """corpus → tokenizer → tokens → model, and an eval of the model: a lineage with a fork."""
    work = tmp_path / "work"
    corpus = make(work, "corpus", LONG)
    tokenizer = make(work, "tokenizer", f"{LONG[:-9]}-bpe4096-787627db", [corpus])
    tokens = make(work, "tokens", f"{LONG[:-9]}-bpe4096-1a2b3c4d", [corpus, tokenizer])
    model = make(work, "model", f"{LONG[:-9]}-tiny-5e6f7a8b", [tokens, tokenizer])
    ev = make(work, "eval", "eval-docs-tiny-0a0b0c0d", [model])
    return work, [corpus, tokenizer, tokens, model, ev]


def cli(*args, workdir=None):
    argv = [*args, *(["-w", str(workdir)] if workdir else [])]
    return CliRunner().invoke(app, argv)


def run_cli(*args, columns=200, workdir=None):
    env = {**cli_env(workdir), "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "autarky.cli", *args], env=env, capture_output=True, text=True
    )


# ---------------------------------------------------------------- names


def test_find_takes_a_name_a_kind_and_name_a_path_or_latest(ws):
    work, (corpus, tokenizer, *_, ev) = ws
    assert artifact.find(work, LONG) == corpus
    assert artifact.find(work, f"tokenizer/{tokenizer.name}") == tokenizer
    assert artifact.find(work, str(tokenizer.path)) == tokenizer
    assert artifact.find(work, "latest").path == ev.path


def test_a_name_two_kinds_share_is_refused_with_both_spelled_out(ws):
    work, _ = ws
    make(work, "tokens", LONG)
    with pytest.raises(UserError, match=f"corpus/{LONG}, tokens/{LONG}; say which, as kind/name"):
        artifact.find(work, LONG)
    assert artifact.find(work, f"tokens/{LONG}").kind == "tokens"


def test_a_name_not_found_suggests_what_it_may_have_meant(ws):
    """The newcomer types the stem, not the hash; a directory of that name in the current one is not taken."""
    work, _ = ws
    with pytest.raises(UserError, match=f"did you mean {LONG}"):
        artifact.find(work, "handbook")
    (work / "model" / "half").mkdir()
    with pytest.raises(UserError, match="not a finished artifact"):
        artifact.find(work, "half")


def test_lineage_and_verify_take_a_name_and_w(ws):
    work, (corpus, *_, model, _ev) = ws
    lineage = cli("lineage", model.name, workdir=work)
    assert lineage.exit_code == 0, lineage.output
    assert f"corpus/{LONG}" in lineage.stdout and f"model/{model.name}" in lineage.stdout
    verified = cli("verify", model.name, workdir=work)
    assert verified.exit_code == 0, verified.output
    assert f"checked corpus/{LONG}" in verified.stdout and "ok: 4 artifact(s)" in verified.stdout
    newest = cli("verify", workdir=work)  # no name: the newest, and said which on stderr
    assert "the newest artifact" in newest.stderr and "eval/eval-docs-tiny-0a0b0c0d" in newest.stderr


# ---------------------------------------------------------------- verify: sources, other workspaces


def test_verify_rehashes_the_sources_still_present_and_counts_the_rest(tmp_path):
    files = [tmp_path / f"doc{i}.txt" for i in range(4)]
    for f in files:
        f.write_text(f"text of {f.name}")
    sources = [{"path": str(f), "sha256": artifact.sha256_file(f), "bytes": f.stat().st_size} for f in files]
    corpus = make(tmp_path / "work", "corpus", "docs", sources=sources)
    files[0].write_text("text of doc0.txt, edited")
    files[1].write_text("TEXT of doc1.txt")  # the same size: only the hash tells
    files[2].unlink()
    check = artifact.check_sources([corpus])
    assert check.checked == 3 and len(check.missing) == 1
    assert check.changed == [("corpus/docs", str(files[0])), ("corpus/docs", str(files[1]))]

    result = cli("verify", "docs", workdir=tmp_path / "work")
    assert result.exit_code == 0, result.output  # the corpus holds its own copy: a warning
    assert "sources: 4 recorded, 3 re-hashed, 2 changed since, 1 not checked" in result.stdout
    assert f"changed source corpus/docs: {files[0]}" in result.stdout
    strict = cli("verify", "docs", "--strict", workdir=tmp_path / "work")
    assert strict.exit_code == 1 and f"CHANGED source corpus/docs: {files[1]}" in strict.stdout


def test_verify_follows_an_input_into_the_workspace_it_was_made_in(tmp_path):
    """An input made in another workspace is named with it (relative), followed there, and said so."""
    home, other = tmp_path / "home", tmp_path / "other"
    up = make(home, "corpus", "docs")
    down = make(other, "tokenizer", "bpe", [up])
    assert down.manifest["inputs"][0]["workspace"] == "../home"
    assert down.inputs() == [up]  # a later stage finds it too

    result = cli("verify", "bpe", workdir=other)
    assert result.exit_code == 0, result.output
    assert f"checked corpus/docs (1 files)  (in the workspace {home})" in result.stdout
    lineage = cli("lineage", "bpe", workdir=other)
    assert f"in the workspace {home}" in lineage.stdout

    (up.path / "data.bin").write_bytes(b"changed")
    result = cli("verify", "bpe", workdir=other)
    assert result.exit_code == 1 and "corpus/docs: data.bin: changed" in result.stdout
    assert make(home, "tokenizer", "bpe-home", [up]).manifest["inputs"][0].keys() == {
        "kind",
        "name",
        "id",
        "seal",
    }


# ---------------------------------------------------------------- ls


@pytest.mark.parametrize("columns", [80, 200])
def test_ls_fits_the_terminal_and_never_cuts_a_name(ws, columns):
    work, made = ws
    (work / "model" / "run-killed").mkdir()
    result = run_cli("ls", "-w", str(work), columns=columns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= columns for line in lines), [len(line) for line in lines]
    for a in made:
        assert any(a.name in line for line in lines), a.name
    for metric in (
        "66 docs, 269.1 KB",
        "vocab 4096",
        "134.1K tokens",
        "1.2M params, val 2.346 bpb",
        "3.725 bpb",
    ):
        assert metric in result.stdout
    assert "run-killed" in result.stdout and "unfinished" in result.stdout
    assert "autarky gc" in result.stderr and "autarky gc" not in result.stdout  # a hint is no result
    wide = columns == 200
    header = next(line for line in lines if "kind" in line).split()
    assert ("inputs" in header) == wide and ("id" in header) == wide
    assert (made[0].id[7:19] in result.stdout) == wide


def test_ls_prints_a_name_longer_than_the_terminal_whole(tmp_path, monkeypatch):
    from autarky.console import out

    name = "a-name-longer-than-the-terminal-is-wide-" * 2 + "2678a849"
    make(tmp_path, "corpus", name)
    monkeypatch.setattr(out, "_width", 60)
    result = cli("ls", workdir=tmp_path)
    assert result.exit_code == 0, result.output
    assert name in result.stdout and "…" not in result.stdout


def test_ls_json_keeps_its_shape_and_adds_size_and_metric(ws):
    work, made = ws
    records = json.loads(cli("ls", "--json", workdir=work).stdout)
    assert {r["name"] for r in records} == {a.name for a in made}
    for r in records:
        assert r.keys() == {"kind", "name", "id", "seal", "path", "created", "bytes", "metric"}
        assert r["bytes"] == 1
    assert {r["metric"] for r in records} >= {"vocab 4096", "3.725 bpb"}


# ---------------------------------------------------------------- show


def test_show_says_what_an_artifact_is_and_what_comes_next(ws):
    work, (_, tokenizer, tokens, *_) = ws
    result = cli("show", tokens.name, workdir=work)
    assert result.exit_code == 0, result.output
    for part in (tokens.id, tokens.manifest["created"], f"corpus/{LONG}", f"tokenizer/{tokenizer.name}"):
        assert part in result.stdout
    assert "134.1K tokens" in result.stdout and "data.bin" in result.stdout
    assert f"next: autarky train {tokens.name} -w " in result.stdout
    shown = json.loads(cli("show", tokenizer.name, "--json", workdir=work).stdout)
    assert shown["metrics"] == {"vocab_size": 4096} and shown["files"].keys() == {"data.bin"}
    assert shown["next"][0].startswith(f"autarky tokenize {LONG} {tokenizer.name}")


# ---------------------------------------------------------------- rm, --force


def test_rm_refuses_while_artifacts_depend_on_it_and_cascade_removes_them(ws):
    work, (corpus, tokenizer, tokens, model, ev) = ws
    below = artifact.dependents(work, tokenizer)
    assert {a.path for a in below} == {tokens.path, model.path, ev.path} and below[-1] == ev  # nearest first
    refused = cli("rm", tokenizer.name, workdir=work)
    assert isinstance(refused.exception, UserError)
    message = str(refused.exception)
    assert f"tokens/{tokens.name}" in message and f"eval/{ev.name}" in message and "--cascade" in message
    assert tokenizer.path.exists()

    dry = cli("rm", tokenizer.name, "--cascade", "--dry-run", workdir=work)
    assert dry.stdout.count("would remove") == 4 and model.path.exists()
    gone = cli("rm", tokenizer.name, "--cascade", workdir=work)
    assert gone.exit_code == 0, gone.output
    assert [a.path.exists() for a in (corpus, tokenizer, tokens, model, ev)] == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert cli("rm", LONG, workdir=work).exit_code == 0 and not corpus.path.exists()


def test_force_names_the_artifacts_it_invalidates(ws, capsys):
    work, (corpus, tokenizer, tokens, model, ev) = ws
    capsys.readouterr()
    redo = artifact.Builder(work, "tokenizer", tokenizer.name, {"n": tokenizer.name}, [corpus])
    assert redo.existing(force=True) is None
    warning = capsys.readouterr().err
    assert f"replacing tokenizer/{tokenizer.name}" in warning
    assert all(f"{a.kind}/{a.name}" in warning for a in (tokens, model, ev))
    alone = artifact.Builder(work, "eval", ev.name, {"n": ev.name}, [model])
    alone.existing(force=True)
    assert "replacing" not in capsys.readouterr().err  # nothing was made from it: nothing to say


# ---------------------------------------------------------------- gc


def test_gc_removes_unfinished_runs_but_keeps_what_can_resume_and_every_finished_artifact(ws):
    work, made = ws
    hour_ago = time.time() - 3600
    dirs = {
        "stale": work / "model" / "killed",
        "resumable": work / "model" / "checkpointed",
        "recent": work / "model" / "running",
        "staging": work / "corpus" / ".parts-0123456789abcdef",
        "parts": work / "corpus" / ".parts-fedcba9876543210",
        "damaged": work / "tokens" / "damaged",
    }
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("{}\n")
    (dirs["resumable"] / workspace.RESUMABLE[0]).write_bytes(b"weights")
    (dirs["parts"] / "0001.json").write_text("{}")
    (dirs["damaged"] / "manifest.json").write_text("{not json")
    for name, d in dirs.items():
        if name != "recent":
            for p in [*d.iterdir(), d]:
                os.utime(p, (hour_ago, hour_ago))

    dry = cli("gc", "--dry-run", workdir=work)
    assert dry.exit_code == 0, dry.output
    assert all(d.exists() for d in dirs.values()) and "would remove" in dry.stdout
    assert "damaged" not in dry.stdout  # a manifest is there: verify's business, not gc's

    cli("gc", workdir=work)
    left = {name for name, d in dirs.items() if d.exists()}
    assert left == {"resumable", "recent", "parts", "damaged"}
    assert all(a.path.exists() for a in made)
    cli("gc", "--all", workdir=work)
    assert {name for name, d in dirs.items() if d.exists()} == {"damaged"}
    assert all(a.path.exists() for a in made) and artifact.verify(made[-1].path)[1] == []


def test_gc_knows_the_checkpoint_training_writes():
    from autarky.train.checkpoint import CHECKPOINT

    assert CHECKPOINT in workspace.RESUMABLE


def test_show_a_model_leads_on_as_train_does(pipeline, tmp_path):
    """The next commands of a model made from a real corpus: a prompt from its held-out text, eval on it."""
    work = tmp_path / "work"
    model = make(work, "model", "docs-tiny-1a2b3c4d", [pipeline.tokens, pipeline.tokenizer])
    result = cli("show", model.name, workdir=work)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("next: ")]
    assert lines[0].startswith(f"next: autarky generate {model.name} ") and len(lines[0].split()) > 4
    assert f"next: autarky eval {model.name} --corpus {pipeline.corpus.name} -w " in result.stdout
    assert "1.2M params, val 2.346 bpb" in result.stdout
    assert "tokens/" in result.stdout and "(in ../" in result.stdout  # its inputs live in another workspace


def test_ls_lists_an_artifact_whose_metrics_are_not_what_its_kind_records(tmp_path):
    """Metrics are the stage's claims, sealed but never checked: a manifest made by hand still lists."""
    odd = make(tmp_path, "corpus", "by-hand")
    manifest = json.loads((odd.path / "manifest.json").read_text())
    manifest["metrics"] = {"documents_kept": 3, "bytes_kept": "lots"}
    (odd.path / "manifest.json").write_text(json.dumps(manifest))
    result = cli("ls", "--json", workdir=tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["metric"] == ""


def test_lineage_names_a_missing_input_in_its_place_and_prints_names_as_text(tmp_path):
    work = tmp_path / "work"
    up = make(work, "corpus", "docs[draft]")
    down = make(work, "tokenizer", "bpe", [up])
    shown = cli("show", "docs[draft]", workdir=work)
    assert "docs[draft]" in shown.stdout
    (up.path / "manifest.json").unlink()  # as a crash halfway through a manual rm leaves it
    result = cli("lineage", down.name, workdir=work)
    assert result.exit_code == 0, result.output
    assert "tokenizer/bpe" in result.stdout and "corpus/docs[draft]: " in result.stdout
    assert "not a finished artifact" in result.stdout
