"""What a newcomer's own folder holds (issue 12.4): README, AUTHORS and licence texts without a
suffix, rotated logs, programs; one document that would fill the corpus; too little text to train on.
Each is read, passed over with its reason, warned about or refused with the way out."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from autarky.console import UserError
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
    assert set(docs) == {"COPYING", "AUTHORS", "LICENSE.MIT", "syslog.1", "tool", "bundle.tar!pkg/README"}
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
    from autarky.data.langid import _get_detector

    model = _get_detector()._get_model(low_memory=True)
    labels, _ = model.predict("any text at all", k=-1, threshold=-1.0)
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
