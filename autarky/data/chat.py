"""Chat data: conversations in JSON lines → a chat corpus artifact, every conversation kept or dropped.

Each line is one conversation, in OpenAI's format `{"messages": [{"role": ..., "content": ...}]}`
or the instruction format `{"instruction", "input", "output"}` (Alpaca's), which becomes a user turn
(the instruction, then the input) and an assistant turn (the output). A conversation is kept when
every role is system, user or assistant, a system message comes only first, and the turns go user,
assistant, user, assistant, ... ending with the assistant: that is what fine-tuning learns from.
Each message is normalised and its personal data redacted as curate does a document (normalize.py,
pii.py); repeated conversations are dropped, the first kept; the split is by content hash, as
curate's, so the same conversation always lands in the same split.

The artifact (kind `chat`) holds `shards/{train,val}-00000.parquet`, one row per conversation with
`messages` as a list of {role, content} (OpenAI's shape, which pyarrow, pandas and HF `datasets`
read as is), and `dropped/dropped-00000.parquet` with each dropped line's reason and its text
(redacted, cut); the manifest counts conversations in, kept and dropped by reason, and they add up.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from autarky.artifact import Artifact, Builder, default_name
from autarky.console import UserError, console
from autarky.data.config import ChatConfig
from autarky.data.document import Document, document_id, text_hash, valid_unicode
from autarky.data.normalize import Normalize
from autarky.data.pii import redact
from autarky.data.read import Source, find_sources

ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".ndjson")
DROPPED_TEXT_CHARS = 2_000  # of a dropped line, kept to show what it was
MAX_LISTED = 100

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("format", pa.string()),  # messages or instruction: what the line was written in
        ("source", pa.string()),
        ("source_sha256", pa.string()),
        ("line", pa.int64()),
        ("split", pa.string()),
        ("meta", pa.string()),  # JSON object: redactions per kind
    ]
)
DROPPED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_sha256", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("text", pa.string()),
    ]
)


# ------------------------------------------------------------------ one conversation


def content_text(content) -> str | None:
    """A message's text: a string, or OpenAI's list of text parts joined; None for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def messages_of(record) -> tuple[list[dict], str] | str:
    """(messages, format) of one parsed line, or the reason it is no conversation."""
    if not isinstance(record, dict):
        return "not_an_object"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "no_messages"
        return messages, "messages"
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            return "bad_content"
        prompt = f"{record['instruction']}\n\n{extra}" if extra.strip() else record["instruction"]
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        return turns, "instruction"
    return "unknown_format"


def check_turns(messages: list) -> list[dict] | str:
    """The messages as {role, content}, or why they are no conversation to learn from.

    Roles must be system (first only), then user and assistant in turn, ending with the assistant.
    """
    out, turns = [], 0  # user and assistant messages so far
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            return "unknown_role"
        text = content_text(message.get("content"))
        if text is None:
            return "bad_content"
        if role == "system" and i > 0:
            return "system_not_first"
        if role != "system":
            expected = ("user", "assistant")[turns % 2]
            if role != expected:
                return "user_missing" if expected == "user" else "assistant_missing"
            turns += 1
        out.append({"role": role, "content": text})
    if out[-1]["role"] != "assistant":
        return "assistant_missing"
    return out


class Cleaner:
    """Normalises and redacts every message as curate does a document."""

    def __init__(self, config: ChatConfig):
        self.config = config
        self.normalize = Normalize() if config.normalize else None

    def text(self, text: str) -> tuple[str, dict[str, int]]:
        text = valid_unicode(text)
        if self.normalize is not None:
            text = self.normalize.transform(Document("", text, "", "")).text
        counts: dict[str, int] = {}
        if self.config.pii:
            text, counts = redact(text)
        return text, counts

    def conversation(self, messages: list[dict]) -> tuple[list[dict], dict[str, int]] | str:
        cleaned, found = [], Counter()
        for m in messages:
            text, counts = self.text(m["content"])
            if not text.strip():
                return "empty_message"
            found.update(counts)
            cleaned.append({"role": m["role"], "content": text})
        if sum(len(m["content"]) for m in cleaned) > self.config.max_chars:
            return "too_long"
        return cleaned, dict(found)


# ------------------------------------------------------------------ reading


def lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each non-blank line; None for a line longer than `max_bytes`, never
    read whole into memory."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(max_bytes + 1):
            number += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield number, None
            elif raw.strip():
                yield number, raw


def read_conversations(source: Source, cleaner: Cleaner) -> tuple[list[dict], list[dict]]:
    """Every line of one source: the rows kept (unsplit) and those dropped, with their reason."""
    kept, dropped = [], []
    for number, raw in lines(Path(source.location or source.path), 8 * cleaner.config.max_chars + 4096):
        where = {
            "id": document_id(source.sha256, source.copy, f"line {number}"),
            "source": source.path,
            "source_sha256": source.sha256,
            "line": number,
        }
        verdict = _conversation(raw, cleaner)
        if isinstance(verdict, str):
            text = "" if raw is None else raw.decode("utf-8", "replace")[:DROPPED_TEXT_CHARS]
            dropped.append({**where, "reason": verdict, "text": redact(text)[0]})
        else:
            messages, fmt, pii = verdict
            meta = json.dumps({"pii": pii} if pii else {})
            kept.append({**where, "messages": messages, "format": fmt, "meta": meta})
    return kept, dropped


def _conversation(raw: bytes | None, cleaner: Cleaner) -> tuple[list[dict], str, dict] | str:
    if raw is None:
        return "too_long"
    try:
        record = json.loads(raw)
    except ValueError:
        return "invalid_json"
    parsed = messages_of(record)
    if isinstance(parsed, str):
        return parsed
    messages, fmt = parsed
    checked = check_turns(messages)
    if isinstance(checked, str):
        return checked
    cleaned = cleaner.conversation(checked)
    if isinstance(cleaned, str):
        return cleaned
    return cleaned[0], fmt, cleaned[1]


# ------------------------------------------------------------------ the stage


def curate_chat(
    sources: list[Path],
    workdir: Path,
    name: str | None = None,
    config: ChatConfig | None = None,
    force: bool = False,
) -> Artifact:
    """Curate JSON-lines conversations into a chat corpus artifact under `<workdir>/chat/<name>`."""
    from autarky.data.curate import assign_splits

    config = config or ChatConfig()
    config.validate()
    found, skipped, errors = find_sources([Path(s) for s in sources])
    skipped += [{"path": s.path, "reason": "not JSON lines (.jsonl)"} for s in found if not _is_jsonl(s)]
    found = [s for s in found if _is_jsonl(s)]
    if not found:
        raise UserError(
            f"no .jsonl file among {', '.join(map(str, sources))}; a chat file holds one conversation per line"
        )
    entries = [{"path": s.path, "sha256": s.sha256, "bytes": s.bytes} for s in found]
    recipe = asdict(config)
    name = name or default_name(_name_prefix(sources), "chat", recipe, [], entries)
    builder = Builder(Path(workdir), "chat", name, recipe, sources=entries)
    if (old := builder.existing(force)) is not None:
        console.print(
            f"chat corpus [bold]{name}[/] is already made from these files and settings: reusing it"
        )
        return old
    cleaner, kept, dropped = Cleaner(config), [], []
    for entry, source in zip(entries, found, strict=True):
        try:
            rows, gone = read_conversations(source, cleaner)
        except OSError as e:
            errors.append({"path": source.path, "reason": f"cannot read: {e.strerror or e}"})
            rows, gone = [], []
        entry["conversations"] = len(rows) + len(gone)
        kept += rows
        dropped += gone
    if config.exact_dedup:
        kept = _dedup(kept, dropped)
    per_source = Counter(row["source"] for row in kept)
    for entry in entries:
        entry["documents"] = per_source[entry["path"]]  # the conversations kept, as lineage counts them
    if not kept:
        reasons = Counter(d["reason"] for d in dropped)
        raise UserError(
            f"none of the {len(dropped)} conversations in {', '.join(map(str, sources))} can be learnt from "
            f"({', '.join(f'{n} {r}' for r, n in reasons.most_common())}); each line needs user and assistant "
            "turns in order, ending with the assistant"
        )
    hashes = [text_hash(json.dumps(row["messages"], ensure_ascii=False)) for row in kept]
    val = assign_splits(hashes, np.ones(len(kept), dtype=bool), config.val_fraction)
    for row, to_val in zip(kept, val, strict=True):
        row["split"] = "val" if to_val else "train"
    with builder:
        for split in ("train", "val"):
            _write(
                builder.dir / "shards" / f"{split}-00000.parquet",
                [r for r in kept if r["split"] == split],
                SCHEMA,
            )
        _write(builder.dir / "dropped" / "dropped-00000.parquet", dropped, DROPPED_SCHEMA)
        builder.metrics = _metrics(kept, dropped, errors, skipped)
        return builder.finish()


def _name_prefix(sources: list[Path]) -> str:
    """A one-file corpus is named after the file, any other after curate's rule; `-chat` ends it."""
    from autarky.data.curate import name_prefix

    first = Path(sources[0])
    prefix = name_prefix(sources)
    if len(sources) == 1 and first.is_file():
        prefix = re.sub(r"[^a-z0-9_-]+", "-", first.stem.lower()).strip("-") or prefix
    return prefix if prefix.endswith("chat") else f"{prefix}-chat"


def _is_jsonl(source: Source) -> bool:
    return source.path.lower().endswith(SUFFIXES)


def _dedup(kept: list[dict], dropped: list[dict]) -> list[dict]:
    seen, unique = set(), []
    for row in kept:
        key = text_hash(json.dumps(row["messages"], ensure_ascii=False))
        if key in seen:
            text = json.dumps({"messages": row["messages"]}, ensure_ascii=False)[:DROPPED_TEXT_CHARS]
            dropped.append(
                {k: row[k] for k in ("id", "source", "source_sha256", "line")}
                | {"reason": "duplicate", "text": text}
            )
        else:
            seen.add(key)
            unique.append(row)
    return unique


def _write(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path, compression="zstd", row_group_size=1024)


def _metrics(kept: list[dict], dropped: list[dict], errors: list, skipped: list) -> dict:
    reasons = Counter(d["reason"] for d in dropped)
    splits = Counter(r["split"] for r in kept)
    redacted = Counter()
    for row in kept:
        redacted.update(json.loads(row["meta"]).get("pii", {}))
    return {
        "conversations_in": len(kept) + len(dropped),
        "conversations_kept": len(kept),
        "conversations_dropped": len(dropped),
        "dropped": dict(reasons.most_common()),
        "splits": {"train": splits["train"], "val": splits["val"]},
        "formats": dict(Counter(r["format"] for r in kept)),
        "messages": sum(len(r["messages"]) for r in kept),
        "assistant_turns": sum(m["role"] == "assistant" for r in kept for m in r["messages"]),
        "chars": sum(len(m["content"]) for r in kept for m in r["messages"]),
        "redacted": dict(sorted(redacted.items())),  # in the conversations kept
        "errors": errors[:MAX_LISTED],
        "skipped": skipped[:MAX_LISTED],
    }


# ------------------------------------------------------------------ reading a chat corpus


def iter_conversations(chat: Artifact | Path, split: str) -> Iterator[list[dict]]:
    """The messages of each conversation of a split, in file order."""
    root = chat.path if isinstance(chat, Artifact) else Path(chat)
    for path in sorted((root / "shards").glob(f"{split}-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["messages"]):
            for row in batch.to_pylist():
                yield row["messages"]


def count_conversations(chat: Artifact | Path, split: str) -> int:
    root = chat.path if isinstance(chat, Artifact) else Path(chat)
    return sum(
        pq.ParquetFile(p).metadata.num_rows for p in sorted((root / "shards").glob(f"{split}-*.parquet"))
    )
