"""`autarky report` gathers every stage's figures into one page; `lineage --uses` finds every artifact
made from a source file, by path or by content, and says so plainly when none was."""

from __future__ import annotations

import hashlib
import shutil
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from autarky import artifact
from autarky.cli import app
from autarky.console import console
from autarky.evaluate.config import EvalConfig


@pytest.fixture(scope="module")
def work(pipeline, trained, tmp_path_factory):
    """A copy of the session's workspace (the artifacts made here stay out of others' way), and an eval."""
    from autarky.evaluate.stage import evaluate

    workdir = tmp_path_factory.mktemp("report") / "work"
    shutil.copytree(pipeline.workdir, workdir, ignore=shutil.ignore_patterns(".parts-*"))
    model = artifact.load(workdir / "model" / trained.name)
    corpus = artifact.load(workdir / "corpus" / pipeline.corpus.name)
    return SimpleNamespace(
        workdir=workdir,
        source=pipeline.source,
        model=model,
        corpus=corpus,
        evaluate=lambda: evaluate(
            model,
            workdir,
            [corpus],
            config=EvalConfig(bpb_tokens=400, seq_len=64, prompts=["The"], sample_tokens=4),
        ),
    )


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables as wide as they need, so a name is never cut with an ellipsis in what is checked."""
    monkeypatch.setattr(console, "width", 200)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_the_report_gathers_every_stage_and_each_eval_of_the_model(work):
    from autarky.evaluate.report import make_report

    before = make_report(work.model, work.workdir)
    assert "No eval of this model yet" in (before.path / "report.md").read_text()
    evaluation = work.evaluate()
    report = make_report(work.model, work.workdir)
    assert report.name != before.name and report.kind == "report"
    assert [i["kind"] for i in report.manifest["inputs"]] == ["model", "eval"]
    text = (report.path / "report.md").read_text()
    for heading in ("## Lineage", "## Curation: corpus/", "## Tokenizer: tokenizer/", "## Tokens: tokens/"):
        assert heading in text
    assert (
        f"## Training: model/{work.model.name}" in text and f"## Evaluation: eval/{evaluation.name}" in text
    )
    assert "bytes/token" in text and "tokens/word" in text  # fertility per language
    assert f"{evaluation.metrics['bpb'][work.corpus.name]:.4g}" in text
    charts = {f for f in report.manifest["files"] if f.endswith(".png")}
    assert {f"training-{work.model.name}.png", f"eval-{evaluation.name}.png"} <= charts
    assert all(f"]({chart})" in text for chart in charts)
    checked, problems = artifact.verify(report.path)
    assert not problems and {a.kind for a in checked} >= {"report", "eval", "model", "corpus"}
    assert make_report(work.model, work.workdir).id == report.id
    printed = invoke("report", work.model.name, "-w", str(work.workdir))
    assert "Report: model/" in printed and "reusing report" in printed


def test_lineage_uses_finds_every_artifact_made_from_a_file_by_path_or_content(work):
    work.evaluate()
    used = sorted(work.source.glob("000-*.txt"))[0]
    digest = hashlib.sha256(used.read_bytes()).hexdigest()
    by_file = {
        (a.kind, a.name) for a, _ in artifact.uses(work.workdir, artifact.source_matcher(str(used))[1])
    }
    assert {"corpus", "tokenizer", "tokens", "model", "eval"} <= {kind for kind, _ in by_file}
    for given in (digest, f"sha256:{digest.upper()}", f"{used.parent.name}/{used.name}"):
        found = artifact.uses(work.workdir, artifact.source_matcher(given)[1])
        assert {(a.kind, a.name) for a, _ in found} == by_file, given
    corpus_hits = [
        hits
        for a, hits in artifact.uses(work.workdir, artifact.source_matcher(digest)[1])
        if a.kind == "corpus"
    ]
    assert [h["sha256"] for h in corpus_hits[0]] == [f"sha256:{digest}"]
    printed = invoke("lineage", "--uses", str(used), "-w", str(work.workdir))
    assert work.corpus.name in printed and work.model.name in printed and "read" in printed


def test_lineage_uses_on_a_file_nothing_used_is_an_explicit_empty_answer(work, tmp_path):
    unused = tmp_path / "letter.txt"
    unused.write_text("Dear Sir, please delete my data.\n")
    assert artifact.uses(work.workdir, artifact.source_matcher(str(unused))[1]) == []
    assert "no artifact in" in invoke("lineage", "--uses", str(unused), "-w", str(work.workdir))
    assert "was made from the path gone.txt" in invoke(
        "lineage", "--uses", "gone.txt", "-w", str(work.workdir)
    )
    # neither a name nor --uses: the newest artifact, and an empty workspace has none
    result = CliRunner().invoke(app, ["lineage", "-w", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "holds no finished artifact" in str(result.exception)


def test_eval_verb_and_compare_print_tables_and_a_chart(work, tmp_path):
    evaluation = work.evaluate()
    wd = ["-w", str(work.workdir)]
    settings = ["--bpb-tokens", "400", "--seq-len", "64", "--prompt", "The", "--sample-tokens", "4"]
    printed = invoke("eval", work.model.name, "--corpus", work.corpus.name, "--no-suite", *settings, *wd)
    assert f"reusing finished eval {evaluation.path}" in printed and "bits/byte" in printed
    result = CliRunner().invoke(app, ["eval", work.model.name, "--corpus", "nothing-here", *wd])
    assert result.exit_code != 0 and "no finished corpus called 'nothing-here'" in str(result.exception)
    printed = invoke("eval", "--compare", "-w", str(work.workdir), "--plot", str(tmp_path / "c.png"))
    assert work.model.name in printed and f"bpb:{work.corpus.name}" in printed
    assert (tmp_path / "c.png").stat().st_size > 1000
