"""Readers per format: bytes in, (key, text, meta) triples out, one per document.

`dispatch` picks a reader by file name; archives call it back for their members. Every reader
draws on the `Reading` of its source: one budget of decompressed bytes and of entries (archive
members, JSON lines, Parquet rows, WARC records) that every container and reader takes from, so a
bomb of any kind stops at the budget with a `SourceError`, which the pipeline records. Archive
members that are not read (hidden, `..` or absolute paths, unknown types, links) are recorded as
passed over, never dropped in silence.

A source is read whole up to MAX_FILE_BYTES. Past it, text and JSON lines (on disk or in a
.gz/.bz2/.xz/.zst stream) are read in pieces of PIECE_BYTES through the `STREAMS` readers: a text
becomes one document per piece, cut at a paragraph or line end; JSON lines stay a document each.
Only a piece is held at a time (a compressed stream holds up to the cap, to learn whether it is
over it); what a compressed stream decompresses to still comes out of the source's budget. Other
formats over the cap (PDF, DOCX, EPUB, archives, Parquet) are refused: their readers need it whole.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from autarky.data.decode import decode, looks_binary
from autarky.data.document import valid_unicode
from autarky.data.html import decode_html, extract

Triples = Iterator[tuple[str, str, dict]]

MAX_FILE_BYTES = 1 << 30  # the most of one source (or decompressed stream) read whole
PIECE_BYTES = 8 << 20  # what a source over it is read in: under the 10M-character document cap
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text", ".rst", ".log")


class SourceError(Exception):
    """A source file that cannot be read; the message is the reason recorded in the error list."""


@dataclass(frozen=True)
class ReadOptions:
    """How sources are read: the fields of tabular formats and the limits of one source's budget.

    The defaults and their meaning live in `CurateConfig` (its `read_options` makes one of these).
    """

    text_field: str
    id_field: str
    max_expansion: int  # decompressed bytes per byte on disk, within the two bounds below
    min_budget_bytes: int
    max_budget_bytes: int
    entries_per_kib: int  # archive members, lines, rows, records per KiB on disk, at least min_entries
    min_entries: int


class Reading:
    """One source being read: what it may still decompress to (bytes and entries) and what it passed over."""

    def __init__(self, name: str, size: int, options: ReadOptions) -> None:
        self.name, self.options = name, options
        self.bytes_left = min(
            options.max_budget_bytes, max(options.min_budget_bytes, options.max_expansion * size)
        )
        self.entries_left = max(options.min_entries, options.entries_per_kib * size // 1024)
        self.skipped: list[dict] = []
        self.warnings: list[dict] = []  # what reader libraries said while reading: for the report
        self.within: list[str] = []  # the archive members being read, outermost first

    def take(self, n: int, what: str) -> None:
        """Spend `n` decompressed bytes; past the budget the source is refused."""
        if n > self.bytes_left:
            raise SourceError(
                f"{what} decompresses to more than the {self.bytes_left >> 20} MB left of its budget (a bomb?)"
            )
        self.bytes_left -= n

    def count(self, n: int, what: str) -> None:
        """Spend `n` entries (members, lines, rows, records); past the budget the source is refused."""
        if n > self.entries_left:
            raise SourceError(
                f"holds more {what} than the {self.entries_left:,} entries allowed for its size (a bomb?)"
            )
        self.entries_left -= n

    def warn(self, message: str) -> None:
        """Record what a library said about this source (or the archive member being read)."""
        path = "!".join([self.name, *self.within])
        self.warnings.append({"path": valid_unicode(path), "warning": valid_unicode(message)})

    def skip(self, member: str, reason: str) -> None:
        """Record an archive member that is not read, under its full name (`a.zip!x.tar!../y`)."""
        path = "!".join([self.name, *self.within, member])
        self.skipped.append({"path": valid_unicode(path), "reason": reason})


# A reader takes the raw bytes and yields (member-or-index key, text, extra meta) per document.
Reader = Callable[[bytes, str, Reading], Triples]
READERS: dict[str, Reader] = {}


def reader(*suffixes: str) -> Callable[[Reader], Reader]:
    def register(fn: Reader) -> Reader:
        for suffix in suffixes:
            READERS[suffix] = fn
        return fn

    return register


def suffix_of(name: str) -> str:
    """The longest registered suffix of a file name, lower-cased ('' when none is)."""
    lower = name.lower()
    for suffix in sorted(READERS, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return ""


# Names of plain-text documents that often come without a suffix, or with one that names no format
# (README.Debian, COPYING.LIB, LICENSE.MIT): read as text when their bytes are text.
DOCUMENT_NAMES = frozenset(
    "README READ.ME AUTHORS COPYING COPYRIGHT LICENSE LICENCE NOTICE NEWS CHANGES CHANGELOG HISTORY "
    "INSTALL THANKS TODO CONTRIBUTORS CONTRIBUTING MAINTAINERS CREDITS BUGS FAQ".split()
)


def plain_name(name: str) -> bool:
    """Whether a file name with no known suffix may still be a text document: no suffix at all
    (`AUTHORS`, `syslog`), a version where a suffix would be (`Apache-2.0`, `MPL-1.1`), or a
    well-known document name (`COPYING.LIB`). Its bytes decide."""
    base = name.rsplit("/", 1)[-1]
    if suffix_of(base):
        return False
    stem, dot, last = base.rpartition(".")
    return not dot or last.isdigit() or base.split(".")[0].upper() in DOCUMENT_NAMES


def sniff(head: bytes) -> str:
    """Why the first bytes of a plain-named file are no document ('' when they are text): a program or
    image (`binary`), or a private key such as `id_rsa`, which no corpus should hold."""
    if looks_binary(head):
        return "binary"
    if b"PRIVATE KEY-----" in head[:4096]:
        return "private key"
    return ""


def dispatch(data: bytes, name: str, reading: Reading) -> Triples:
    """(key, text, meta) for each document in `data`, by the reader its file name calls for; a name
    no reader claims (a file named on its own, `x.log.gz`'s inner name) is read as plain text."""
    suffix = suffix_of(name)
    read = READERS.get(suffix, read_plain)
    for key, text, meta in read(data, name, reading):
        meta.setdefault("format", suffix.lstrip(".") or "text")
        yield key, text, meta


# ------------------------------------------------------------------ text and JSON lines


@reader(*TEXT_SUFFIXES)
def read_text(data: bytes, name: str, reading: Reading) -> Triples:
    """A plain text file is one document."""
    if looks_binary(data):
        raise SourceError("binary data, not text")
    text, encoding = decode(data)
    yield "", text, {"encoding": encoding}


@reader(".jsonl", ".ndjson")
def read_jsonl(data: bytes, name: str, reading: Reading) -> Triples:
    """One JSON object per line: the text in `text_field`; `id_field` kept as `source_id`."""
    reading.count(data.count(b"\n") + 1, "JSON lines")
    yield from _records(decode(data)[0].splitlines(), 0, reading.options)


def _records(lines: list[str], before: int, options: ReadOptions) -> Triples:
    """The documents of JSON lines numbered from `before + 1`."""
    text_field, id_field = options.text_field, options.id_field
    for number, line in enumerate(lines, before + 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            yield str(number), "", {"invalid": "bad_json", "line": number}
            continue
        meta = {"line": number}
        if isinstance(record.get(id_field), str | int):
            meta["source_id"] = record[id_field]
        value = record.get(text_field)
        if not isinstance(value, str):
            yield str(number), "", {**meta, "invalid": f"no_{text_field}_field"}
            continue
        yield str(number), value, meta


# ------------------------------------------------------------------ sources over the cap, in pieces


class Stream(Protocol):
    def read(self, n: int, /) -> bytes: ...


StreamReader = Callable[[Stream, str, Reading], Triples]


def read_text_stream(stream: Stream, name: str, reading: Reading) -> Triples:
    """A text over the cap: a document per piece of up to PIECE_BYTES, ended after a blank line or a
    line end in its second half when there is one; `piece` and byte `offset` in its meta."""
    carry, offset, index = b"", 0, 0
    while True:
        block = stream.read(PIECE_BYTES)
        data = carry + block
        while len(data) > PIECE_BYTES or (data and not block):
            cut = _piece_end(data) if len(data) > PIECE_BYTES else len(data)
            if looks_binary(data[:cut]):
                raise SourceError(f"binary data, not text, at byte {offset:,}")
            text, encoding = decode(data[:cut])
            yield (
                f"piece{index}",
                text,
                {"encoding": encoding, "format": "text", "piece": index, "offset": offset},
            )
            data, offset, index = data[cut:], offset + cut, index + 1
        if not block:
            return
        carry = data


def _piece_end(data: bytes) -> int:
    """Where the piece at the start of `data` (longer than a piece) ends: after its last blank line or line end past the
    middle of PIECE_BYTES, else at PIECE_BYTES moved back to the start of a UTF-8 character."""
    for separator in (b"\n\n", b"\n"):
        at = data.rfind(separator, PIECE_BYTES // 2, PIECE_BYTES)
        if at >= 0:
            return at + len(separator)
    cut = PIECE_BYTES
    while cut > PIECE_BYTES - 4 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


def read_jsonl_stream(stream: Stream, name: str, reading: Reading) -> Triples:
    """JSON lines over the cap, a piece at a time: the same documents, keys and line numbers as read whole."""
    carry, lines = b"", 0
    while True:
        block = stream.read(PIECE_BYTES)
        data = carry + block
        cut = data.rfind(b"\n") + 1 if block else len(data)
        if block and len(data) - cut > MAX_FILE_BYTES:
            raise SourceError(f"a JSON line longer than {MAX_FILE_BYTES >> 20} MB at line {lines + 1:,}")
        piece, carry = data[:cut], data[cut:]
        reading.count(piece.count(b"\n") + (0 if block else 1), "JSON lines")
        text = decode(piece)[0].splitlines()
        yield from _records(text, lines, reading.options)
        lines += len(text)
        if not block:
            return


class _Budgeted:
    """A decompressing stream whose every byte is paid for from the source's budget."""

    def __init__(self, stream, what: str, reading: Reading, head: list[bytes] | None = None) -> None:
        self.stream, self.what, self.reading, self.head = stream, what, reading, head or []

    def read(self, n: int, /) -> bytes:
        if self.head:  # what was read to learn whether the stream is over the cap
            return self.head.pop(0)
        try:
            data = self.stream.read(n)
        except (EOFError, OSError, lzma.LZMAError) as e:
            raise SourceError(f"truncated or corrupt {self.what}: {e}") from e
        self.reading.take(len(data), self.what)
        return data


def read_compressed_stream(raw: Stream, name: str, reading: Reading) -> Triples:
    """A compressed file: read whole when it decompresses to at most the cap (as any file), else in
    pieces when what it holds is text or JSON lines; `x.pdf.gz` over the cap is refused."""
    inner, _, kind = name.rpartition(".")
    kind = kind.lower()
    stream = _Budgeted(_decompressor(raw, kind), f"{'zstd' if kind == 'zst' else kind} stream", reading)
    head, size = [], 0
    while size <= MAX_FILE_BYTES and (block := stream.read(PIECE_BYTES)):
        head.append(block)
        size += len(block)
    if size <= MAX_FILE_BYTES:
        yield from dispatch(b"".join(head), inner, reading)
        return
    if suffix_of(inner) in COMPRESSED:  # compressed twice: its inner stream is no text to cut
        raise SourceError(too_large(inner, f"decompresses to more than {MAX_FILE_BYTES >> 20} MB"))
    stream.head = head
    yield from dispatch_stream(stream, inner, reading, f"decompresses to more than {MAX_FILE_BYTES >> 20} MB")


STREAMS: dict[str, StreamReader] = {
    **dict.fromkeys((*TEXT_SUFFIXES, ""), read_text_stream),
    ".jsonl": read_jsonl_stream,
    ".ndjson": read_jsonl_stream,
    **dict.fromkeys(COMPRESSED, read_compressed_stream),
}


def dispatch_stream(stream: Stream, name: str, reading: Reading, what: str) -> Triples:
    """(key, text, meta) for each document of a source over the cap, read in pieces by the reader its
    name calls for; a `SourceError` saying `what` of it when its format is read whole only."""
    suffix = suffix_of(name)
    if suffix not in STREAMS and READERS.get(suffix, read_plain) is read_plain:
        suffix = ""  # a man page, a log rotated to `syslog.1`, a plain name: text
    if suffix not in STREAMS:
        raise SourceError(too_large(name, what))
    for key, text, meta in STREAMS[suffix](stream, name, reading):
        meta.setdefault("format", suffix.lstrip(".") or "text")
        yield key, text, meta


def too_large(name: str, what: str) -> str:
    kind = suffix_of(name) or "such"
    return (
        f"{what}, the most read whole; only text and JSON lines (and their .gz, .bz2, .xz, .zst) "
        f"are read in pieces, not a {kind} file"
    )


# ------------------------------------------------------------------ archives and compression


def _read_limited(stream, what: str, reading: Reading) -> bytes:
    """Read a decompressing stream to its end within the source's budget."""
    try:
        data = stream.read(reading.bytes_left + 1)
    except (EOFError, OSError, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise SourceError(f"truncated or corrupt {what}: {e}") from e
    reading.take(len(data), what)
    return data


def _member_triples(data: bytes, member: str, reading: Reading) -> Triples:
    if plain_name(member) and (why := sniff(data[:8192])):
        reading.skip(member, why)
        return
    reading.within.append(member)
    try:
        for key, text, meta in dispatch(data, member, reading):
            inner = meta.get("member")
            yield (
                (f"{member}#{key}" if key else member),
                text,
                {**meta, "member": f"{member}!{inner}" if inner else member},
            )
    finally:
        reading.within.pop()


def member_name(name: str) -> tuple[str, str]:
    """(the member's name without `.` components, why it is passed over or '' to read it).

    Nothing is ever extracted to disk, but a `..` or absolute name is what a hostile archive looks
    like, and a hidden file or macOS metadata is not a document: all are recorded, none read.
    """
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    clean = "/".join(parts)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return clean, "absolute path in the archive"
    if ".." in parts:
        return clean, "'..' in its path in the archive"
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return clean, "hidden or metadata member"
    if not suffix_of(parts[-1]) and not plain_name(parts[-1]):
        return clean, "unknown file type"
    return clean, ""


def _open_zip(data: bytes, what: str, reading: Reading) -> zipfile.ZipFile:
    """A zip whose entries and declared sizes fit the budget (zipfile never reads past a declared size)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise SourceError(f"not a readable {what}: {e}") from e
    reading.count(len(infos), f"{what} members")
    declared = sum(i.file_size for i in infos)
    if declared > reading.bytes_left:
        raise SourceError(
            f"{what} expands to {declared >> 20} MB, past the {reading.bytes_left >> 20} MB allowed (a bomb?)"
        )
    return archive


@reader(".zip")
def read_zip(data: bytes, name: str, reading: Reading) -> Triples:
    archive = _open_zip(data, "zip", reading)
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        if info.is_dir():
            continue
        member, skip = member_name(info.filename)
        if skip:
            reading.skip(info.filename, skip)
            continue
        with archive.open(info) as stream:
            content = _read_limited(stream, "zip member", reading)
        yield from _member_triples(content, member, reading)


def _tar_members(archive: tarfile.TarFile, reading: Reading) -> list[tarfile.TarInfo]:
    """The regular files to read, listed within the budget: every header counts, every declared size too."""
    members, declared = [], 0
    for info in archive:
        reading.count(1, "tar members")
        if info.isdir():
            continue
        if not info.isfile():
            reading.skip(info.name, "link or special file in the archive")
            continue
        declared += info.size
        if declared > reading.bytes_left:
            raise SourceError(f"tar expands to more than the {reading.bytes_left >> 20} MB allowed (a bomb?)")
        members.append(info)
    return members


@reader(".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst")
def read_tar(data: bytes, name: str, reading: Reading) -> Triples:
    if name.lower().endswith((".zst", ".tzst")):
        data = _unzstd(data, reading)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = _tar_members(archive, reading)
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as e:
        raise SourceError(f"not a readable tar archive: {e}") from e
    for info in sorted(members, key=lambda m: m.name):
        member, skip = member_name(info.name)
        if skip:
            reading.skip(info.name, skip)
            continue
        extracted = archive.extractfile(info)
        if extracted is not None:
            yield from _member_triples(_read_limited(extracted, "tar member", reading), member, reading)


def _unzstd(data: bytes, reading: Reading) -> bytes:
    import zstandard

    stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
    return _read_limited(stream, "zstd stream", reading)


def _decompressor(raw: Stream, kind: str) -> Stream:
    """The decompressing file object for a suffix without its dot: gz, bz2, xz or zst."""
    if kind == "zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw)
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw)
    return {"bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[kind](raw)  # a file object where a name goes


@reader(*COMPRESSED)
def read_compressed(data: bytes, name: str, reading: Reading) -> Triples:
    """One compressed file: decompress, then read it as what its inner name says (x.jsonl.gz → JSON lines)."""
    yield from read_compressed_stream(io.BytesIO(data), name, reading)


# ------------------------------------------------------------------ tables


def _parquet_text_bytes(table_file, text_field: str) -> tuple[int, int]:
    """(uncompressed bytes of the text column in the whole file, in its largest row group), from the footer."""
    meta = table_file.metadata
    sizes = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        sizes.append(
            sum(
                group.column(c).total_uncompressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema == text_field
            )
        )
    return sum(sizes), max(sizes, default=0)


@reader(".parquet")
def read_parquet(data: bytes, name: str, reading: Reading) -> Triples:
    """One document per row. The footer's row count and sizes are checked first; then every batch's
    text is paid for before it becomes Python strings, in batches small enough that even one huge
    value repeated by a dictionary cannot pass the budget unpaid."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    text_field, id_field = reading.options.text_field, reading.options.id_field
    try:
        table_file = pq.ParquetFile(pa.BufferReader(data))
    except pa.ArrowException as e:
        raise SourceError(f"not a readable Parquet file: {e}") from e
    names = table_file.schema_arrow.names
    if text_field not in names:
        raise SourceError(
            f"has no {text_field!r} column (columns: {', '.join(names[:10])}); see --text-field"
        )
    reading.count(table_file.metadata.num_rows, "Parquet rows")
    total, largest = _parquet_text_bytes(table_file, text_field)
    if total > reading.bytes_left:
        raise SourceError(f"Parquet text of {total >> 20} MB, past the {reading.bytes_left >> 20} MB allowed")
    columns = [text_field] + ([id_field] if id_field in names else [])
    batch_size = max(1, min(1024, reading.bytes_left // max(largest, 1)))
    row = 0
    for batch in table_file.iter_batches(columns=columns, batch_size=batch_size):
        texts = batch.column(0)
        if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type):
            reading.take(pc.sum(pc.binary_length(texts)).as_py() or 0, "Parquet text")
        for record in batch.to_pylist():
            row += 1
            meta: dict = {"row": row}
            if record.get(id_field) is not None:
                meta["source_id"] = str(record[id_field])
            text = record[text_field]
            if not isinstance(text, str):
                meta["invalid"] = f"no_{text_field}_field"
                text = ""
            yield str(row), text, meta


# ------------------------------------------------------------------ documents


@reader(".html", ".htm", ".xhtml")
def read_html(data: bytes, name: str, reading: Reading) -> Triples:
    html, encoding = decode_html(data)
    title, text = extract(html)
    yield "", text, {"encoding": encoding, "format": "html", "title": title}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages[record.getMessage()] += 1


@contextmanager
def library_warnings(logger_name: str, reading: Reading) -> Iterator[None]:
    """What a reader library logs or warns while it reads (pypdf's "EOF marker not found") goes to the
    source's warnings, which the report lists, instead of the terminal; each message once, counted."""
    logger, handler = logging.getLogger(logger_name), _Collect()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                handler.messages.update(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for message, n in handler.messages.items():
            reading.warn(message if n == 1 else f"{message} ({n} times)")


@reader(".pdf")
def read_pdf(data: bytes, name: str, reading: Reading) -> Triples:
    """Text of every page; each page's text is paid for, so a PDF of compressed pages stops at the budget."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    pages = []
    try:
        with library_warnings("pypdf", reading):
            pdf = PdfReader(io.BytesIO(data))
            if pdf.is_encrypted:
                raise SourceError("encrypted PDF")
            for page in pdf.pages:
                pages.append(page.extract_text() or "")
                reading.take(len(pages[-1].encode("utf-8", "surrogatepass")), "PDF text")
    except (PyPdfError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"not a readable PDF: {e}") from e
    yield "", "\n\n".join(p.strip() for p in pages if p.strip()), {"format": "pdf", "pages": len(pages)}


@reader(".docx")
def read_docx(data: bytes, name: str, reading: Reading) -> Triples:
    """python-docx unpacks the zip itself, so its declared sizes are paid for before it does."""
    import docx

    archive = _open_zip(data, "DOCX", reading)
    reading.take(sum(i.file_size for i in archive.infolist()), "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise SourceError(f"not a readable DOCX: {e}") from e
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text.strip() for cell in row.cells))
    yield "", "\n\n".join(p.strip() for p in parts if p.strip()), {"format": "docx"}


@reader(".epub")
def read_epub(data: bytes, name: str, reading: Reading) -> Triples:
    """An EPUB is a zip of XHTML chapters; the OPF spine gives their reading order. One book, one document.

    Every chapter read is paid for, each time the spine names it: a spine that repeats one
    chapter a thousand times stops at the budget.
    """
    book = _open_zip(data, "EPUB", reading)
    try:
        container = ET.fromstring(book.read("META-INF/container.xml"))
        opf_path = next(e.get("full-path") for e in container.iter() if e.tag.endswith("rootfile"))
        opf = ET.fromstring(book.read(opf_path))
    except (zipfile.BadZipFile, KeyError, StopIteration, ET.ParseError) as e:
        raise SourceError(f"not a readable EPUB: {e}") from e
    base = opf_path.rpartition("/")[0]
    manifest = {e.get("id"): e.get("href") for e in opf.iter() if e.tag.endswith("item")}
    spine = [manifest.get(e.get("idref")) for e in opf.iter() if e.tag.endswith("itemref")]
    reading.count(len(spine), "EPUB chapters")
    chapters = []
    for href in filter(None, spine):
        try:
            with book.open(f"{base}/{href}" if base else href) as stream:
                chapter = _read_limited(stream, "EPUB chapter", reading)
        except KeyError:
            continue
        chapters.append(extract(decode_html(chapter)[0])[1])
    yield "", "\n\n".join(c for c in chapters if c), {"format": "epub"}


@reader(".fb2")
def read_fb2(data: bytes, name: str, reading: Reading) -> Triples:
    """FictionBook 2: XML with <body><section><p>…; the XML declaration names the encoding (often cp1251)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise SourceError(f"not a readable FictionBook file: {e}") from e
    paragraphs: list[str] = []
    for body in (e for e in root if e.tag.rsplit("}", 1)[-1] == "body"):
        for element in body.iter():
            tag = element.tag.rsplit("}", 1)[-1]
            if tag in ("p", "v", "subtitle", "text-author"):
                text = "".join(element.itertext()).strip()
                if text:
                    paragraphs.append(text)
            elif tag in ("stanza", "section", "title", "epigraph", "poem", "cite"):
                paragraphs.append("")
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(paragraphs)).strip()
    yield "", text, {"format": "fb2"}


# ------------------------------------------------------------------ man pages


_ROFF_ESCAPES = [
    (re.compile(r'\\".*$', re.M), ""),  # a comment, to the end of its line: first, before escapes make `\"`
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d"), ""),  # size changes
    (re.compile(r"\\\((em|en)"), "—"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((oq|cq|aq)"), "'"),
    (re.compile(r"\\\(bu"), "•"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-e]"), lambda m: "-" if m[0] == "\\-" else "\\"),
    (re.compile(r"\\[&|^%:]|\\c$", re.M), ""),
    (re.compile(r"\\ "), " "),
]
_MACRO = re.compile(r"^[.'](\S+)\s*(.*)$")


def roff_to_text(source: str) -> str:
    """A man page's roff source as plain text: headings, paragraphs, escapes resolved, requests dropped."""
    lines: list[str] = []
    for raw in source.splitlines():
        match = _MACRO.match(raw)
        if match:
            macro, args = match.groups()
            if macro in ("SH", "SS", "Sh", "Ss"):
                lines += ["", args.strip('"'), ""]
            elif macro in ("PP", "P", "LP", "Pp", "TP", "IP", "sp", "br"):
                lines.append("")
                if macro == "IP" and args:
                    lines.append(args.split('"')[1] if args.startswith('"') else args.split()[0])
            elif macro in (
                "B",
                "I",
                "BR",
                "RB",
                "IR",
                "RI",
                "BI",
                "IB",
                "Nm",
                "Fl",
                "Ar",
                "Nd",
                "Xr",
                "Em",
                "Sy",
            ):
                words = re.findall(r'"[^"]*"|\S+', args)
                lines.append(
                    "".join(w.strip('"') for w in words)
                    if len(macro) == 2 and macro[0] in "BIR"
                    else " ".join(w.strip('"') for w in words)
                )
            continue  # other requests (.TH, .nf, .if, .de, …) carry no text we want
        lines.append(raw)
    text = "\n".join(lines)
    for pattern, replacement in _ROFF_ESCAPES:
        text = pattern.sub(replacement, text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


_ROFF_MARKERS = re.compile(r"^[.'](TH|SH|Dd|Dt)\b", re.M)


@reader(".man", ".1", ".2", ".3", ".4", ".5", ".6", ".7", ".8", ".9")
def read_plain(data: bytes, name: str, reading: Reading) -> Triples:
    """A man page when its text has roff's markers (`.TH`, `.SH`), else plain text: `syslog.1` is a
    rotated log, not a page of section 1, and a page may come without a suffix."""
    if looks_binary(data):
        raise SourceError("binary data, not text")
    text, encoding = decode(data)
    if _ROFF_MARKERS.search(text):
        yield "", roff_to_text(text), {"encoding": encoding, "format": "man"}
    else:
        yield "", text, {"encoding": encoding, "format": "text"}


# ------------------------------------------------------------------ web archives


@reader(".warc", ".warc.gz")
def read_warc(data: bytes, name: str, reading: Reading) -> Triples:
    """Every HTTP response with an HTML or plain-text body, one document each; the URL goes to meta."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    try:
        for record in ArchiveIterator(io.BytesIO(data)):
            reading.count(1, "WARC records")
            if record.rec_type != "response" or record.http_headers is None:
                continue
            content_type = (record.http_headers.get_header("Content-Type") or "").lower()
            if "html" not in content_type and "text/plain" not in content_type:
                continue
            url = record.rec_headers.get_header("WARC-Target-URI") or ""
            key = record.rec_headers.get_header("WARC-Record-ID") or url
            body = _read_limited(record.content_stream(), "WARC record", reading)
            if "html" in content_type:
                html, encoding = decode_html(body)
                title, text = extract(html)
                yield key, text, {"format": "warc", "url": url, "title": title, "encoding": encoding}
            else:
                text, encoding = decode(body)
                yield key, text, {"format": "warc", "url": url, "encoding": encoding}
    except ArchiveLoadFailed as e:
        raise SourceError(f"not a readable WARC file: {e}") from e
