"""Sources to documents: find the files, hash them, and read each into documents.

`find_sources` expands directories (recursively), globs and files into a sorted list of `Source`s
with their hashes, which is what names and identifies a corpus. It stays inside the roots it is
given: a link that leads out of them, or to a directory, is passed over and recorded unless the
run follows links. `read_source` turns one source into `Document`s through the reader its name
calls for (formats.py), within the source's budget. A file that cannot be read raises
`SourceError`; the pipeline records it and goes on. A document that is read but has nothing usable
(no text field, an empty file) still comes out, marked with `meta["invalid"]`, so that it is
counted and dropped.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from autarky.artifact import sha256_file
from autarky.console import UserError
from autarky.data import formats
from autarky.data.document import Document, document_id, valid_unicode
from autarky.data.formats import (
    READERS,
    Reading,
    ReadOptions,
    SourceError,
    dispatch,
    dispatch_stream,
    plain_name,
    sniff,
    suffix_of,
)
from autarky.data.steps import Filter

__all__ = [
    "ReadCheck",
    "ReadOptions",
    "Source",
    "SourceError",
    "find_sources",
    "not_read",
    "read_source",
]

NOT_FOLLOWED = "link out of the source tree, not followed (--follow-links reads it)"


@dataclass(frozen=True)
class Source:
    """One file to read. `path` is its name in the corpus; `location` where this machine reads it from."""

    path: str  # as found under its source argument, prefixed by that argument as given: `docs/a/b.txt`
    sha256: str
    bytes: int
    copy: int = 0  # the n-th file with these same bytes, so that copies get distinct document ids
    tags: tuple[tuple[str, str], ...] = field(default=())
    location: str = ""  # absolute, so that a worker in another directory reads it (default: `path`)


# ------------------------------------------------------------------ finding the sources


def _inside(path: Path, root: str) -> bool:
    """Whether `path`, every link in it resolved, lies under the real directory `root`."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(top: Path, root: str, follow_links: bool) -> Iterator[tuple[Path, str]]:
    """(path, '') for each file under `top`, sorted, or (path, why it is passed over).

    Hidden entries are passed over; so are links to directories and links out of `root`, unless
    `follow_links`, which walks into linked directories too (each real directory once: no loops).
    """
    seen: set[str] = set()
    for current, dirs, files in os.walk(top, followlinks=follow_links):
        seen.add(os.path.realpath(current))
        kept = []
        for name in sorted(dirs):
            path = Path(current) / name
            if name.startswith("."):
                yield path, "hidden"
            elif path.is_symlink() and not follow_links:
                yield path, "link to a directory, not followed (--follow-links walks it)"
            elif os.path.realpath(path) in seen:
                yield path, "link loop"
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = Path(current) / name
            if name.startswith("."):
                yield path, "hidden"
            elif not follow_links and path.is_symlink() and not _inside(path, root):
                yield path, NOT_FOLLOWED
            else:
                yield path, ""


def _literal_root(pattern: Path) -> Path:
    """The part of a glob before its first wildcard: the root its matches must stay under."""
    root = pattern
    while glob.has_magic(str(root)):
        root = root.parent
    return root


def _kind_of(path: Path) -> str:
    """'' for a file some reader takes, else why it is passed over: a name no reader claims is read
    only when it is a plain name (`README`, `COPYING.LIB`) and its first bytes are text (formats.sniff)."""
    if suffix_of(path.name):
        return ""
    if not plain_name(path.name):
        return "unknown file type"
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return ""  # hashing it will say why it cannot be read
    return sniff(head)


def expand(path: Path, follow_links: bool = False) -> tuple[list[Path], list[dict]]:
    """The files to read under one argument, and those passed over: [{path, reason}].

    A file named on its own is read whatever its suffix and wherever a link points: it was asked for.
    """
    if not path.exists() and glob.has_magic(str(path)):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not matches:
            raise UserError(f"no file matches {str(path)!r}")
        root = os.path.realpath(_literal_root(path))
    elif path.is_dir():
        matches, root = [path], os.path.realpath(path)
    elif path.exists() or path.is_symlink():
        return [path], []
    else:
        raise UserError(f"{path} does not exist")
    found: list[tuple[Path, str]] = []
    for match in matches:
        if not follow_links and not _inside(match, root):
            found.append((match, NOT_FOLLOWED))
        elif match.is_dir():
            found += _walk(match, root, follow_links)
        else:
            found.append((match, ""))
    files: list[Path] = []
    skipped: list[dict] = []
    for f, reason in found:
        reason = reason or _kind_of(f)
        if reason:
            skipped.append({"path": valid_unicode(f.as_posix()), "reason": reason})
        else:
            files.append(f)
    return files, skipped


def find_sources(
    paths: list[Path],
    tags: dict[str, str] | None = None,
    source_tags: dict[str, dict[str, str]] | None = None,
    follow_links: bool = False,
) -> tuple[list[Source], list[dict], list[dict]]:
    """Expand and hash the inputs: (sources in a stable order, files passed over, files unreadable).

    A file is named by its path under the argument it was found through, prefixed by that argument
    as given (`docs/a/b.txt` for `docs`; a file named on its own, as given), never by where the
    working directory happens to be: the same files curated from elsewhere make the same corpus,
    and the names say nothing of the machine's layout beyond what the user typed. Names are paths
    from the one working directory, so two different files never share one; a file reached through
    two arguments is read once, under the first. Every file carries `tags`, overridden by
    `source_tags[arg]` for files found under that argument.
    """
    if not paths:
        raise UserError("no sources given; name files or directories to curate")
    unknown = set(source_tags or {}) - {str(p) for p in paths}
    if unknown:
        raise UserError(f"--tag names {', '.join(sorted(unknown))}, which is not among the sources given")
    skipped: list[dict] = []
    chosen: dict[str, tuple[Path, dict]] = {}  # absolute path (links not followed) → (path as found, tags)
    for given in paths:
        found, passed_over = expand(Path(given), follow_links)
        skipped += passed_over
        for f in found:
            chosen.setdefault(
                os.path.abspath(f), (f, {**(tags or {}), **(source_tags or {}).get(str(given), {})})
            )
    errors: list[dict] = []
    sources: list[Source] = []
    seen: dict[str, int] = {}
    names: set[str] = set()
    for location, (f, file_tags) in sorted(chosen.items(), key=lambda item: item[1][0].as_posix()):
        name = base = valid_unicode(f.as_posix())
        while name in names:  # only a file name's undecodable bytes, written out, can match another's
            name = f"{base}#{len(names)}"
        names.add(name)
        try:
            if not f.is_file():
                raise OSError("not a regular file (a broken or looping link?)")
            sha = sha256_file(f)
            size = f.stat().st_size
        except OSError as e:
            errors.append({"path": name, "reason": f"cannot read: {e.strerror or e}"})
            continue
        copy = seen.get(sha, 0)
        seen[sha] = copy + 1
        sources.append(Source(name, sha, size, copy, tuple(sorted(file_tags.items())), location))
    if not sources:
        files = len(skipped) + len(errors)
        where = ", ".join(map(str, paths))
        if not files:
            raise UserError(f"read 0 documents: there are no files in {where}")
        raise UserError(
            f"read 0 documents from {plural(files, 'file')} in {where}: {not_read(skipped, errors)}"
        )
    return sources, skipped, errors


# What to do about each reason a file is passed over (the link reasons name their flag themselves).
WAY_OUT = {
    "unknown file type": "curate reads files by suffix ({suffixes}); "
    "rename such a file or name it on its own to read it as text",
    "binary": "binary files hold no text to read: convert them to text first (pdftotext, pandoc)",
    "hidden": "hidden files and directories are passed over: name one on its own to read it",
}


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def not_read(skipped: list[dict], errors: list[dict]) -> str:
    """How many files were not read, by reason, and the way out of each reason: one clause for a message."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    parts = []
    if skipped:
        by_reason = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        parts.append(f"{len(skipped)} skipped ({by_reason})")
    if errors:
        first = f"{errors[0]['path']}: {errors[0]['reason']}"
        parts.append(f"{len(errors)} could not be read ({first}{', …' if len(errors) > 1 else ''})")
    hints = [
        WAY_OUT[reason].format(suffixes=" ".join(sorted(READERS))) for reason in counts if reason in WAY_OUT
    ]
    return "; ".join(parts + hints)


# ------------------------------------------------------------------ reading one source


def read_source(
    source: Source,
    options: ReadOptions,
    passed_over: list[dict] | None = None,
    warnings: list[dict] | None = None,
) -> Iterator[Document]:
    """The documents of one source file; raises SourceError when the file cannot be read or passes its budget.

    Archive members not read are appended to `passed_over` as {path, reason} once the source is read,
    and what reader libraries warned about to `warnings` as {path, warning}.
    """
    try:
        f = open(source.location or source.path, "rb")  # noqa: SIM115 (closed below, after the documents)
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > formats.MAX_FILE_BYTES:
            reading = Reading(source.path, size, options)
            what = f"larger than {formats.MAX_FILE_BYTES >> 20} MB"
            triples = dispatch_stream(f, source.path, reading, what)
        else:
            try:
                data = f.read(formats.MAX_FILE_BYTES + 1)
            except OSError as e:
                raise SourceError(f"cannot read: {e.strerror or e}") from e
            if len(data) > formats.MAX_FILE_BYTES:  # it grew since it was hashed
                raise SourceError(f"larger than {formats.MAX_FILE_BYTES >> 20} MB")
            reading = Reading(source.path, len(data), options)
            triples = dispatch(data, source.path, reading)
        try:
            for key, text, meta in triples:
                member = meta.get("member")
                yield Document(
                    id=document_id(source.sha256, source.copy, key),
                    text=valid_unicode(text),
                    source=valid_unicode(f"{source.path}!{member}" if member else source.path),
                    source_sha256=source.sha256,
                    tags=dict(source.tags),
                    meta={k: valid_unicode(v) if isinstance(v, str) else v for k, v in meta.items()},
                )
        finally:
            if passed_over is not None:
                passed_over += reading.skipped
            if warnings is not None:
                warnings += reading.warnings


class ReadCheck(Filter):
    """Drops what a reader marked unusable (no text field, bad JSON line), documents with no text, and
    documents longer than `max_chars`, which no later step should have to hold.

    A document too long is kept in the dropped rows cut to `max_chars`, its length in `meta["chars"]`.
    """

    name = "read"

    def __init__(self, max_chars: int) -> None:
        super().__init__()
        self.max_chars = max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        invalid = doc.meta.pop("invalid", None)
        if invalid:
            return False, invalid
        if len(doc.text) > self.max_chars:
            doc.meta["chars"] = len(doc.text)
            doc.text = doc.text[: self.max_chars]
            return False, "too_long"
        if not doc.text.strip():
            return False, "empty"
        return True
