"""Corpus → packed token files: `train.bin`/`val.bin`, read by numpy memmap.

Each split is one flat array of token ids (uint16 while the vocabulary fits, else uint32), every
document written as `<|bos|>` followed by its tokens, back to back, and `np.memmap` reads any slice
without loading the file. Training samples plain windows of the stream; a document's start is its
`<|bos|>`, so no separate index is kept.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from autarky.artifact import Artifact, Builder, compose_name, default_name
from autarky.console import UserError, console
from autarky.data.corpus import SPLITS, count_documents, iter_texts, text_bytes
from autarky.machine import available_cores
from autarky.tokenizer import Tokenizer
from autarky.train.config import TrainConfig

# A batch is this many documents or this much text, whichever comes first: enough work for every
# thread of the encoder, while one batch of long documents still fits easily in memory.
BATCH_DOCUMENTS = 256
BATCH_BYTES = 8 << 20
MIN_BATCH_BYTES = 64 << 10
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
    seq_len: int = TrainConfig.seq_len,
) -> Artifact:
    """Encode every document of the corpus's train and val splits into packed token files.

    A train split that cannot fill one training window of `seq_len` tokens (and the next token to
    predict) is refused with the way out, here rather than when training starts.

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
    if seq_len < 2:
        raise UserError(f"--seq-len {seq_len} must be 2 or more")
    counts = {split: count_documents(corpus, split) for split in SPLITS}
    for split, n in counts.items():
        if n == 0:
            raise UserError(
                f"corpus {corpus.name} has no {split} documents, and training needs both: curate it again "
                "with more documents, or with --val-split position to hold out the end of each document"
            )
    sizes = {split: text_bytes(corpus, split) for split in SPLITS}
    if workers is None:
        # Starting processes costs a second or two, more than they save on a few megabytes of text.
        workers = 1 if sum(sizes.values()) <= SMALL_CORPUS_BYTES else available_cores()

    tok = Tokenizer.load(tokenizer)
    dtype = dtype_for(tok.vocab_size)
    config = {"dtype": dtype, "document_start": tok.hf.id_to_token(tok.bos_id)}
    name = name or default_name(
        compose_name(corpus.name, tokenizer.name), "tokens", config, [corpus, tokenizer]
    )
    builder = Builder(workdir, "tokens", name, config, [corpus, tokenizer])
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing tokens {name} (same corpus, tokenizer and settings)")
        check_window(done.metrics, seq_len)
        return done

    with builder, _Encoder(tokenizer.path, dtype, workers) as encoder, _SplitProgress() as bar:
        metrics: dict = {"dtype": dtype, "vocab_size": tok.vocab_size}
        for split in SPLITS:
            bar.split(f"tokenizing {split}", sizes[split])
            metrics[split] = _write_split(corpus, split, encoder, builder.dir, bar)
        check_window(metrics, seq_len)
        builder.metrics = metrics
        return builder.finish()


def check_window(metrics: dict, seq_len: int) -> None:
    """Refuse a train split shorter than one window of `seq_len` tokens and the token after it, which
    is what `autarky train` samples (train/pretrain.py), with the ways out."""
    have = metrics["train"]["tokens"]
    if have > seq_len + 1:
        return
    shorter = 2 ** int(math.log2(have - 2)) if have >= 4 else 0
    raise UserError(
        f"the train split holds {have:,} tokens, fewer than one training window needs "
        f"(--seq-len {seq_len} + 1): curate more text"
        + (f", or tokenize and train with --seq-len {shorter}" if shorter >= 2 else "")
    )


def _write_split(corpus: Artifact, split: str, encoder: _Encoder, out: Path, bar: _SplitProgress) -> dict:
    """Stream one split into `{split}.bin`; return its counts."""
    documents = tokens = text_bytes = 0
    batches = _batches(iter_texts(corpus, split), bar.batch_bytes)
    with open(out / f"{split}.bin", "wb") as f:
        for flat, n_documents, nbytes in encoder.map(batches):
            f.write(flat.tobytes())
            documents += n_documents
            tokens += len(flat)
            text_bytes += nbytes
            bar.advance(nbytes, documents)
    bar.done()
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


def _batches(texts: Iterator[str], max_bytes: int = BATCH_BYTES) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if len(batch) >= BATCH_DOCUMENTS or size >= max_bytes:
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


class _SplitProgress:
    """The bar of one split at a time, in bytes of text: a batch of long documents moves it as far as
    many short ones, and batches are small enough (a 64th of the split, within bounds) that it moves
    even for a small corpus. The rate is the text encoded over the time since the split began, not
    rich's estimate from the last few updates, which reads absurd when finished batches of a pool
    arrive together."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: TaskID | None = None
        self.batch_bytes = BATCH_BYTES
        self.started = 0.0

    def __enter__(self) -> _SplitProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def split(self, description: str, total_bytes: int) -> None:
        self.task = self.bar.add_task(description, total=max(total_bytes, 1), rate="")
        self.batch_bytes = min(BATCH_BYTES, max(MIN_BATCH_BYTES, total_bytes // 64))
        self.started = time.perf_counter()

    def advance(self, nbytes: int, documents: int) -> None:
        assert self.task is not None
        self.bar.advance(self.task, nbytes)
        done = self.bar.tasks[self.task].completed
        rate = done / max(time.perf_counter() - self.started, 1e-6)
        speed = f"{rate / 1e6:,.1f} MB/s" if rate >= 1e6 else f"{rate / 1e3:,.0f} kB/s"
        self.bar.update(self.task, rate=f"{speed} · {documents:,} document" + "s" * (documents != 1))

    def done(self) -> None:
        assert self.task is not None
        self.bar.update(self.task, completed=self.bar.tasks[self.task].total)


# ---------------------------------------------------------------- reading back


def load_tokens(tokens: Artifact, split: str) -> np.memmap:
    """The split's flat token ids, memory-mapped read-only."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; a tokens artifact holds {', '.join(SPLITS)}")
    return np.memmap(tokens.path / f"{split}.bin", dtype=tokens.config["dtype"], mode="r")
