"""Hostile and oversized inputs: bombs in every container, documents too long, links out of the tree,
archive members with unsafe names. Each ends in the error or passed-over list, or is dropped with a
reason, and the counts still add up. Budgets are made small through the config, not with big files."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autarky.data.corpus import iter_documents, iter_dropped
from autarky.data.curate import CurateConfig, curate
from autarky.data.dedup import MinHasher

ENGLISH = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."
SMALL_BUDGET = {"max_expansion": 10, "min_budget_bytes": 1 << 20, "min_entries": 100, "near_dedup": False}


def kept_texts(corpus) -> list[str]:
    return [d["text"] for split in ("train", "val") for d in iter_documents(corpus, split)]


def assert_accounted(m: dict) -> None:
    assert m["documents_in"] == m["documents_kept"] + m["documents_dropped"]
    for path, counts in m["sources"].items():
        assert counts["documents"] == counts["kept"] + sum(counts["dropped"].values()), path


# ------------------------------------------------------------------ one budget for every container


def epub_bomb(path: Path) -> None:
    """A spine that names one small, very compressible chapter 25 times (1.8 MB of XHTML from a few KB)."""
    chapter = "<html><body>" + "<p>слово за словом</p>" * 2000 + "</body></html>"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "META-INF/container.xml",
            '<container><rootfiles><rootfile full-path="c.opf"/></rootfiles></container>',
        )
        spine = '<itemref idref="a"/>' * 25
        z.writestr(
            "c.opf",
            f'<package><manifest><item id="a" href="a.xhtml"/></manifest><spine>{spine}</spine></package>',
        )
        z.writestr("a.xhtml", chapter)


def docx_bomb(path: Path) -> None:
    """A document.xml of 2 MB that compresses to a few KB."""
    import docx

    document = docx.Document()
    for _ in range(50):
        document.add_paragraph("Съешь же ещё этих мягких французских булок. " * 500)
    document.save(path)


def parquet_bomb(path: Path) -> None:
    """20,000 rows of one repeated string: dictionary encoding makes it a few KB."""
    pq.write_table(pa.table({"text": [ENGLISH] * 20_000}), path)


def tar_bomb(path: Path) -> None:
    """A thousand tiny members: a few KB of gzip, a thousand documents."""
    with tarfile.open(path, "w:gz") as t:
        for i in range(1000):
            info = tarfile.TarInfo(f"m/{i:04d}.txt")
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))


@pytest.mark.parametrize(
    "make, name",
    [(epub_bomb, "b.epub"), (docx_bomb, "b.docx"), (parquet_bomb, "b.parquet"), (tar_bomb, "b.tar.gz")],
)
def test_every_container_draws_on_the_one_budget(tmp_path, make, name):
    """Reproduces issue 8.12: EPUB chapters, DOCX parts, Parquet rows and tar member counts escaped the
    decompression budget (a 1.37 MB EPUB became a 314M-character document, a 172 KB Parquet file 1M
    documents, a 0.94 MB tar.gz 200,000). Each must stop at the budget and be listed as an error."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text(ENGLISH)
    make(src / name)
    assert (src / name).stat().st_size < 64 << 10  # small on disk, large when opened
    corpus = curate([src], tmp_path / "work", config=CurateConfig(**SMALL_BUDGET), workers=1)
    m = corpus.metrics
    (error,) = m["errors"]
    assert error["path"].endswith(name) and "bomb" in error["reason"]
    assert m["sources"][error["path"]]["documents"] == 0  # refused before any document came out
    assert m["documents_kept"] == 1 and m["files_failed"] == 1
    assert_accounted(m)
    assert name in (corpus.path / "report.md").read_text()


def test_the_same_files_pass_with_the_default_budget(tmp_path):
    """The limits stop bombs, not books: the EPUB and DOCX above are read whole under the default budget."""
    src = tmp_path / "src"
    src.mkdir()
    epub_bomb(src / "book.epub")
    docx_bomb(src / "letter.docx")
    corpus = curate([src], tmp_path / "work", config=CurateConfig(near_dedup=False), workers=1)
    assert corpus.metrics["files_failed"] == 0 and corpus.metrics["documents_in"] == 2


# ------------------------------------------------------------------ documents too long


def test_a_document_over_the_cap_is_dropped_with_a_reason(tmp_path):
    """Reproduces issue 8.13: no document size cap (a 50 MB one-line file reached MinHash whole).
    Past `max_document_chars` a document is dropped as read/too_long, cut to the cap in the dropped rows."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "one-line.txt").write_text("word " * 2000)  # 10,000 characters on one line
    (src / "fine.txt").write_text(ENGLISH)
    corpus = curate([src], tmp_path / "work", config=CurateConfig(max_document_chars=5000), workers=1)
    m = corpus.metrics
    assert m["dropped"]["read"] == {"too_long": 1} and m["documents_kept"] == 1
    assert_accounted(m)
    (row,) = iter_dropped(corpus, ("text", "step", "reason", "meta"))
    assert (row["step"], row["reason"], len(row["text"])) == ("read", "too_long", 5000)
    assert json.loads(row["meta"])["chars"] == 10_000  # its length as read


def test_minhash_memory_does_not_grow_with_the_document():
    """Reproduces issue 8.13: MinHash held arrays the size of the whole text (2.9 GB for 50 MB).
    Shingles now come in pieces; the signature is the same as in one pass, the peak stays small."""
    hasher = MinHasher()
    text = "слово другое третье " * 250_000  # 5M characters
    tracemalloc.start()
    signature = hasher.signature(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100e6, peak / 1e6  # one pass over the whole text peaked above 300 MB
    one_pass = np.full(hasher.size, np.uint64(2**64 - 1), dtype=np.uint64)
    a, b = hasher._params
    small = "один два три четыре пять шесть семь восемь девять десять " * 300
    for shingles in hasher.shingles(small, piece_chars=len(small) + 1):
        one_pass = np.minimum(one_pass, (shingles[:, None] * a + b).min(axis=0))
    in_pieces = np.full(hasher.size, np.uint64(2**64 - 1), dtype=np.uint64)
    for shingles in hasher.shingles(small, piece_chars=100):
        in_pieces = np.minimum(in_pieces, (shingles[:, None] * a + b).min(axis=0))
    assert (in_pieces == one_pass).all() and (hasher.signature(small) == one_pass).all()
    assert signature.shape == (hasher.size,)


# ------------------------------------------------------------------ links


def linked_tree(tmp_path: Path) -> Path:
    outside = tmp_path / "home" / ".ssh"
    outside.mkdir(parents=True)
    (outside / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret key material")
    (outside / "notes.txt").write_text("notes kept outside the source tree")
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text(ENGLISH)
    os.symlink(outside / "id_rsa", src / "docs" / "key.txt")  # a file link out of the tree
    os.symlink(outside, src / "ssh")  # a directory link out of the tree
    os.symlink(src / "docs" / "a.txt", src / "same.txt")  # a link that stays inside: read
    return src


def test_links_out_of_the_tree_are_not_followed_and_are_recorded(tmp_path):
    """Reproduces issue 8.14: a link inside a source directory was followed out of the tree (a linked
    id_rsa reached the corpus). Such links are passed over and listed unless the run follows links."""
    src = linked_tree(tmp_path)
    corpus = curate([src], tmp_path / "work", config=CurateConfig(near_dedup=False), workers=1)
    assert not any("PRIVATE KEY" in t or "outside" in t for t in kept_texts(corpus))
    skipped = {Path(s["path"]).name: s["reason"] for s in corpus.metrics["skipped"]}
    assert "out of the source tree" in skipped["key.txt"] and "link to a directory" in skipped["ssh"]
    assert [Path(s["path"]).name for s in corpus.manifest["sources"]] == ["a.txt", "same.txt"]
    stats = json.loads((corpus.path / "stats.json").read_text())
    assert {Path(s["path"]).name for s in stats["skipped"]} == {"key.txt", "ssh"}
    assert "key.txt" in (corpus.path / "report.md").read_text()

    followed = curate(
        [src], tmp_path / "work", config=CurateConfig(near_dedup=False, follow_links=True), workers=1
    )
    names = sorted(Path(s["path"]).name for s in followed.manifest["sources"])
    assert names == ["a.txt", "key.txt", "notes.txt", "same.txt"]


def test_a_glob_stays_under_its_literal_root(tmp_path):
    """Issue 8.14 through a glob: `src/**/*.txt` must not reach a file through a linked directory."""
    src = linked_tree(tmp_path)
    corpus = curate(
        [src / "**" / "*.txt"], tmp_path / "work", config=CurateConfig(near_dedup=False), workers=1
    )
    assert [Path(s["path"]).name for s in corpus.manifest["sources"]] == ["a.txt", "same.txt"]
    assert {Path(s["path"]).name for s in corpus.metrics["skipped"]} == {"key.txt", "notes.txt"}


# ------------------------------------------------------------------ archive member names


def test_archive_members_with_unsafe_or_hidden_names_are_recorded(tmp_path):
    """Reproduces issue 8.15: members with `..`, absolute or hidden paths were dropped without a record.
    Every member not read is listed with its reason; `./x` is only a way of writing `x`, and is read."""
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "a.tar", "w") as t:
        for name in (
            "./ok.txt",
            "../escape.txt",
            "/etc/abs.txt",
            "./.hidden.txt",
            "__MACOSX/._ok.txt",
            "pic.png",
        ):
            data = f"{ENGLISH} {name}".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    with zipfile.ZipFile(src / "b.zip", "w") as z:
        z.writestr("dir/../../up.txt", ENGLISH)
        z.writestr("fine.md", ENGLISH + " zip")
    corpus = curate([src], tmp_path / "work", config=CurateConfig(near_dedup=False), workers=1)
    m = corpus.metrics
    reasons = {s["path"].split("!", 1)[1]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {
        "../escape.txt",
        "/etc/abs.txt",
        "./.hidden.txt",
        "__MACOSX/._ok.txt",
        "pic.png",
        "link.txt",
        "dir/../../up.txt",
    }
    assert "'..'" in reasons["../escape.txt"] and "absolute" in reasons["/etc/abs.txt"]
    assert "hidden" in reasons["./.hidden.txt"] and "unknown file type" == reasons["pic.png"]
    assert "link" in reasons["link.txt"]
    sources = sorted(
        d["source"].split("/")[-1]
        for split in ("train", "val")
        for d in iter_documents(corpus, split, ("source",))
    )
    assert sources == ["a.tar!ok.txt", "b.zip!fine.md"]
    assert m["files_skipped"] == len(m["skipped"]) == 7
    assert_accounted(m)
