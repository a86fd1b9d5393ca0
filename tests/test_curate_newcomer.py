"""What a newcomer's own folder holds (issue 12.4): README, AUTHORS and licence texts without a
suffix, rotated logs, programs; one document that would fill the corpus; too little text to train on.
Each is read, passed over with its reason, warned about or refused with the way out."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from autarky.console import UserError
from autarky.data.balance import share_cap
from autarky.data.corpus import iter_documents
from autarky.data.curate import CurateConfig, curate
from autarky.data.langid import LANGUAGES
from autarky.data.report import summary_table
from tests.test_curate_readers import make_pdf

LICENCE = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the Software without restriction.\n"
)
ROFF = '.TH TOOL 1 "2024"\n.SH NAME\ntool \\- does a thing for the reader of this page\n'
PROGRAM = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8


def kept(corpus) -> dict[str, dict]:
    """Kept documents by their source name after the directory curated (`bundle.tar!pkg/README`)."""
    rows = [
        d for split in ("train", "val") for d in iter_documents(corpus, split, ("source", "text", "meta"))
    ]
    return {d["source"].removeprefix("docs/"): d for d in rows}


def test_plain_text_without_a_suffix_is_read_and_binaries_are_passed_over_by_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = Path("docs")
    src.mkdir()
    (src / "COPYING").write_text(LICENCE)
    (src / "AUTHORS").write_text("Jane Doe wrote the first version; John Roe the second one.\n")
    (src / "LICENSE.MIT").write_text(LICENCE.replace("charge", "any charge"))
    (src / "Apache-2.0").write_text(LICENCE.replace("charge", "no charge"))  # a version, not a suffix
    (src / "syslog.1").write_text("Dec 1 10:00:00 host cron[2]: the nightly job ran in four seconds\n")
    (src / "tool").write_text(ROFF)  # a man page without a suffix: its roff markers say so
    (src / "program").write_bytes(PROGRAM)
    (src / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    (src / "picture.png").write_bytes(PROGRAM)
    with tarfile.open(src / "bundle.tar", "w") as t:
        for name, data in (
            ("pkg/README", b"Read me first: this package does one thing well."),
            ("pkg/run", PROGRAM),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    corpus = curate([src], Path("work"), config=CurateConfig(near_dedup=False), workers=1)
    docs = kept(corpus)
    assert set(docs) == {
        "COPYING",
        "AUTHORS",
        "LICENSE.MIT",
        "Apache-2.0",
        "syslog.1",
        "tool",
        "bundle.tar!pkg/README",
    }
    assert '"format": "text"' in docs["syslog.1"]["meta"]  # a rotated log, not a man page of section 1
    assert '"format": "man"' in docs["tool"]["meta"] and ".TH" not in docs["tool"]["text"]
    m = corpus.metrics
    assert m["skipped_by_reason"] == {"binary": 2, "private key": 1, "unknown file type": 1}
    reasons = {s["path"].removeprefix("docs/"): s["reason"] for s in m["skipped"]}
    assert reasons == {
        "program": "binary",
        "id_ed25519": "private key",
        "picture.png": "unknown file type",
        "bundle.tar!pkg/run": "binary",
    }
    terminal = Console(record=True, width=120)
    terminal.print(summary_table(m, "corpus"))
    text = terminal.export_text()
    assert "skipped binary" in text and "2 files" in text and "skipped unknown file type" in text


def test_a_page_named_like_a_man_page_without_roff_is_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.3").write_text("Third notes: the meeting moved to Thursday afternoon at four.\n")
    (tmp_path / "ls.1").write_text(ROFF)
    corpus = curate([Path("notes.3"), Path("ls.1")], tmp_path / "work", workers=1)
    formats = {name: d["meta"] for name, d in kept(corpus).items()}
    assert '"format": "text"' in formats["notes.3"] and '"format": "man"' in formats["ls.1"]
    assert corpus.metrics["files_failed"] == 0


def test_a_folder_that_yields_nothing_says_why_and_the_way_out(tmp_path):
    src = tmp_path / "bin"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / name).write_bytes(PROGRAM)
    (src / "data.bin").write_bytes(PROGRAM)
    with pytest.raises(UserError) as e:
        curate([src], tmp_path / "work", workers=1)
    message = str(e.value)
    assert message.startswith(
        f"read 0 documents from 4 files in {src}: 4 skipped (3 binary, 1 unknown file type)"
    )
    assert "convert them to text" in message and "name it on its own" in message
    assert not (tmp_path / "work" / "corpus").exists() or not any((tmp_path / "work" / "corpus").iterdir())


def test_a_run_that_keeps_nothing_names_the_setting_that_dropped_it(tmp_path):
    (tmp_path / "a.txt").write_text("Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный. " * 5)
    (tmp_path / "prog").write_bytes(PROGRAM)
    with pytest.raises(UserError) as e:
        curate([tmp_path], tmp_path / "work", config=CurateConfig(languages=["en"]), workers=1)
    message = str(e.value)
    assert message.startswith(
        "read 1 document from 2 files and kept none: dropped 1 language/language_not_allowed"
    )
    assert "1 skipped (1 binary)" in message and "--lang chooses the languages kept" in message


def test_cli_exits_non_zero_when_nothing_is_read(tmp_path, monkeypatch, capsys):
    from autarky import cli

    (tmp_path / "prog").write_bytes(PROGRAM)
    monkeypatch.setattr("sys.argv", ["autarky", "curate", str(tmp_path / "prog"), "-w", str(tmp_path / "w")])
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "read 0 documents from 1 file and kept none: 1 could not be read (" in " ".join(err.split())
    assert "prog: binary data, not text)" in " ".join(err.split())
    assert "Traceback" not in err


# ------------------------------------------------------------------ languages and reader warnings


def test_an_unknown_language_code_is_refused_with_the_codes_known(tmp_path):
    (tmp_path / "a.txt").write_text(LICENCE)
    for codes, guess in ((["xx"], ""), (["en", "eng"], " (did you mean en?)")):
        with pytest.raises(UserError) as e:
            curate([tmp_path / "a.txt"], tmp_path / "work", config=CurateConfig(languages=codes))
        message = str(e.value)
        bad = codes[-1]
        assert message.startswith(f"--lang {bad}: not a language code fastText's lid.176 knows{guess};")
        assert message.endswith(" ".join(sorted(LANGUAGES))) and " ru " in message
    assert not (tmp_path / "work").exists()


def test_the_known_codes_are_the_models_own():
    from autarky.data.langid import get_model

    labels, _ = get_model().predict("any text at all", k=-1, threshold=-1.0)
    assert LANGUAGES == {label.removeprefix("__label__") for label in labels}


def test_pypdf_warnings_go_to_the_report_not_the_terminal(tmp_path, capfd):
    """Reproduces issue 12.9: pypdf printed "EOF marker not found" in the middle of the progress bar."""
    pdf = make_pdf("A letter whose end marker was cut short, read all the same.")
    (tmp_path / "cut.pdf").write_bytes(pdf.replace(b"%%EOF\n", b"%%EO"))
    (tmp_path / "lost.pdf").write_bytes(pdf.replace(b"%%EOF\n", b""))
    (tmp_path / "a.txt").write_text(LICENCE)
    capfd.readouterr()
    corpus = curate([tmp_path], tmp_path / "work", config=CurateConfig(near_dedup=False), workers=1)
    assert "EOF" not in capfd.readouterr().err
    m = corpus.metrics
    warned = {(Path(w["path"]).name, w["warning"]) for w in m["reader_warnings"]}
    assert {("cut.pdf", "EOF marker seems truncated"), ("lost.pdf", "EOF marker not found")} <= warned
    assert m["documents_kept"] == 2 and [Path(e["path"]).name for e in m["errors"]] == ["lost.pdf"]
    report = (corpus.path / "report.md").read_text()
    assert f"- `{tmp_path}/lost.pdf`: EOF marker not found" in report


# ------------------------------------------------------------------ one document may not fill the corpus


def log_lines(n: int) -> str:
    return "".join(
        f"Dec  1 10:{i // 60 % 60:02d}:{i % 60:02d} host app[{i}]: request {i * 7919 % 10007} served to "
        f"user{i % 97}@example.com from 10.0.{i % 250}.{i % 200 + 1} in {i * 31 % 900} ms\n"
        for i in range(n)
    )


def folder_with_a_big_log(root: Path) -> Path:
    """Six short documents and one log that is most of the text, with e-mails and IP addresses in it."""
    src = root / "docs"
    (src / "var" / "log").mkdir(parents=True)
    (src / "var" / "log" / "app.log").write_text(log_lines(400))
    for i, word in enumerate(("install", "upgrade", "backup", "restore", "monitor", "rotate")):
        (src / f"{word}.txt").write_text(f"How to {word} the service, step {i}:\n{LICENCE}")
    return src


def test_the_report_names_the_largest_documents_and_warns_of_one_over_its_share(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder_with_a_big_log(tmp_path)
    corpus = curate([Path("docs")], Path("work"), config=CurateConfig(near_dedup=False), workers=1)
    m = corpus.metrics
    top = m["largest_documents"][0]
    assert top["source"] == "docs/var/log/app.log" and top["share"] > 0.8
    assert [d["bytes"] for d in m["largest_documents"]] == sorted(
        (d["bytes"] for d in m["largest_documents"]), reverse=True
    )
    assert sum(d["bytes"] for d in m["largest_documents"]) == m["bytes_kept"]  # 7 documents, all listed
    assert m["largest_sources"][0]["path"] == "docs/var/log/app.log"
    assert m["sources"]["docs/var/log/app.log"]["bytes"] == top["bytes"]
    (warning,) = m["warnings"]
    assert warning.startswith(
        f"docs/var/log/app.log ({top['id']}) is {top['share']:.1%} of the kept text, over --max-doc-share 0.2"
    )
    assert m["redacted"] == {"email": 400, "ip": 400}
    report = (corpus.path / "report.md").read_text()
    assert f"> **Warning:** {warning}" in report
    assert f"| `docs/var/log/app.log` | {top['id']} |" in report  # the full relative path, not app.log
    assert "| email | 400 |" in report and "| ip | 400 |" in report
    terminal = Console(record=True, width=200)
    terminal.print(summary_table(m, "corpus"))
    text = terminal.export_text()
    assert f"warning: {warning}" in text and "400 email, 400 ip" in text and "docs/var/log/app.log" in text

    quiet = curate(
        [Path("docs")], Path("work"), config=CurateConfig(near_dedup=False, max_doc_share=1.0), workers=1
    )
    assert quiet.metrics["warnings"] == []
    terminal = Console(record=True, width=200)
    terminal.print(summary_table(quiet.metrics, "corpus"))
    assert (
        f"largest document: docs/var/log/app.log ({top['share']:.1%} of the kept text)"
        in terminal.export_text()
    )


def test_cap_doc_share_cuts_a_document_down_to_its_share_and_keeps_its_start(tmp_path):
    src = folder_with_a_big_log(tmp_path)
    config = CurateConfig(near_dedup=False, cap_doc_share=True, max_doc_share=0.25)
    corpus = curate([src], tmp_path / "work", config=config, workers=1)
    m = corpus.metrics
    assert m["warnings"] == [] and m["documents_kept"] == 7
    (capped,) = m["capped"]["documents"]
    assert capped["source"].endswith("var/log/app.log") and capped["kept_bytes"] <= m["capped"]["bytes"]
    assert max(d["share"] for d in m["largest_documents"]) <= 0.25
    log = next(d for d in kept_rows(corpus) if d["source"].endswith("app.log"))
    original = (src / "var" / "log" / "app.log").read_text()
    redacted = log["text"]
    assert redacted.endswith("ms\n") and len(redacted.encode()) == capped["kept_bytes"]  # cut at a line end
    assert redacted.count("\n") < original.count("\n") and redacted.splitlines()[0].startswith(
        "Dec  1 10:00:00"
    )
    assert json.loads(log["meta"])["capped_from_bytes"] == capped["bytes"]
    assert m["documents_in"] == m["documents_kept"] + m["documents_dropped"]
    assert "cut to its first" in (corpus.path / "report.md").read_text()


def test_a_cap_too_few_documents_can_share_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text(log_lines(50))
    (tmp_path / "b.txt").write_text(LICENCE)
    with pytest.raises(
        UserError, match="cannot hold each of 2 documents to 20% of the corpus: raise --max-doc-share"
    ):
        curate([tmp_path], tmp_path / "work", config=CurateConfig(cap_doc_share=True), workers=1)


@pytest.mark.parametrize("share", [0.05, 0.2, 0.4])
def test_share_cap_leaves_no_document_over_its_share(share):
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(10, 1000, 60), [50_000, 20_000]])
    cap = share_cap(sizes, share)
    capped = np.minimum(sizes, cap)
    assert capped.max() / capped.sum() <= share + 1e-9
    assert (sizes > cap).sum() >= 1 and capped.max() == cap  # no more cut than needed: the cap is the share
    assert cap >= share * capped.sum() - 1
    assert share_cap(np.array([10, 10, 10, 10, 10]), 0.2) == 0  # none over: nothing to cut


# ------------------------------------------------------------------ too little to train on


def test_one_document_is_split_by_position_and_the_summary_says_so(tmp_path):
    (tmp_path / "only.txt").write_text(log_lines(100))
    corpus = curate([tmp_path / "only.txt"], tmp_path / "work", workers=1)
    m = corpus.metrics
    assert m["val_split"] == "position" and m["splits"] == {"train": 1, "val": 1}
    assert m["documents_kept"] == 1 == m["documents_in"]
    (train,) = iter_documents(corpus, "train", ("id", "text"))
    (val,) = iter_documents(corpus, "val", ("id", "text"))
    whole = (tmp_path / "only.txt").read_text()
    assert len((train["text"] + val["text"]).splitlines()) == 100 and val["id"] == train["id"] + ":val"
    assert val["text"].startswith("Dec  1 10:") and 0 < len(val["text"]) < 0.05 * len(whole)
    terminal = Console(record=True, width=120)
    terminal.print(summary_table(m, "corpus"))
    assert "position split" in terminal.export_text()
    assert "position split" in (corpus.path / "report.md").read_text()


def test_an_empty_val_split_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "only.txt").write_text(log_lines(20))
    work = tmp_path / "work"
    with pytest.raises(UserError) as e:
        curate([tmp_path / "only.txt"], work, config=CurateConfig(val_split="document"), workers=1)
    assert str(e.value) == (
        "the val split is empty (1 document kept, --val-split document, --val-fraction 0.02); training needs "
        "one: add documents, or --val-split position to hold out the end of each document's text"
    )
    with pytest.raises(UserError, match="training needs one: give --val-fraction above 0"):
        curate([tmp_path / "only.txt"], work, config=CurateConfig(val_fraction=0), workers=1)
    assert not (work / "corpus").exists() or not any((work / "corpus").iterdir())


def test_a_position_split_holds_out_the_end_of_every_document(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"Document {i} begins here.\n" + log_lines(30 + i))
    corpus = curate(
        [tmp_path],
        tmp_path / "work",
        config=CurateConfig(val_split="position", val_fraction=0.1, near_dedup=False),
        workers=1,
    )
    train = {d["id"]: d["text"] for d in iter_documents(corpus, "train", ("id", "text"))}
    val = {d["id"]: d["text"] for d in iter_documents(corpus, "val", ("id", "text"))}
    assert len(train) == 3 and set(val) == {f"{k}:val" for k in train}
    for k, head in train.items():
        assert (
            head.startswith("Document") and 0.05 < len(val[f"{k}:val"]) / len(head + val[f"{k}:val"]) < 0.15
        )
    assert corpus.metrics["documents_kept"] == 3 and corpus.metrics["splits"] == {"train": 3, "val": 3}


def kept_rows(corpus) -> list[dict]:
    return [
        d for split in ("train", "val") for d in iter_documents(corpus, split, ("source", "text", "meta"))
    ]


# ------------------------------------------------------------------ tokenize


def test_tokenize_refuses_a_train_split_shorter_than_one_window(tmp_path, pipeline):
    from autarky.tokens import tokenize

    (tmp_path / "short.txt").write_text(LICENCE)
    corpus = curate([tmp_path / "short.txt"], tmp_path / "work", workers=1)
    with pytest.raises(UserError) as e:
        tokenize(corpus, pipeline.tokenizer, tmp_path / "work")
    message = str(e.value)
    have = int(message.split(" tokens")[0].rsplit(" ", 1)[1])
    assert message == (
        f"the train split holds {have} tokens, fewer than one training window needs (--seq-len 256 + 1): "
        f"curate more text, or tokenize and train with --seq-len {2 ** int(np.log2(have - 2))}"
    )
    assert not (tmp_path / "work" / "tokens").exists() or not any((tmp_path / "work" / "tokens").iterdir())
    shorter = tokenize(corpus, pipeline.tokenizer, tmp_path / "work", seq_len=have - 2)
    assert shorter.metrics["train"]["tokens"] == have
    with pytest.raises(UserError, match="fewer than one training window"):  # reused, still checked
        tokenize(corpus, pipeline.tokenizer, tmp_path / "work", seq_len=have - 1)


def test_the_tokenize_bar_moves_in_bytes_at_a_rate_the_clock_bears_out(tmp_path, pipeline, monkeypatch):
    """Reproduces issue 12.9: the bar counted whole batches of documents (a small corpus moved it once)
    and rich's rate, estimated from updates that arrive together, read absurd."""
    import time

    from autarky import tokens as stage

    calls: list[tuple[str, int, str]] = []
    advance = stage._SplitProgress.advance

    def watched(self, nbytes: int, documents: int) -> None:
        advance(self, nbytes, documents)
        task = self.bar.tasks[self.task]
        calls.append((task.description, nbytes, task.fields["rate"]))

    monkeypatch.setattr(stage._SplitProgress, "advance", watched)
    started = time.perf_counter()
    made = stage.tokenize(pipeline.corpus, pipeline.tokenizer, tmp_path / "work", workers=1)
    wall = time.perf_counter() - started
    m = made.metrics
    assert sum(n for _, n, _ in calls) == m["train"]["bytes"] + m["val"]["bytes"]
    train = [rate for split, _, rate in calls if split == "tokenizing train"]
    assert len(train) >= 4  # several steps for a corpus of a few hundred kB, not one
    last_train = train[-1]
    value, unit = last_train.split(" · ")[0].split()
    rate = float(value.replace(",", "")) * {"kB/s": 1e3, "MB/s": 1e6}[unit]
    assert rate >= m["train"]["bytes"] / wall * 0.9  # the text done over no more than the time it took
    assert rate < 1e9 and last_train.endswith("documents")
