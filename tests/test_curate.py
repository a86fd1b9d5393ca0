"""Curation end to end on tiny files the tests write: decoding, accounting, dedup, split, reuse, verify."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from autarky import artifact
from autarky.console import UserError
from autarky.data import curate as curate_module
from autarky.data import executor
from autarky.data.corpus import iter_documents, iter_dropped, iter_texts
from autarky.data.curate import CurateConfig, curate
from autarky.data.decode import decode, detect

RUSSIAN = [
    "Мороз и солнце; день чудесный! Еще ты дремлешь, друг прелестный.",
    "Я помню чудное мгновенье: передо мной явилась ты, как мимолетное виденье.",
    "Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему.",
    "ВНИМАНИЕ! МАГАЗИН ЗАКРЫТ НА ОБЕД ДО ТРЕХ ЧАСОВ",
    "Съешь же ещё этих мягких французских булок да выпей чаю.",
]


@pytest.mark.parametrize("encoding", ["cp1251", "koi8_r", "cp866"])
def test_legacy_russian_encodings_are_told_apart(encoding):
    for sentence in RUSSIAN:
        data = sentence.encode(encoding)
        assert detect(data) == encoding, (sentence, encoding)
        assert decode(data)[0] == sentence


def test_utf8_and_western_text():
    assert detect("Привет, мир".encode()) == "utf-8"
    assert detect("Привет".encode()[:-1]) == "utf-8"  # cut inside a character
    assert detect("Grüße aus München, das Café".encode("cp1252")) == "cp1252"
    assert detect(b"\xef\xbb\xbfhello") == "utf-8-sig"


def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "koi.txt").write_bytes((RUSSIAN[0] + "\n").encode("koi8_r"))
    (src / "win.txt").write_bytes((RUSSIAN[1] + "\r\n\r\n\r\n\r\nВторой абзац.  \r\n").encode("cp1251"))
    (src / "dos.md").write_bytes(RUSSIAN[2].encode("cp866"))
    (src / "nested" / "copy.txt").write_text(RUSSIAN[1] + "\n\nВторой абзац.\n")  # same text once normalised
    (src / "nested" / "empty.txt").write_text("  \n")
    (src / "nested" / "deeper" / "docs.jsonl").write_text(
        "\n".join(
            [json.dumps({"text": f"Document number {i} says something different."}) for i in range(20)]
            + [
                '{"body": "no text field"}',
                "not json at all",
                json.dumps({"text": "Document number 3 says something different."}),
            ]
        )
    )
    (src / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return src


def test_curate_accounts_for_every_document(tmp_path):
    src = make_tree(tmp_path)
    corpus = curate([src], tmp_path / "work", workers=1)
    m = corpus.metrics
    assert m["documents_in"] == 5 + 23
    assert m["documents_in"] == m["documents_kept"] + m["documents_dropped"]
    assert m["dropped"]["exact_dedup"] == {"exact_duplicate": 2}
    assert m["dropped"]["read"] == {"empty": 1, "no_text_field": 1, "bad_json": 1}
    assert m["files_skipped"] == 1  # image.png: unknown type
    for path, counts in m["sources"].items():
        assert counts["documents"] == counts["kept"] + sum(counts["dropped"].values()), path
    # manifest sources: one entry per file read
    assert sorted(Path(s["path"]).name for s in corpus.manifest["sources"]) == [
        "copy.txt",
        "docs.jsonl",
        "dos.md",
        "empty.txt",
        "koi.txt",
        "win.txt",
    ]
    assert sum(s["documents"] for s in corpus.manifest["sources"]) == m["documents_in"]
    # the files on disk say the same as the manifest
    kept = list(iter_documents(corpus, "train", ("id", "text", "split"))) + list(
        iter_documents(corpus, "val", ("id", "text", "split"))
    )
    dropped = list(iter_dropped(corpus))
    assert len(kept) == m["documents_kept"] and len(dropped) == m["documents_dropped"]
    assert len({d["id"] for d in kept + dropped}) == m["documents_in"]
    texts = {d["text"] for d in kept}
    assert RUSSIAN[0] in texts and RUSSIAN[2] in texts
    assert RUSSIAN[1] + "\n\nВторой абзац." in texts  # decoded, CRLF and blank lines normalised
    for name in ("stats.json", "report.md", "languages.svg", "drops.svg", "lengths.svg"):
        assert (corpus.path / name).is_file()
    report = (corpus.path / "report.md").read_text()
    assert "![drops](drops.svg)" in report and "| exact_dedup | exact_duplicate | 2 |" in report
    assert json.loads((corpus.path / "stats.json").read_text())["documents_in"] == m["documents_in"]
    columns = pq.read_schema(next((corpus.path / "shards").glob("train-*.parquet"))).names
    assert {"id", "text", "lang", "source", "source_sha256", "split", "tags"} <= set(columns)
    dropped_columns = pq.read_schema(next((corpus.path / "dropped").glob("*.parquet"))).names
    assert {"step", "reason", "id", "text"} <= set(dropped_columns)


def test_exact_dedup_keeps_the_first_and_can_be_turned_off(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (src / name).write_text("The same text in every file.\n")
    (src / "d.txt").write_text("A different text.")
    corpus = curate([src], tmp_path / "work", workers=1)
    kept = list(iter_documents(corpus, "train", ("source", "dup_cluster_size"))) + list(
        iter_documents(corpus, "val", ("source", "dup_cluster_size"))
    )
    sizes = {Path(d["source"]).name: d["dup_cluster_size"] for d in kept}
    assert sizes == {"a.txt": 3, "d.txt": 1}
    off = curate(
        [src], tmp_path / "work", config=CurateConfig(exact_dedup=False, near_dedup=False), workers=1
    )
    assert off.metrics["documents_kept"] == 4 and off.name != corpus.name


def test_ids_and_split_are_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(curate_module, "TASK_FILES", 8)  # several batches, so two workers share them
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"{i:03d}.txt").write_text(f"Document {i}: " + "word " * (i % 7 + 1))
    a = curate([src], tmp_path / "w1", workers=1)
    b = curate([src], tmp_path / "w2", workers=2)
    assert a.name == b.name and a.id == b.id  # same bytes on disk whatever the worker count
    rows = sorted(
        (d["id"], d["split"]) for split in ("train", "val") for d in iter_documents(a, split, ("id", "split"))
    )
    assert rows == sorted(
        (d["id"], d["split"]) for split in ("train", "val") for d in iter_documents(b, split, ("id", "split"))
    )
    assert 1 <= a.metrics["splits"]["val"] < 10


def test_two_documents_give_one_val_document(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first")
    (src / "b.txt").write_text("second")
    corpus = curate([src], tmp_path / "work", workers=1)
    assert corpus.metrics["splits"] == {"train": 1, "val": 1}
    assert len(list(iter_texts(corpus, "val"))) == 1


def test_rerun_reuses_the_artifact(tmp_path, monkeypatch):
    src = make_tree(tmp_path)
    first = curate([src], tmp_path / "work", workers=1)
    monkeypatch.setattr(curate_module, "process_task", lambda task: pytest.fail("work was redone"))
    again = curate([src], tmp_path / "work", workers=1)
    assert again.id == first.id and again.manifest["created"] == first.manifest["created"]
    (src / "koi.txt").write_text("changed")  # a changed source is a new recipe, so a new name
    monkeypatch.undo()
    changed = curate([src], tmp_path / "work", workers=1)
    assert changed.name != first.name


def test_corrupted_shard_is_named_by_verify(tmp_path):
    corpus = curate([make_tree(tmp_path)], tmp_path / "work", workers=1)
    _, problems = artifact.verify(corpus.path)
    assert problems == []
    shard = next((corpus.path / "shards").glob("train-*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _, problems = artifact.verify(corpus.path)
    assert [p.path for p in problems] == [f"shards/{shard.name}"]


def test_missing_and_empty_inputs_are_user_errors(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(UserError, match="does not exist"):
        curate([tmp_path / "nope"], work)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="read 0 documents: there are no files in"):
        curate([tmp_path / "empty"], work)
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("   \n")
    with pytest.raises(UserError, match=r"read 1 document from 1 file and kept none: dropped 1 read/empty"):
        curate([blank], work, workers=1)
    assert not (work / "corpus").exists() or not any(p for p in (work / "corpus").iterdir())


def test_cli_prints_user_error_and_exits_2(tmp_path, monkeypatch, capsys):
    from autarky import cli

    monkeypatch.setattr(sys, "argv", ["autarky", "curate", str(tmp_path / "nope"), "-w", str(tmp_path / "w")])
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


def test_cli_curate_with_tags_and_languages(tmp_path, monkeypatch, capsys):
    from autarky import cli

    src = tmp_path / "src"
    src.mkdir()
    (src / "ru.txt").write_text(RUSSIAN[2] + " " + RUSSIAN[1])
    (src / "en.txt").write_text(
        "The history of the town is long and it is full of stories told by its people."
    )
    argv = [
        "autarky",
        "curate",
        str(src),
        "-w",
        str(tmp_path / "w"),
        "--workers",
        "1",
        "--lang",
        "ru",
        "--tag",
        "license=CC-BY-4.0",
        "--tag",
        f"{src}::ref=urn::isbn::5-17=1",  # a value with `::` and `=` in it, for this source only
        "--json",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    try:
        cli.main()
    except SystemExit as e:  # click's standalone mode exits even on success
        assert e.code in (0, None)
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["documents_kept"] == 1 and metrics["dropped"] == {"language": {"language_not_allowed": 1}}
    (corpus,) = (tmp_path / "w" / "corpus").iterdir()
    # one document kept: its start is train, its end val (a position split)
    rows = {split: list(iter_documents(corpus, split, ("lang", "tags"))) for split in ("train", "val")}
    assert [len(r) for r in rows.values()] == [1, 1]
    for (row,) in rows.values():
        assert row["lang"] == "ru"
        assert json.loads(row["tags"]) == {"license": "CC-BY-4.0", "ref": "urn::isbn::5-17=1"}


def test_a_step_that_raises_drops_that_document_and_the_run_goes_on(tmp_path, monkeypatch):
    from autarky.data.normalize import Normalize

    real = Normalize.transform

    def fragile(self, doc):
        if "BOOM" in doc.text:
            raise ValueError("cannot handle this one")
        return real(self, doc)

    monkeypatch.setattr(Normalize, "transform", fragile)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("A first ordinary document.")
    (src / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ("fine one", "this one goes BOOM", "fine two"))
    )
    corpus = curate([src], tmp_path / "work", workers=1)
    m = corpus.metrics
    assert m["documents_in"] == 4 == m["documents_kept"] + m["documents_dropped"]
    assert m["dropped"]["normalize"] == {"error: ValueError": 1} and m["files_failed"] == 0
    (row,) = iter_dropped(corpus, ("text", "step", "reason", "meta"))
    assert (row["text"], row["step"], row["reason"]) == (
        "this one goes BOOM",
        "normalize",
        "error: ValueError",
    )
    assert "cannot handle this one" in json.loads(row["meta"])["error"]
    assert m["steps"]["normalize"]["stats"]["dropped_error: ValueError"] == 1
    (b,) = [counts for path, counts in m["sources"].items() if path.endswith("b.jsonl")]
    assert b == {"documents": 3, "kept": 2, "bytes": 16, "dropped": {"normalize/error: ValueError": 1}}


def test_text_that_is_not_valid_unicode_is_kept_repaired(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text('{"text": "good document"}\n{"text": "lone \\ud800 surrogate"}\n')
    corpus = curate([src], tmp_path / "work", workers=1)
    assert corpus.metrics["documents_kept"] == 2
    texts = {d["text"] for split in ("train", "val") for d in iter_documents(corpus, split)}
    assert texts == {"good document", "lone \ufffd surrogate"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "--workers"),
        ({"config": CurateConfig(near_dup_threshold=0)}, "--near-dup-threshold"),
        ({"config": CurateConfig(near_dup_threshold=1.5)}, "--near-dup-threshold"),
        ({"config": CurateConfig(near_dup_threshold=float("nan"))}, "--near-dup-threshold"),
        ({"config": CurateConfig(val_fraction=1)}, "--val-fraction"),
        ({"config": CurateConfig(minhash_rows=0)}, "minhash_rows"),
        ({"config": CurateConfig(shard_bytes=0)}, "shard_bytes"),
    ],
)
def test_numbers_out_of_range_are_user_errors(tmp_path, kwargs, message):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(UserError, match=message):
        curate([tmp_path / "a.txt"], tmp_path / "work", **kwargs)
    assert not (tmp_path / "work" / "corpus").exists() or not any((tmp_path / "work" / "corpus").iterdir())


def test_cli_negative_workers_is_a_user_error(tmp_path, monkeypatch, capsys):
    from autarky import cli

    (tmp_path / "a.txt").write_text("text")
    argv = ["autarky", "curate", str(tmp_path / "a.txt"), "-w", str(tmp_path / "w"), "--workers", "-1"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli.offline, "install", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "--workers must be 1 or more" in " ".join(capsys.readouterr().err.split())


def test_workers_default_to_the_cores_this_process_may_use(monkeypatch):
    import os

    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
        assert executor.available_cores() == 3
    assert executor.available_cores() >= 1


def make_docs(root: Path) -> None:
    (root / "docs" / "a").mkdir(parents=True)
    (root / "docs" / "a" / "b.txt").write_text("The first text of the set.")
    (root / "docs" / "c.md").write_text("The second text of the set.")
    (root / "note.txt").write_text("A file named on its own.")
    import zipfile

    with zipfile.ZipFile(root / "docs" / "pack.zip", "w") as z:  # a fixed date: the same bytes every time
        z.writestr(zipfile.ZipInfo("inner/one.txt", (2024, 1, 1, 0, 0, 0)), "A text inside an archive.")


def test_sources_are_named_as_given_so_the_place_does_not_change_the_corpus(tmp_path, monkeypatch):
    corpora = []
    for place in ("here", "elsewhere/deeper"):
        root = tmp_path / place
        make_docs(root)
        monkeypatch.chdir(root)
        corpora.append(curate([Path("docs/"), Path("./note.txt")], tmp_path / place / "work", workers=1))
    first, second = corpora
    assert first.id == second.id
    assert [s["path"] for s in first.manifest["sources"]] == [
        "docs/a/b.txt",
        "docs/c.md",
        "docs/pack.zip",
        "note.txt",
    ]
    assert set(first.metrics["sources"]) == {s["path"] for s in first.manifest["sources"]}
    rows = sorted(
        d["source"] for split in ("train", "val") for d in iter_documents(first, split, ("source",))
    )
    assert rows == ["docs/a/b.txt", "docs/c.md", "docs/pack.zip!inner/one.txt", "note.txt"]
    stats = (first.path / "stats.json").read_text()
    assert str(tmp_path) not in stats and str(tmp_path) not in json.dumps(first.manifest["sources"])
    # the same files under another name in another place: the recipe is by content, so it is reused
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = curate([Path("deeper/docs"), Path("deeper/note.txt")], tmp_path / "here" / "work", workers=1)
    assert again.id == first.id


def test_sources_from_two_arguments_keep_distinct_names(tmp_path, monkeypatch):
    from autarky.data.read import find_sources

    for n, part in enumerate(("x", "y")):
        (tmp_path / part / "docs").mkdir(parents=True)
        (tmp_path / part / "docs" / "a.txt").write_text(f"text {n}")
    monkeypatch.chdir(tmp_path)
    sources, _, _ = find_sources([Path("x/docs"), Path("y/docs"), Path("x/docs/a.txt")])
    assert [s.path for s in sources] == ["x/docs/a.txt", "y/docs/a.txt"]  # one file reached twice: read once
    assert len({s.location for s in sources}) == 2 and all(Path(s.location).is_absolute() for s in sources)


def test_corpus_counts_from_the_footers(tmp_path):
    from autarky.data.corpus import count_documents, text_bytes

    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"{i}.txt").write_text(f"Документ номер {i}: " + "слово " * (i + 1))
    corpus = curate([src], tmp_path / "work", workers=1)
    for split in ("train", "val"):
        texts = list(iter_texts(corpus, split))
        assert count_documents(corpus, split) == len(texts) == corpus.metrics["splits"][split]
        utf8 = sum(len(t.encode()) for t in texts)
        assert utf8 <= text_bytes(corpus, split) <= utf8 + 64 * len(texts) + 1024
    assert count_documents(tmp_path, "train") == 0 and text_bytes(tmp_path, "train") == 0


def test_shards_are_cut_by_utf8_bytes_whether_rows_come_alone_or_as_tables(tmp_path):
    import pyarrow as pa

    from autarky.data.corpus import SCHEMA, ShardWriter, shard_paths

    rows = [{"id": str(i), "text": "я" * (i % 7 + 1)} for i in range(200)]  # 2 bytes a character
    one = ShardWriter(tmp_path / "one" / "shards", "train", SCHEMA, shard_bytes=100, batch_rows=16)
    for row in rows:
        one.write(row)
    one.close()
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    many = ShardWriter(tmp_path / "many" / "shards", "train", SCHEMA, shard_bytes=100, batch_rows=16)
    for start in (0, 3, 50, 51, 120):  # uneven pieces, across shard boundaries
        many.write_table(table.slice(start, {0: 3, 3: 47, 50: 1, 51: 69, 120: 80}[start]))
    many.close()
    assert one.count == many.count == 200
    a, b = shard_paths(tmp_path / "one", "train"), shard_paths(tmp_path / "many", "train")
    assert len(a) == len(b) > 1
    for x, y in zip(a, b, strict=True):
        tx, ty = pq.read_table(x), pq.read_table(y)
        assert tx.equals(ty)
        sizes = [len(t.encode()) for t in tx.column("text").to_pylist()]
        assert sum(sizes[:-1]) < 100 <= sum(sizes) or x == a[-1]  # each file ends at the row that fills it
        assert all(
            pq.ParquetFile(x).metadata.row_group(g).num_rows <= 16
            for g in range(pq.ParquetFile(x).metadata.num_row_groups)
        )


def test_tags_split_at_the_first_equals_sign():
    from autarky.data.curate import parse_tags

    tags, scoped = parse_tags(["ref=urn::isbn::123", "docs/::origin=a=b::c", "license=CC-BY-4.0"])
    assert tags == {"ref": "urn::isbn::123", "license": "CC-BY-4.0"}
    assert scoped == {"docs": {"origin": "a=b::c"}}
    for bad in ("novalue", "=x", "docs::=x"):
        with pytest.raises(UserError, match="--tag"):
            parse_tags([bad])


def test_every_setting_declares_its_default_and_help_once():
    """The config dataclasses are the one source of defaults and help text the CLI is built from."""
    import dataclasses

    from autarky.data.executor import Executor

    for cls in (CurateConfig, Executor):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help text"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
