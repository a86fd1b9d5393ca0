"""Corpus → packed token files: `train.bin`/`val.bin`, read by numpy memmap.

Each split is one flat array of token ids (uint16 while the vocabulary fits, else uint32), every
document written as `<|bos|>` followed by its tokens, back to back, and `np.memmap` reads any slice
without loading the file. Training samples plain windows of the stream; a document's start is its
`<|bos|>`, so no separate index is kept.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.progress import ProgressColumn
from rich.text import Text

from autarky.artifact import Artifact, Builder, compose_name, default_name
from autarky.console import UserError, console, progress
from autarky.data.corpus import SPLITS, count_documents, iter_texts, text_bytes
from autarky.machine import available_cores
from autarky.tokenizer import Tokenizer

# A batch is this many documents or this much text, whichever comes first: enough work for every
# thread of the encoder, while one batch of long documents still fits easily in memory.
BATCH_DOCUMENTS = 256
BATCH_BYTES = 8 << 20
SMALL_CORPUS_BYTES = 8 << 20


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokenize(
    corpus: Artifact,
    tokenizer: Artifact,
    workdir: Path,
    name: str | None = None,
    workers: int | None = None,
    force: bool = False,
) -> Artifact:
    """Encode every document of the corpus's train and val splits into packed token files.

    `workers` processes encode batches of documents while this one reads the corpus and writes
    the files, so reading, encoding and writing overlap. On 2 cores, ruslit (64 MB) took 41 s with
    2 worker processes against 62–75 s encoding in this process on tokenizers' own thread pool,
    where the pool idles while this process reads and writes. A corpus under 8 MB of text is
    encoded in this process when `workers` is not given, as starting processes would cost more.
    The output is the same either way, so `workers` is not part of the recipe.
    """
    if corpus.kind != "corpus":
        raise UserError(f"{corpus.path} is a {corpus.kind}; tokenize needs a corpus first")
    if tokenizer.kind != "tokenizer":
        raise UserError(f"{tokenizer.path} is a {tokenizer.kind}; tokenize needs a tokenizer second")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} must be 1 or more")
    counts = {split: count_documents(corpus, split) for split in SPLITS}
    for split, n in counts.items():
        if n == 0:
            raise UserError(
                f"corpus {corpus.name} has no {split} documents; training needs both train and val"
            )
    if workers is None:
        # Starting processes costs a second or two, more than they save on a few megabytes of text.
        text = sum(text_bytes(corpus, split) for split in SPLITS)
        workers = 1 if text <= SMALL_CORPUS_BYTES else available_cores()

    tok = Tokenizer.load(tokenizer)
    dtype = dtype_for(tok.vocab_size)
    config = {"dtype": dtype, "document_start": tok.hf.id_to_token(tok.bos_id)}
    name = name or default_name(
        compose_name(corpus.name, tokenizer.name), "tokens", config, [corpus, tokenizer]
    )
    builder = Builder(workdir, "tokens", name, config, [corpus, tokenizer])
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing tokens {name} (same corpus, tokenizer and settings)")
        return done

    with builder, _Encoder(tokenizer.path, dtype, workers) as encoder, progress(RateColumn("docs")) as bar:
        metrics: dict = {"dtype": dtype, "vocab_size": tok.vocab_size}
        for split in SPLITS:
            task = bar.add_task(f"tokenizing {split}", total=counts[split])
            metrics[split] = _write_split(
                corpus, split, encoder, builder.dir, lambda n, task=task: bar.advance(task, n)
            )
        builder.metrics = metrics
        return builder.finish()


def _write_split(corpus: Artifact, split: str, encoder: _Encoder, out: Path, advance) -> dict:
    """Stream one split into `{split}.bin`; return its counts."""
    documents = tokens = text_bytes = 0
    with open(out / f"{split}.bin", "wb") as f:
        for flat, n_documents, nbytes in encoder.map(_batches(iter_texts(corpus, split))):
            f.write(flat.tobytes())
            documents += n_documents
            tokens += len(flat)
            text_bytes += nbytes
            advance(n_documents)
    text_tokens = tokens - documents  # the <|bos|> of each document stands for no text
    return {
        "documents": documents,
        "tokens": tokens,
        "bytes": text_bytes,
        "bytes_per_token": round(text_bytes / text_tokens, 4) if text_tokens else None,
    }


class _Encoder:
    """Batches of texts → (flat ids with a <|bos|> before each document, documents, UTF-8 bytes), in order.

    One worker: in this process. More: a pool of single-threaded processes, with at most two batches
    per worker in flight so memory stays bounded however large the corpus.
    """

    def __init__(self, tokenizer_path: Path, dtype: str, workers: int):
        self.tokenizer_path, self.dtype, self.workers = str(tokenizer_path), dtype, workers
        self.pool: ProcessPoolExecutor | None = None
        self.tokenizer: Tokenizer | None = None

    def __enter__(self) -> _Encoder:
        if self.workers == 1:
            self.tokenizer = Tokenizer.load(self.tokenizer_path)
        else:
            # spawn, not fork: a fork of a process whose tokenizers thread pool has run can deadlock.
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.tokenizer_path,),
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, batches: Iterator[list[str]]) -> Iterator[tuple[np.ndarray, int, int]]:
        if self.pool is None:
            assert self.tokenizer is not None
            for batch in batches:
                yield _encode(self.tokenizer, batch, self.dtype)
            return
        pending: deque[Future] = deque()
        for batch in batches:
            pending.append(self.pool.submit(_encode_in_worker, batch, self.dtype))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if len(batch) >= BATCH_DOCUMENTS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode(tok: Tokenizer, texts: list[str], dtype: str) -> tuple[np.ndarray, int, int]:
    bos = tok.bos_id
    docs = [np.asarray([bos, *ids], dtype=dtype) for ids in tok.encode_batch(texts)]
    return np.concatenate(docs), len(docs), sum(len(t.encode()) for t in texts)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: `workers` is the core count
    _worker_tokenizer = Tokenizer.load(tokenizer_path)


def _encode_in_worker(texts: list[str], dtype: str) -> tuple[np.ndarray, int, int]:
    assert _worker_tokenizer is not None
    return _encode(_worker_tokenizer, texts, dtype)


class RateColumn(ProgressColumn):
    """Items per second, for the progress bar."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed"
        )


# ---------------------------------------------------------------- reading back


def load_tokens(tokens: Artifact, split: str) -> np.memmap:
    """The split's flat token ids, memory-mapped read-only."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; a tokens artifact holds {', '.join(SPLITS)}")
    return np.memmap(tokens.path / f"{split}.bin", dtype=tokens.config["dtype"], mode="r")
