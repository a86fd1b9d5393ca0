"""The curation stage: source files in, a clean, deduplicated, fully accounted corpus artifact out.

Three passes, so that memory stays bounded and a killed run resumes where it stopped:

1. map, over batches of source files on an executor (executor.py: inline, a process pool or Ray):
   read → per-document steps (normalise, language, quality, PII) → a part file of kept documents
   with their text hash, and one of dropped documents. A finished batch leaves a marker; a re-run
   after a kill skips it.
2. dedup, over the compact keys of every kept document: the global steps (exact, then near), in
   one loop.
3. write: stream the parts again into `shards/{split}-*.parquet` and `dropped/*.parquet`.

Every document read ends in exactly one of the two, with the step and reason that dropped it, and
the manifest's counts add up: documents_in == documents_kept + documents_dropped. Files and archive
members passed over (unknown type, hidden, links out of the tree, unsafe member paths) are listed
with their reason; files that could not be read, or passed their budget, with theirs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import queue
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autarky.artifact import Artifact, Builder, default_name, write_json
from autarky.console import UserError, console, progress
from autarky.data.balance import cap_rows, carve_rows, share_cap
from autarky.data.config import CurateConfig
from autarky.data.corpus import DROPPED_SCHEMA, SCHEMA, ShardWriter, document_row
from autarky.data.dedup import ExactDedup, MinHashSignature, NearDedup, ShingleStore
from autarky.data.document import Document, text_hash
from autarky.data.executor import Executor
from autarky.data.filters import FineWebQuality, GopherQuality, GopherRepetition
from autarky.data.langid import LanguageFilter
from autarky.data.normalize import Normalize
from autarky.data.pii import RedactPII
from autarky.data.read import ReadCheck, Source, SourceError, find_sources, not_read, plural, read_source
from autarky.data.steps import GlobalStep, Step, StepStats, add_stats, run_steps

PART_SCHEMA = (
    SCHEMA.append(pa.field("_source", pa.int32()))
    .append(pa.field("_hash", pa.binary(16)))
    .append(pa.field("_bytes", pa.int64()))
)
# A batch of source files for one worker, the unit of parallelism and of resume: a 16th of the run,
# between these bounds, so that even a corpus of tens of MB keeps two workers busy to the end (each
# task costs the single-process write pass ~10 ms of opening its parts: a 64th cost ruslit 0.4 s more).
TASK_BYTES = 16 << 20
MIN_TASK_BYTES = 1 << 20
TASK_FILES = 256
MAX_LISTED = 100  # errors and passed-over files the manifest lists (stats.json lists them all)
LARGEST = 10  # documents and sources the manifest and report name, the longest first


def parse_tags(items: list[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """`--tag key=value` (every document) and `--tag SRC::key=value` (the documents of source SRC).

    Split at the first `=`: the value is everything after it, `::` and `=` included (a URL, a
    namespace); a scope is taken from the key side only.
    """
    tags: dict[str, str] = {}
    source_tags: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        scope, _, key = target.rpartition("::")
        if not sep or not key:
            raise UserError(f"--tag takes key=value or SRC::key=value, not {item!r}")
        (source_tags.setdefault(str(Path(scope)), {}) if scope else tags)[key] = value
    return tags, source_tags


def build_steps(config: CurateConfig) -> list[Step]:
    """The per-document steps, in order; every one but `read` can be turned off in the config."""
    steps: list[Step] = [ReadCheck(config.max_document_chars)]
    if config.normalize:
        steps.append(Normalize(fix_mojibake=config.fix_mojibake))
    if config.langid:
        steps.append(
            LanguageFilter(
                config.languages, config.language_min_score, config.language_thresholds, config.langid_chars
            )
        )
    if config.gopher_repetition:
        steps.append(GopherRepetition(config.quality_thresholds, config.quality_scope))
    if config.fineweb_quality:
        steps.append(FineWebQuality(config.quality_thresholds, config.quality_scope))
    if config.gopher_quality:
        steps.append(GopherQuality(config.quality_thresholds, config.quality_scope))
    if config.pii:
        steps.append(RedactPII())
    if config.near_dedup:
        steps.append(MinHashSignature(config.hasher))  # last: it signs the text as it will be kept
    return steps


# ------------------------------------------------------------------ pass 1: map over source batches


@dataclass(frozen=True)
class Task:
    index: int
    sources: tuple[tuple[int, Source], ...]  # (position in the run's source list, source)
    config: CurateConfig
    parts: str  # the staging directory

    @property
    def key(self) -> str:
        digest = hashlib.sha256("".join(s.sha256 + str(s.copy) for _, s in self.sources).encode()).hexdigest()
        return f"{self.index:05d}-{digest[:12]}"

    @property
    def bytes(self) -> int:
        return sum(s.bytes for _, s in self.sources)


def plan_tasks(sources: list[Source], config: CurateConfig, parts: Path) -> list[Task]:
    """Consecutive batches of up to a 16th of the bytes (within MIN_TASK_BYTES..TASK_BYTES) and TASK_FILES.

    They depend on the sources alone, never on the workers, so resume finds them and any number of
    workers makes the same parts.
    """
    limit = min(TASK_BYTES, max(MIN_TASK_BYTES, sum(s.bytes for s in sources) // 16))
    tasks, batch, size = [], [], 0
    for i, source in enumerate(sources):
        if batch and (size + source.bytes > limit or len(batch) >= TASK_FILES):
            tasks.append(Task(len(tasks), tuple(batch), config, str(parts)))
            batch, size = [], 0
        batch.append((i, source))
        size += source.bytes
    if batch:
        tasks.append(Task(len(tasks), tuple(batch), config, str(parts)))
    return tasks


class TaskParts:
    """What one task leaves in the staging directory: kept rows (with their source and text hash),
    dropped rows, and the MinHash signatures of the kept ones."""

    def __init__(self, task: Task) -> None:
        parts = Path(task.parts)
        self.kept = ShardWriter(parts, f"{task.key}.kept", PART_SCHEMA, shard_bytes=1 << 62)
        self.dropped = ShardWriter(parts, f"{task.key}.dropped", DROPPED_SCHEMA, shard_bytes=1 << 62)
        self.signatures: list[np.ndarray] | None = [] if task.config.near_dedup else None
        self.signature_path = parts / f"{task.key}.sig.npy"
        self.signature_size = task.config.hasher.size

    def keep(self, doc: Document, position: int) -> None:
        row = {**document_row(doc), "_source": position, "_hash": text_hash(doc.text)}
        self.kept.write(row | {"_bytes": len(doc.text.encode())})
        if self.signatures is not None:
            self.signatures.append(doc.cache["signature"])

    def drop(self, doc: Document, step: str, reason: str) -> None:
        self.dropped.write({**document_row(doc), "step": step, "reason": reason})

    def close(self) -> dict:
        if self.signatures is not None:
            empty = np.zeros((0, self.signature_size), dtype=np.uint64)
            np.save(self.signature_path, np.stack(self.signatures) if self.signatures else empty)
        return {
            "kept_files": [p.name for p in self.kept.close()],
            "dropped_files": [p.name for p in self.dropped.close()],
        }


class Timed:
    """Counts and times the items an iterator yields: reading is a step too, and is reported as one."""

    def __init__(self) -> None:
        self.count, self.seconds = 0, 0.0

    def over(self, items: Iterator) -> Iterator:
        while True:
            start = time.perf_counter()
            item = next(items, None)
            self.seconds += time.perf_counter() - start
            if item is None:
                return
            self.count += 1
            yield item

    def stats(self) -> StepStats:
        return StepStats({"total": self.count, "forwarded": self.count}, self.seconds)


def process_source(
    position: int, source: Source, config: CurateConfig, steps: list[Step], parts: TaskParts, timed: Timed
) -> dict:
    """Read one source through the steps into the task's parts; returns its accounting."""
    entry: dict = {
        "documents": 0,
        "kept": 0,
        "dropped": Counter(),
        "error": None,
        "skipped": [],
        "warnings": [],
    }
    try:
        for doc in timed.over(read_source(source, config.read_options, entry["skipped"], entry["warnings"])):
            entry["documents"] += 1
            out, step, reason = run_steps(doc, steps)
            if out is None:
                parts.drop(doc, step, reason)
                entry["dropped"][f"{step}/{reason}"] += 1
            else:
                parts.keep(out, position)
                entry["kept"] += 1
    except SourceError as e:
        entry["error"] = str(e)
    except Exception as e:  # a reader library failing on a damaged file must not stop the run
        entry["error"] = f"{type(e).__name__}: {e}"[:300]
    return entry


def process_task(task: Task) -> dict:
    """Read and filter one batch of sources into part files; returns (and leaves on disk) its accounting."""
    marker = Path(task.parts) / f"{task.key}.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    cpu_start = time.process_time()
    steps = build_steps(task.config)
    parts, timed = TaskParts(task), Timed()
    per_source = {
        str(position): process_source(position, source, task.config, steps, parts, timed)
        for position, source in task.sources
    }
    stats = {"extract": timed.stats()} | {s.name: s.report() for s in steps}
    summary = {
        "key": task.key,
        **parts.close(),
        "sources": per_source,
        "steps": {name: s.as_dict() for name, s in stats.items()},
        "cpu_seconds": time.process_time() - cpu_start,
    }
    write_json(marker, summary)
    return summary


# ------------------------------------------------------------------ pass 2: the global steps


def read_keys(parts: Path, summaries: list[dict]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The text hash, source position and UTF-8 length of every document kept by pass 1, in global order."""
    hashes: list[bytes] = []
    positions: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for summary in summaries:
        for name in summary["kept_files"]:
            table = pq.read_table(parts / name, columns=["_hash", "_source", "_bytes"])
            hashes += table.column("_hash").to_pylist()
            positions.append(table.column("_source").to_numpy())
            sizes.append(table.column("_bytes").to_numpy())
    if not positions:
        return hashes, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    return hashes, np.concatenate(positions), np.concatenate(sizes)


def _near_dedup(
    near: NearDedup, parts: Path, summaries: list[dict], alive: np.ndarray, copies: np.ndarray
) -> None:
    """Band keys part by part from memory-mapped signatures; the text again only for candidate pairs."""
    sigs = [np.load(parts / f"{s['key']}.sig.npy", mmap_mode="r") for s in summaries]
    offsets = np.cumsum([0] + [len(x) for x in sigs])
    keys, index = [], []
    for sig, offset in zip(sigs, offsets[:-1], strict=True):
        rows = np.flatnonzero(alive[offset : offset + len(sig)])
        if len(rows):
            chosen = np.asarray(sig[rows])
            has_words = chosen[:, 0] != np.uint64(2**64 - 1)
            keys.append(near.hasher.band_keys(chosen[has_words]))
            index.append(rows[has_words] + offset)

    def shingles(indices: np.ndarray) -> ShingleStore:
        texts = _kept_texts(parts, summaries, offsets, indices)
        return ShingleStore(parts / "shingles.bin", near.hasher, texts)

    if keys:
        near.select(np.concatenate(keys), np.concatenate(index), shingles, alive, copies)
    else:
        near.count(0, {}, 0.0)


def _kept_texts(
    parts: Path, summaries: list[dict], offsets: np.ndarray, indices: np.ndarray
) -> Iterator[tuple[int, str]]:
    """(index, text) of the kept documents `indices` (sorted), reading only the row groups that hold one."""
    part_of = np.searchsorted(offsets, indices, side="right") - 1
    for p in np.unique(part_of):
        wanted, row = indices[part_of == p] - offsets[p], 0
        for name in summaries[p]["kept_files"]:
            file = pq.ParquetFile(parts / name)
            for group in range(file.num_row_groups):
                size = file.metadata.row_group(group).num_rows
                inside = wanted[(wanted >= row) & (wanted < row + size)]
                if len(inside):
                    texts = file.read_row_group(group, columns=["text"]).column("text").take(inside - row)
                    yield from zip((inside + offsets[p]).tolist(), texts.to_pylist(), strict=True)
                row += size


Select = Callable[[np.ndarray, np.ndarray], None]  # clears `alive` for what it drops, adds to `copies`


def global_steps(
    config: CurateConfig, hashes: list[bytes], parts: Path, summaries: list[dict]
) -> list[tuple[GlobalStep, Select]]:
    """The steps that see every kept document at once, in order, each with how it runs."""
    steps: list[tuple[GlobalStep, Select]] = []
    if config.exact_dedup:
        exact = ExactDedup(hashes)
        steps.append((exact, exact.select))
    if config.near_dedup:
        near = NearDedup(config.hasher, config.near_dup_threshold)
        steps.append((near, lambda alive, copies: _near_dedup(near, parts, summaries, alive, copies)))
    return steps


@dataclass
class Verdicts:
    """What pass 2 decided for every document kept by pass 1, in global order."""

    alive: np.ndarray  # still kept
    copies: np.ndarray  # how many documents each kept one stands for
    code: np.ndarray  # 0 kept, else the index in `reasons` of the step that dropped it
    reasons: list[tuple[str, str]]  # (step, reason); [0] is the kept placeholder
    val: np.ndarray  # kept and in the val split (a document split)
    position: bool = False  # val is the end of every kept document's text instead
    cap: int = 0  # kept documents longer than this many bytes are cut to it (0: none)


def deduplicate(
    config: CurateConfig,
    hashes: list[bytes],
    sizes: np.ndarray,
    parts: Path,
    summaries: list[dict],
    stats: dict[str, StepStats],
) -> Verdicts:
    """Pass 2: the global steps, then the split and the cap of any document over its share."""
    alive = np.ones(len(hashes), dtype=bool)
    copies = np.ones(len(hashes), dtype=np.int32)
    code = np.zeros(len(hashes), dtype=np.int8)
    reasons = [("", "")]
    for step, select in global_steps(config, hashes, parts, summaries):
        before = alive.copy()
        select(alive, copies)
        reasons.append((step.name, step.reason))
        code[before & ~alive] = len(reasons) - 1
        stats[step.name] = step.report()
    kept = int(alive.sum())
    position = config.val_split == "position" or (config.val_split == "auto" and kept == 1)
    val = np.zeros_like(alive) if position else assign_splits(hashes, alive, config.val_fraction)
    cap = share_cap(sizes[alive], config.max_doc_share) if config.cap_doc_share and kept >= 2 else 0
    return Verdicts(alive, copies, code, reasons, val, position, cap)


def assign_splits(hashes: list[bytes], alive: np.ndarray, val_fraction: float) -> np.ndarray:
    """True where a kept document goes to val: by its text hash, so the same text always lands alike.

    With two or more documents, at least one goes to val and at least one stays in train.
    """
    u = np.array([int.from_bytes(h[8:16], "big") for h in hashes], dtype=np.float64) / 2.0**64
    val = alive & (u < val_fraction)
    live = np.flatnonzero(alive)
    if len(live) >= 2:
        if not val.any():
            val[live[np.argmin(u[live])]] = True
        if val[live].all():
            val[live[np.argmax(u[live])]] = False
    return val


# ------------------------------------------------------------------ pass 3: write the corpus


class CorpusWriter:
    """The artifact's shards (train, val) and dropped rows, written from the parts and the verdicts;
    on the way, the lengths, languages and longest of the kept documents, and their bytes per source."""

    def __init__(self, out: Path, verdicts: Verdicts, config: CurateConfig, sources: int) -> None:
        self.v, self.val_fraction = verdicts, config.val_fraction
        self.train = ShardWriter(out / "shards", "train", SCHEMA, config.shard_bytes)
        self.val = ShardWriter(out / "shards", "val", SCHEMA, config.shard_bytes)
        self.dropped = ShardWriter(out / "dropped", "dropped", DROPPED_SCHEMA, config.shard_bytes)
        self.step_names = pa.array([step for step, _ in verdicts.reasons], pa.string())
        self.reason_names = pa.array([reason for _, reason in verdicts.reasons], pa.string())
        self.langs: list[pa.Array] = []
        self.sizes: list[np.ndarray] = []
        self.source_bytes = np.zeros(sources, dtype=np.int64)
        self.largest: list[tuple[int, str, str]] = []  # (bytes, id, source), the longest first
        self.capped: list[dict] = []
        self.done = 0  # part rows written: the global index of the next one

    def write_parts(self, parts: Path, summaries: list[dict]) -> None:
        """Every part's rows in order, read a few batches ahead in a thread: Parquet unpacks and packs
        with the GIL released, so on two cores the reading and the writing overlap."""
        for kept, rows in prefetched(_part_batches(parts, summaries)):
            if kept:
                self._write_kept(rows)
            else:
                self.dropped.write_table(rows)

    def _write_kept(self, rows: pa.Table) -> None:
        """Rows of pass 1: to train or val with their cluster size, or to dropped with pass 2's reason."""
        where = slice(self.done, self.done + len(rows))
        self.done += len(rows)
        live, to_val, code = self.v.alive[where], self.v.val[where], self.v.code[where]
        positions = rows.column("_source").to_numpy()[live]
        rows = rows.drop_columns(["_source", "_hash", "_bytes"])
        kept = _rows_where(rows, live)
        kept = kept.set_column(
            SCHEMA.get_field_index("dup_cluster_size"),
            "dup_cluster_size",
            pa.array(self.v.copies[where][live], pa.int32()),
        )
        if self.v.cap:
            kept, cut = cap_rows(kept, self.v.cap)
            self.capped += cut
        self._count(kept, positions)
        if self.v.position:
            train, val = carve_rows(kept, self.val_fraction)
        else:
            split = pa.array(np.where(to_val[live], "val", "train"))
            kept = kept.set_column(SCHEMA.get_field_index("split"), "split", split)
            train, val = _rows_where(kept, ~to_val[live]), _rows_where(kept, to_val[live])
        self.train.write_table(train)
        self.val.write_table(val)
        gone = pa.array(code[~live])
        self.dropped.write_table(
            _rows_where(rows, ~live)
            .append_column("step", pc.take(self.step_names, gone))
            .append_column("reason", pc.take(self.reason_names, gone))
        )

    def _count(self, kept: pa.Table, positions: np.ndarray) -> None:
        """Languages, lengths, bytes per source and the longest of the kept documents, as written."""
        sizes = pc.binary_length(kept.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)
        self.langs += kept.column("lang").chunks
        self.sizes.append(sizes)
        np.add.at(self.source_bytes, positions, sizes)
        ids, sources = kept.column("id"), kept.column("source")
        longest = np.argsort(-sizes, kind="stable")[:LARGEST].tolist()
        candidates = self.largest + [(int(sizes[i]), ids[i].as_py(), sources[i].as_py()) for i in longest]
        self.largest = sorted(candidates, key=lambda r: (-r[0], r[1]))[:LARGEST]

    def close(self) -> np.ndarray:
        """Finish the files; returns the UTF-8 length of every kept document."""
        for writer in (self.train, self.val, self.dropped):
            writer.close()
        return np.concatenate(self.sizes).astype(np.int64) if self.sizes else np.zeros(0, dtype=np.int64)


def _part_batches(parts: Path, summaries: list[dict]) -> Iterator[tuple[bool, pa.Table]]:
    """(kept?, rows) of every part in the order pass 2 numbered them: a task's dropped rows, then its kept."""
    for summary in summaries:
        for kept, key in ((False, "dropped_files"), (True, "kept_files")):
            for name in summary[key]:
                for batch in pq.ParquetFile(parts / name).iter_batches(batch_size=1024):
                    yield kept, pa.Table.from_batches([batch])


def prefetched(items: Iterator, depth: int = 4) -> Iterator:
    """`items`, produced by a thread up to `depth` ahead; its error raised here; it stops when we do."""
    ready: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def put(item: tuple) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put((item, None))
            put((end, None))
        except BaseException as e:  # raised again in the consumer
            put((end, e))

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def _rows_where(rows: pa.Table, mask: np.ndarray) -> pa.Table:
    """The rows where `mask` holds; without copying their text when it holds for all or none (most batches)."""
    if mask.all():
        return rows
    if not mask.any():
        return rows.slice(0, 0)
    return rows.filter(pa.array(mask))


# ------------------------------------------------------------------ the stage


def curate(
    sources: list[Path],
    workdir: Path,
    name: str | None = None,
    config: CurateConfig | None = None,
    force: bool = False,
    workers: int | None = None,
    engine: str = "local",
    ray_address: str = "",
) -> Artifact:
    """Curate source files and directories into a corpus artifact under `<workdir>/corpus/<name>`.

    A re-run with the same sources (by content) and config returns the artifact already made.
    `workers`, `engine` ("local" process pool or "ray") and `ray_address` change how fast, never what is made.
    """
    config = config or CurateConfig()
    executor = Executor(engine, workers or 0, ray_address or "")
    executor.validate()
    config.validate()
    config_dict = asdict(config)
    found, skipped, errors = find_sources(
        [Path(s) for s in sources], config.tags, config.source_tags, config.follow_links
    )
    entries = [{"path": s.path, "sha256": s.sha256, "bytes": s.bytes} for s in found]
    name = name or default_name(name_prefix(sources), "corpus", config_dict, [], entries)
    builder = Builder(Path(workdir), "corpus", name, config_dict, sources=entries)
    old = builder.existing(force)
    if old is not None:
        console.print(f"corpus [bold]{name}[/] is already made from these sources and settings: reusing it")
        return old
    # absolute: workers (forkserver, Ray) need not share this process's working directory
    parts = (Path(workdir) / "corpus" / f".parts-{builder.recipe.split(':')[1][:16]}").absolute()
    parts.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with builder:
            summaries = _map(found, config, parts, executor)
            cpu_start = time.process_time()
            metrics, lengths = _assemble(
                builder.dir, found, entries, summaries, errors, skipped, config, parts
            )
            metrics["seconds"] = round(time.perf_counter() - start, 3)
            # CPU seconds of every worker and of this process's dedup and writing: cost, whatever the load
            metrics["cpu_seconds"] = round(
                sum(s["cpu_seconds"] for s in summaries) + time.process_time() - cpu_start, 3
            )
            _write_stats(builder.dir, metrics, skipped)
            metrics["errors"] = errors[:MAX_LISTED]  # stats.json lists them all
            metrics["skipped"] = skipped[:MAX_LISTED]
            metrics["reader_warnings"] = metrics["reader_warnings"][:MAX_LISTED]
            builder.metrics = metrics
            from autarky.data.report import write_report

            write_report(builder.dir, metrics, lengths)
            artifact = builder.finish()
    except (UserError, AssertionError):  # staging that broke the accounting must not be replayed
        shutil.rmtree(parts, ignore_errors=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)
    return artifact


def name_prefix(sources: list[Path]) -> str:
    first = Path(sources[0])
    while glob.has_magic(str(first)):
        first = first.parent
    first = first.resolve()
    stem = first.name if first.is_dir() else first.parent.name or first.stem
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-") or "corpus"


def _write_stats(out: Path, metrics: dict, skipped: list[dict]) -> None:
    """stats.json: the metrics without timings, so the same inputs give the same bytes and the same id."""
    stats = {k: v for k, v in metrics.items() if k not in ("seconds", "cpu_seconds", "steps")}
    stats["steps"] = {k: v["stats"] for k, v in metrics["steps"].items()}
    stats["skipped"] = skipped
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")


def _map(found: list[Source], config: CurateConfig, parts: Path, executor: Executor) -> list[dict]:
    tasks = plan_tasks(found, config, parts)
    total_bytes = sum(t.bytes for t in tasks)
    from rich.progress import TextColumn

    with progress(TextColumn("{task.fields[rate]}")) as bar:
        job = bar.add_task("curate", total=len(found), rate="")
        done_bytes, started = 0, time.perf_counter()

        def on_done(task: Task) -> None:
            nonlocal done_bytes
            done_bytes += task.bytes
            rate = done_bytes / max(time.perf_counter() - started, 1e-9) / 1e6
            bar.update(job, advance=len(task.sources), rate=f"{rate:.1f} MB/s of {total_bytes / 1e6:.0f} MB")

        # the largest first, so that no big batch starts last and leaves the other workers idle
        order = sorted(tasks, key=lambda t: -t.bytes)
        results = executor.run(process_task, order, on_done)
        return [r for _, r in sorted(zip(order, results, strict=True), key=lambda pair: pair[0].index)]


def _gather(
    found: list[Source], summaries: list[dict], errors: list[dict], skipped: list[dict]
) -> tuple[list[dict], dict[str, StepStats], list[dict]]:
    """Pass 1's accounting per source and per step, and what reader libraries warned about; its read
    errors and passed-over members are appended to `errors` and `skipped`."""
    stats: dict[str, StepStats] = {}
    per_source = [{"documents": 0, "kept": 0, "dropped": Counter()} for _ in found]
    warnings: list[dict] = []
    for summary in summaries:
        stats = add_stats(stats, {k: StepStats.from_dict(v) for k, v in summary["steps"].items()})
        for position, entry in summary["sources"].items():
            acc = per_source[int(position)]
            acc["documents"] += entry["documents"]
            acc["dropped"].update(entry["dropped"])
            skipped += entry["skipped"]
            warnings += entry["warnings"]
            if entry["error"]:
                errors.append({"path": found[int(position)].path, "reason": entry["error"]})
    return per_source, stats, warnings


def _count_global_drops(per_source: list[dict], positions: np.ndarray, v: Verdicts) -> None:
    """Per source, what pass 2 kept and dropped: counted from the keys, without the rows."""
    for position, n in enumerate(np.bincount(positions[v.alive], minlength=len(per_source)).tolist()):
        per_source[position]["kept"] = n
    for code, (step, reason) in enumerate(v.reasons[1:], 1):
        counts = np.bincount(positions[v.code == code], minlength=len(per_source))
        for position in np.flatnonzero(counts).tolist():
            per_source[position]["dropped"][f"{step}/{reason}"] += int(counts[position])


def _assemble(
    out: Path,
    found: list[Source],
    entries: list[dict],
    summaries: list[dict],
    errors: list[dict],
    skipped: list[dict],
    config: CurateConfig,
    parts: Path,
) -> tuple[dict, list[int]]:
    """Dedup, split and write the shards; fill the manifest's source entries; return metrics and lengths."""
    per_source, stats, warnings = _gather(found, summaries, errors, skipped)
    hashes, positions, sizes = read_keys(parts, summaries)
    verdicts = deduplicate(config, hashes, sizes, parts, summaries, stats)
    _count_global_drops(per_source, positions, verdicts)
    writer = CorpusWriter(out, verdicts, config, len(found))
    writer.write_parts(parts, summaries)
    lengths = writer.close()
    counts = {"train": writer.train.count, "val": writer.val.count, "dropped": writer.dropped.count}
    counts["kept"] = counts["train"] if verdicts.position else counts["train"] + counts["val"]
    metrics = _metrics(found, per_source, counts, errors, skipped, stats)
    if not counts["val"]:
        raise UserError(_no_val(config, counts["kept"], verdicts.position))
    metrics["val_split"] = "position" if verdicts.position else "document"
    metrics["bytes_kept"] = int(lengths.sum())
    metrics.update(_shares(writer, found, metrics, config))
    metrics["languages"] = _languages(pa.chunked_array(writer.langs, pa.string()), lengths)
    metrics["reader_warnings"] = warnings
    metrics["files_skipped"] = len(skipped)
    metrics["skipped_by_reason"] = dict(Counter(s["reason"] for s in skipped).most_common())
    metrics["length_bytes"] = _length_summary(lengths)
    for entry, acc in zip(entries, per_source, strict=True):
        entry["documents"] = acc["documents"]
    by_path = {entry["path"]: entry for entry in entries}
    for error in errors:
        if error["path"] in by_path:
            by_path[error["path"]]["error"] = error["reason"]
    return metrics, lengths.tolist()


def _no_val(config: CurateConfig, kept: int, position: bool) -> str:
    """Why the val split is empty, and the way out: training needs one to measure itself on."""
    what = f"the val split is empty ({plural(kept, 'document')} kept, --val-split {config.val_split}"
    what += f", --val-fraction {config.val_fraction}); training needs one: "
    if not position:
        return what + "add documents, or --val-split position to hold out the end of each document's text"
    if config.val_fraction == 0:
        return what + "give --val-fraction above 0, e.g. 0.1"
    return what + "the documents are too short to hold out the end of one; add text"


def _shares(writer: CorpusWriter, found: list[Source], metrics: dict, config: CurateConfig) -> dict:
    """The longest documents and sources with their share of the kept text, redactions per kind, what
    was capped, and a warning for every document above --max-doc-share (and above an even share:
    each of three documents is a third of the corpus, and no warning tells a user anything there)."""
    total = max(metrics["bytes_kept"], 1)
    largest = [
        {"source": source, "id": id_, "bytes": n, "share": round(n / total, 4)}
        for n, id_, source in writer.largest
    ]
    for source, n in zip(found, writer.source_bytes.tolist(), strict=True):
        metrics["sources"][source.path]["bytes"] = n
    by_bytes = sorted(metrics["sources"].items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))[:LARGEST]
    warnings = [
        f"{d['source']} ({d['id']}) is {d['share']:.1%} of the kept text, over --max-doc-share "
        f"{config.max_doc_share}: --cap-doc-share cuts it down to that share"
        for d in largest
        if not writer.v.cap and d["share"] > max(config.max_doc_share, 1 / metrics["documents_kept"])
    ]
    pii = metrics["steps"].get("pii", {}).get("stats", {})
    return {
        "largest_documents": largest,
        "largest_sources": [
            {"path": path, "documents": v["kept"], "bytes": v["bytes"], "share": round(v["bytes"] / total, 4)}
            for path, v in by_bytes
        ],
        "redacted": {
            k.removeprefix("redacted_"): n for k, n in sorted(pii.items()) if k.startswith("redacted_")
        },
        "capped": {"bytes": writer.v.cap, "documents": writer.capped} if writer.v.cap else {},
        "warnings": warnings,
    }


# The setting that decides what a step drops, for the message of a run that kept nothing.
DROP_WAY_OUT = {
    "language": "--lang chooses the languages kept",
    "gopher_quality": "--quality off turns the quality heuristics off",
    "gopher_repetition": "--quality off turns the quality heuristics off",
    "fineweb_quality": "--quality off turns the quality heuristics off",
}


def _nothing_kept(
    documents_in: int, files: int, by_reason: dict, skipped: list[dict], errors: list[dict]
) -> str:
    """Why a run kept no document, and what to change: one sentence for the user."""
    dropped = ", ".join(f"{n} {step}/{r}" for step, rs in by_reason.items() for r, n in rs.items())
    clauses = [f"dropped {dropped}"] if dropped else []
    if skipped or errors:
        clauses.append(not_read(skipped, errors))
    clauses += sorted({DROP_WAY_OUT[step] for step in by_reason if step in DROP_WAY_OUT})
    read = f"read {plural(documents_in, 'document')} from {plural(files + len(skipped), 'file')}"
    return f"{read} and kept none: " + "; ".join(clauses)


def _metrics(
    found: list[Source],
    per_source: list[dict],
    counts: dict,
    errors: list[dict],
    skipped: list[dict],
    stats: dict[str, StepStats],
) -> dict:
    """The manifest's accounting; checks that every document read was kept or dropped."""
    by_reason: dict[str, dict[str, int]] = {}
    for acc in per_source:
        for key, n in acc["dropped"].items():
            step, reason = key.split("/", 1)
            by_reason.setdefault(step, {}).setdefault(reason, 0)
            by_reason[step][reason] += n
    documents_in = sum(acc["documents"] for acc in per_source)
    kept = counts["kept"]
    if documents_in != kept + counts["dropped"]:  # the pipeline's own invariant, not a user error
        raise AssertionError(f"accounting: {documents_in} read != {kept} kept + {counts['dropped']} dropped")
    if kept == 0:
        raise UserError(_nothing_kept(documents_in, len(found), by_reason, skipped, errors))
    return {
        "documents_in": documents_in,
        "documents_kept": kept,
        "documents_dropped": counts["dropped"],
        "dropped": by_reason,
        "splits": {"train": counts["train"], "val": counts["val"]},
        "bytes_in": sum(s.bytes for s in found),
        "sources": {
            s.path: {"documents": acc["documents"], "kept": acc["kept"], "dropped": dict(acc["dropped"])}
            for s, acc in zip(found, per_source, strict=True)
        },
        "files_read": len(found),
        "files_failed": len(errors),
        "errors": errors,
        "steps": {name: s.as_dict() for name, s in stats.items()},
    }


def _languages(langs: pa.ChunkedArray, sizes: np.ndarray) -> dict[str, dict]:
    """{lang: {documents, bytes}} of the kept documents, the most text first (`und`: not identified)."""
    langs = pc.fill_null(langs, "")
    langs = pc.if_else(pc.equal(langs, ""), pa.scalar("und"), langs)
    table = (
        pa.table({"lang": langs, "size": sizes})
        .group_by("lang")
        .aggregate([("size", "count"), ("size", "sum")])
    )
    rows = zip(
        table.column("lang").to_pylist(),
        table.column("size_count").to_pylist(),
        table.column("size_sum").to_pylist(),
        strict=True,
    )
    ranked = sorted(rows, key=lambda r: (-r[2], r[0]))
    return {lang: {"documents": n, "bytes": size} for lang, n, size in ranked}


def _length_summary(arr: np.ndarray) -> dict:
    if not len(arr):
        return {}
    qs = np.percentile(arr, [5, 25, 50, 75, 95]).round().astype(int).tolist()
    return {
        "min": int(arr.min()),
        "p5": qs[0],
        "p25": qs[1],
        "median": qs[2],
        "p75": qs[3],
        "p95": qs[4],
        "max": int(arr.max()),
    }
