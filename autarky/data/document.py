"""A document on its way through curation: text plus where it came from."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field


@dataclass(slots=True)
class Document:
    id: str
    text: str
    source: str  # the file it came from; `archive.zip!member` for a file inside an archive
    source_sha256: str  # of the source file as read (the archive, for a member)
    tags: dict[str, str] = field(default_factory=dict)
    lang: str = ""
    lang_score: float = 0.0
    meta: dict = field(default_factory=dict)  # what steps note on the way (encoding, redactions, …)
    cache: dict = field(default_factory=dict)  # what steps share and never write (word lists, …)


def document_id(source_sha256: str, copy: int, key: str) -> str:
    """Stable across runs and machines: the source's content hash, not its path, names the document.

    `copy` tells apart identical files at two paths; `key` a document within a file (member, line).
    """
    raw = f"{source_sha256}\x1f{copy}\x1f{key}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def text_hash(text: str) -> bytes:
    """16 bytes of sha256 of the text: the key for exact dedup and for the train/val split."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """Text Parquet and JSON files can hold (UTF-8): a file name's undecodable bytes become `\\xff`, other
    lone surrogates (a JSON `\\ud800`) U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
