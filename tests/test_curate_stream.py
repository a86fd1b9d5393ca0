"""Sources over the read-whole cap are read in pieces (issue 13.6); curation's tasks split the run finely.

The cap and the piece size are lowered for the tests (module constants), so no test writes a gigabyte.
"""

from __future__ import annotations

import gzip
import json
import lzma
import random
import tracemalloc
from pathlib import Path

import pytest

import autarky.data.curate as curate_module
from autarky.data import formats
from autarky.data.config import CurateConfig
from autarky.data.corpus import iter_documents
from autarky.data.curate import curate
from autarky.data.formats import SourceError
from autarky.data.read import Source, read_source

CAP, PIECE = 256 << 10, 64 << 10


@pytest.fixture
def small_cap(monkeypatch):
    monkeypatch.setattr(formats, "MAX_FILE_BYTES", CAP)
    monkeypatch.setattr(formats, "PIECE_BYTES", PIECE)


def prose(n_bytes: int, seed: int = 0) -> str:
    """Paragraphs of Russian and English lines, about `n_bytes` of UTF-8."""
    rng = random.Random(seed)
    words = "мороз солнце день чудесный frost and sun a wonderful day ещё ты дремлешь друг прелестный".split()
    paragraphs, size = [], 0
    while size < n_bytes:
        lines = [
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(rng.randint(1, 6))
        ]
        paragraphs.append("\n".join(lines))
        size += len(paragraphs[-1].encode()) + 2
    return "\n\n".join(paragraphs) + "\n"


def source_of(path: Path) -> Source:
    return Source(path.name, "0" * 64, path.stat().st_size, location=str(path))


class ReadSizes:
    """`open` for read.py that records every size the reader asks the file for."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        read, sizes = f.read, self.sizes

        class Spy:
            def read(self, n=-1):
                sizes.append(n)
                return read(n)

            def fileno(self):
                return f.fileno()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Spy()


def test_a_text_over_the_cap_is_documents_of_a_piece_each_cut_at_paragraphs(tmp_path, small_cap, monkeypatch):
    text = prose(4 << 20)
    path = tmp_path / "big.txt"
    path.write_text(text)
    spy = ReadSizes()
    monkeypatch.setattr("autarky.data.read.open", spy, raising=False)
    options = CurateConfig().read_options
    tracemalloc.start()
    pieces = []
    for doc in read_source(source_of(path), options):  # keep only what the test checks, not the texts
        pieces.append((len(doc.text.encode()), doc.text[-2:], doc.meta["piece"], doc.meta["offset"], doc.id))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert spy.sizes and max(spy.sizes) == PIECE  # never the whole file, never more than a piece at a time
    assert peak < 12 * PIECE < len(text.encode()) // 4  # bounded by the piece, not by the 4 MB file
    assert len(pieces) >= len(text.encode()) // PIECE
    assert all(size <= PIECE for size, *_ in pieces)
    assert all(end == "\n\n" for _, end, *_ in pieces[:-1])  # every cut after a blank line
    assert [p[2] for p in pieces] == list(range(len(pieces)))
    offsets = [p[3] for p in pieces]
    assert offsets[0] == 0 and offsets == [sum(p[0] for p in pieces[:i]) for i in range(len(pieces))]
    assert sum(p[0] for p in pieces) == len(text.encode())  # nothing lost, nothing doubled
    assert len({p[4] for p in pieces}) == len(pieces)
    monkeypatch.undo()  # whole again: one document, the same text
    whole = list(read_source(source_of(path), options))
    assert len(whole) == 1 and whole[0].text == text


def test_pieces_join_to_the_text_when_no_line_ends_fall_in_a_piece(tmp_path, small_cap):
    """A line longer than a piece is cut at a character boundary, never inside a UTF-8 sequence."""
    text = "щ" * (3 * CAP // 2) + "\n"  # 2-byte characters, one line of 768 kB
    path = tmp_path / "one-line.txt"
    path.write_text(text)
    docs = list(read_source(source_of(path), CurateConfig().read_options))
    assert len(docs) > 1 and "".join(d.text for d in docs) == text


def jsonl_lines(n: int) -> list[str]:
    rng = random.Random(1)
    lines = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.02:
            lines.append("{not json")
        elif kind < 0.04:
            lines.append(json.dumps({"id": i, "body": "no text field"}))
        elif kind < 0.06:
            lines.append("")
        else:
            lines.append(
                json.dumps({"id": f"r{i}", "text": prose(rng.randint(100, 3000), seed=i)}, ensure_ascii=False)
            )
    return lines


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.gz"])
def test_json_lines_over_the_cap_are_the_same_documents_as_read_whole(tmp_path, name, monkeypatch):
    data = ("\n".join(jsonl_lines(600)) + "\n").encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    options = CurateConfig().read_options
    whole = [(d.id, d.text, d.meta) for d in read_source(source_of(path), options)]
    monkeypatch.setattr(formats, "MAX_FILE_BYTES", CAP)
    monkeypatch.setattr(formats, "PIECE_BYTES", PIECE)
    assert len(data) > 2 * CAP
    streamed = [(d.id, d.text, d.meta) for d in read_source(source_of(path), options)]
    assert streamed == whole and len(whole) > 500


def test_a_compressed_text_over_the_cap_is_read_in_pieces_within_its_budget(tmp_path, small_cap):
    """Reproduces an .xz (or .bz2) file never being read: LZMAFile was given `fileobj=`, which only
    GzipFile takes, and every such source went to the error list with a TypeError."""
    text = prose(1 << 20, seed=3)
    path = tmp_path / "big.txt.xz"
    path.write_bytes(lzma.compress(text.encode(), preset=0))
    assert path.stat().st_size < CAP  # small on disk, over the cap once decompressed
    docs = list(read_source(source_of(path), CurateConfig().read_options))
    assert len(docs) > 2 * CAP // PIECE and "".join(d.text for d in docs) == text
    assert {d.meta["format"] for d in docs} == {"text"}
    tight = CurateConfig(min_budget_bytes=CAP * 2, max_budget_bytes=CAP * 2).read_options
    with pytest.raises(SourceError, match="budget"):  # the bomb budget still holds, piece or not
        list(read_source(source_of(path), tight))


def test_formats_read_whole_are_refused_over_the_cap_with_the_reason(tmp_path, small_cap):
    (tmp_path / "big.pdf").write_bytes(b"%PDF-1.4\n" + b"0" * (CAP + 1))
    (tmp_path / "big.pdf.gz").write_bytes(gzip.compress(b"%PDF-1.4\n" + b"0" * (2 * CAP)))
    (tmp_path / "big.txt").write_text(prose(CAP + PIECE, seed=5))
    corpus = curate([tmp_path], tmp_path / "work", workers=1)
    errors = {e["path"].rsplit("/", 1)[-1]: e["reason"] for e in corpus.metrics["errors"]}
    assert set(errors) == {"big.pdf", "big.pdf.gz"}
    assert errors["big.pdf"].startswith("larger than 0 MB, the most read whole; only text and JSON lines")
    assert "not a .pdf file" in errors["big.pdf"] and "decompresses to more than" in errors["big.pdf.gz"]
    m = corpus.metrics
    assert (
        m["sources"]["big.txt" if "big.txt" in m["sources"] else str(tmp_path / "big.txt")]["documents"] > 4
    )
    assert m["documents_in"] == m["documents_kept"] + m["documents_dropped"]


def test_many_small_tasks_make_the_same_corpus_on_one_and_three_workers(tmp_path, monkeypatch):
    """The run is split into tasks by size (a 16th of it), the largest first, and this process takes
    tasks from the back while the pool takes them from the front: the parts still join in order."""
    monkeypatch.setattr(curate_module, "MIN_TASK_BYTES", 1 << 10)
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(2)
    for i in range(40):
        (src / f"{i:03d}.txt").write_text(prose(rng.choice([300, 2000, 9000]), seed=i))
    (src / "copy.txt").write_text((src / "007.txt").read_text())  # an exact duplicate across tasks
    sources = [p for p in sorted(src.iterdir())]
    tasks = curate_module.plan_tasks(
        [Source(p.name, str(i), p.stat().st_size) for i, p in enumerate(sources)], CurateConfig(), tmp_path
    )
    assert len(tasks) > 8
    made = [curate([src], tmp_path / f"w{w}", workers=w) for w in (1, 3)]
    assert len({(c.name, c.id) for c in made}) == 1
    assert made[0].metrics["dropped"]["exact_dedup"] == {"exact_duplicate": 1}
    ids = [[d["id"] for d in iter_documents(c, "train", ("id",))] for c in made]
    assert ids[0] == ids[1]


def test_the_write_pass_reads_ahead_in_order_and_its_errors_reach_the_writer():
    def items():
        yield from range(50)
        raise SourceError("a part file went missing")

    got = []
    with pytest.raises(SourceError, match="went missing"):
        for item in curate_module.prefetched(items(), depth=2):
            got.append(item)
    assert got == list(range(50))
    early = curate_module.prefetched(iter(range(10**6)), depth=2)
    assert [next(early) for _ in range(3)] == [0, 1, 2]
    early.close()  # the reader stops with the writer, and does not hold the process open
