"""The corpus artifact's on-disk shape: writing its shards, and reading them back.

Kept documents live in `shards/{split}-{index:05d}.parquet` with at least the columns in
`DOCUMENT_COLUMNS`; dropped ones in `dropped/dropped-{index:05d}.parquet` with `step` and `reason`
as well (and an empty `split`). Every later stage reads a corpus only through this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autarky.artifact import Artifact
from autarky.data.document import Document

SPLITS = ("train", "val")
DOCUMENT_COLUMNS = ("id", "text", "lang", "source", "source_sha256", "split")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("source", pa.string()),
        ("source_sha256", pa.string()),
        ("split", pa.string()),
        ("tags", pa.string()),  # JSON object: the --tag key=value pairs of its source
        ("dup_cluster_size", pa.int32()),  # how many near-duplicates this one stands for (1: none)
        ("meta", pa.string()),  # JSON object: what the steps noted (encoding, redactions, …)
    ]
)
DROPPED_SCHEMA = SCHEMA.append(pa.field("step", pa.string())).append(pa.field("reason", pa.string()))


def document_row(doc: Document, split: str = "", cluster_size: int = 1) -> dict:
    return {
        "id": doc.id,
        "text": doc.text,
        "lang": doc.lang,
        "lang_score": doc.lang_score,
        "source": doc.source,
        "source_sha256": doc.source_sha256,
        "split": split,
        "tags": json.dumps(doc.tags, ensure_ascii=False, sort_keys=True),
        "dup_cluster_size": cluster_size,
        "meta": json.dumps(doc.meta, ensure_ascii=False, sort_keys=True),
    }


class ShardWriter:
    """Writes rows into `{directory}/{prefix}-{i:05d}.parquet`, starting a new file past `shard_bytes` of text.

    Rows come one by one (`write`) or as Arrow tables with the writer's columns (`write_table`); either
    way each file holds row groups of `batch_rows` and ends with the row whose UTF-8 text reaches
    `shard_bytes`.
    """

    def __init__(
        self, directory: Path, prefix: str, schema: pa.Schema, shard_bytes: int, batch_rows: int = 512
    ):
        self.directory, self.prefix, self.schema = Path(directory), prefix, schema
        self.shard_bytes, self.batch_rows = shard_bytes, batch_rows
        self.index, self.writer, self.bytes_in_shard = 0, None, 0
        self.rows: list[dict] = []  # written one by one, not yet a table
        self.pending: list[pa.Table] = []  # tables of this shard not yet written
        self.pending_rows = 0
        self.paths: list[Path] = []
        self.count = 0

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.pending_rows += 1
        self.count += 1
        self.bytes_in_shard += len(row["text"].encode("utf-8"))
        if self.bytes_in_shard >= self.shard_bytes:
            self._flush(everything=True)
            self._roll()
        elif self.pending_rows >= self.batch_rows:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        self._tabulate()
        sizes = np.cumsum(
            pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False), dtype=np.int64
        )
        start = 0
        while start < len(table):
            room = self.shard_bytes - self.bytes_in_shard
            base = sizes[start - 1] if start else 0
            # this shard takes rows up to the first whose text fills it (all of them if none does)
            end = min(int(np.searchsorted(sizes[start:] - base, room)) + start + 1, len(table))
            self.pending.append(table.slice(start, end - start).cast(self.schema))
            self.pending_rows += end - start
            self.count += end - start
            self.bytes_in_shard += int(sizes[end - 1] - base)
            if self.bytes_in_shard >= self.shard_bytes:
                self._flush(everything=True)
                self._roll()
            elif self.pending_rows >= self.batch_rows:
                self._flush()
            start = end

    def _tabulate(self) -> None:
        if self.rows:
            self.pending.append(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _flush(self, everything: bool = False) -> None:
        """Write whole row groups of `batch_rows` (and, with `everything`, the rest as well)."""
        self._tabulate()
        n = self.pending_rows if everything else self.pending_rows - self.pending_rows % self.batch_rows
        if not n:
            return
        table = pa.concat_tables(self.pending)
        if self.writer is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self.prefix}-{self.index:05d}.parquet"
            # No dictionary and no min/max for the text: each is distinct and long, so both are work
            # for nothing, and without them writing takes half the time and reading a fifth.
            others = [name for name in self.schema.names if name != "text"]
            self.writer = pq.ParquetWriter(
                path, self.schema, compression="zstd", use_dictionary=others, write_statistics=others
            )
            self.paths.append(path)
        self.writer.write_table(table.slice(0, n), row_group_size=self.batch_rows)
        self.pending = [table.slice(n)] if n < len(table) else []
        self.pending_rows -= n

    def _roll(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.index += 1
        self.bytes_in_shard = 0

    def close(self) -> list[Path]:
        self._flush(everything=True)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.paths


def shard_paths(corpus: Artifact | Path, split: str) -> list[Path]:
    root = corpus.path if isinstance(corpus, Artifact) else Path(corpus)
    return sorted((root / "shards").glob(f"{split}-*.parquet"))


def count_documents(corpus: Artifact | Path, split: str) -> int:
    """How many documents a split holds, from the Parquet footers (no text is read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard_paths(corpus, split))


def text_bytes(corpus: Artifact | Path, split: str) -> int:
    """The size of a split's text column, uncompressed, from the Parquet footers (no text is read).

    UTF-8 plus Parquet's few bytes per value (lengths, page headers): a measure of the work ahead,
    not an exact count of the text's bytes (the manifest's `bytes_kept` is that, for the whole corpus).
    """
    total = 0
    for path in shard_paths(corpus, split):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            total += sum(
                group.column(c).total_uncompressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema == "text"
            )
    return total


def iter_documents(
    corpus: Artifact | Path, split: str, columns: tuple[str, ...] = ("text",), batch_size: int = 1024
) -> Iterator[dict]:
    """Yield each document of a split as a dict of the asked columns, in shard order."""
    for path in shard_paths(corpus, split):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns)):
            yield from batch.to_pylist()


def iter_texts(corpus: Artifact | Path, split: str) -> Iterator[str]:
    for doc in iter_documents(corpus, split, ("text",)):
        yield doc["text"]


def iter_dropped(
    corpus: Artifact | Path, columns: tuple[str, ...] = ("id", "step", "reason")
) -> Iterator[dict]:
    root = corpus.path if isinstance(corpus, Artifact) else Path(corpus)
    for path in sorted((root / "dropped").glob("*.parquet")):
        yield from pq.read_table(path, columns=list(columns)).to_pylist()
