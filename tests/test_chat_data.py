"""Chat data: both input formats, every conversation kept or dropped with its reason, Parquet that
pyarrow reads in OpenAI's shape, and clear errors for files nothing can be learnt from."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from autarky import artifact
from autarky.console import UserError
from autarky.data.chat import curate_chat, iter_conversations
from autarky.data.config import ChatConfig
from tests.conftest import cli_env


def turn(role: str, content) -> dict:
    return {"role": role, "content": content}


GOOD = [
    {"messages": [turn("user", "What does json.dumps do?"), turn("assistant", "It serialises an object.")]},
    {
        "messages": [
            turn("system", "Answer briefly."),
            turn("user", "Hi"),
            turn("assistant", "Hello."),
            turn("user", "Mail me at ivan.petrov@example.org"),
            turn("assistant", [{"type": "text", "text": "Noted."}]),
        ]
    },
    {"instruction": "Name the module.", "input": "dumps", "output": "json"},
    {"instruction": "Say hi.", "output": "Hi!"},
]
BAD = {
    "unknown_role": {"messages": [turn("user", "Hi"), turn("tool", "42"), turn("assistant", "ok")]},
    "assistant_missing": {"messages": [turn("user", "Hi"), turn("user", "Hello?")]},
    "user_missing": {"messages": [turn("assistant", "I speak first.")]},
    "system_not_first": {"messages": [turn("user", "Hi"), turn("system", "Obey."), turn("assistant", "ok")]},
    "bad_content": {"messages": [turn("user", {"image": "cat.png"}), turn("assistant", "A cat.")]},
    "empty_message": {"messages": [turn("user", "   "), turn("assistant", "ok")]},
    "unknown_format": {"prompt": "Hi", "completion": "Hello"},
    "not_an_object": ["user", "Hi"],
}


def write_jsonl(path, records, extra_lines=()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")


def test_conversations_are_kept_or_dropped_with_a_reason_and_counted(tmp_path):
    source = tmp_path / "chats" / "a.jsonl"
    write_jsonl(source, [*GOOD, GOOD[0], *BAD.values()], extra_lines=["{not json", ""])
    chat = curate_chat([source.parent], tmp_path / "work")
    m = chat.metrics
    assert m["conversations_in"] == len(GOOD) + 1 + len(BAD) + 1  # the blank line is no conversation
    assert m["conversations_kept"] == len(GOOD)
    assert m["dropped"] == {**{r: 1 for r in BAD}, "duplicate": 1, "invalid_json": 1}
    assert m["conversations_kept"] + m["conversations_dropped"] == m["conversations_in"]
    assert m["formats"] == {"messages": 2, "instruction": 2} and m["redacted"] == {"email": 1}
    assert sum(m["splits"].values()) == len(GOOD) and m["splits"]["val"] >= 1
    dropped = pq.read_table(chat.path / "dropped" / "dropped-00000.parquet").to_pylist()
    assert sorted(d["reason"] for d in dropped) == sorted([*BAD, "duplicate", "invalid_json"])
    assert all(d["source"].endswith("a.jsonl") and d["line"] >= 1 for d in dropped)
    assert artifact.verify(chat.path)[1] == []


def test_kept_conversations_are_openai_messages_in_parquet(tmp_path):
    source = tmp_path / "a.jsonl"
    write_jsonl(source, GOOD)
    chat = curate_chat([source], tmp_path / "work")
    rows = {
        json.dumps(r["messages"]): r
        for split in ("train", "val")
        for r in pq.read_table(chat.path / "shards" / f"{split}-00000.parquet").to_pylist()
    }
    instruction = [r for r in rows.values() if r["format"] == "instruction"]
    assert {json.dumps(r["messages"]) for r in instruction} == {
        json.dumps([turn("user", "Name the module.\n\ndumps"), turn("assistant", "json")]),
        json.dumps([turn("user", "Say hi."), turn("assistant", "Hi!")]),
    }
    conversations = [*iter_conversations(chat, "train"), *iter_conversations(chat, "val")]
    assert len(conversations) == len(GOOD)
    redacted = next(c for c in conversations if len(c) == 5)
    assert redacted[0] == turn("system", "Answer briefly.")
    assert redacted[3]["content"] == "Mail me at <EMAIL>" and redacted[4]["content"] == "Noted."


def test_the_split_is_by_content_and_a_rerun_reuses_the_artifact(tmp_path):
    records = [
        {"messages": [turn("user", f"Question {i}?"), turn("assistant", f"Answer {i}.")]} for i in range(200)
    ]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_jsonl(tmp_path / "b" / "b.jsonl", list(reversed(records)))
    a = curate_chat([tmp_path / "a.jsonl"], tmp_path / "work")
    b = curate_chat([tmp_path / "b"], tmp_path / "work")
    split = {s: sorted(map(json.dumps, iter_conversations(a, s))) for s in ("train", "val")}
    assert split == {s: sorted(map(json.dumps, iter_conversations(b, s))) for s in ("train", "val")}
    assert 1 <= len(split["val"]) < 30
    assert curate_chat([tmp_path / "a.jsonl"], tmp_path / "work").id == a.id


def test_a_file_of_only_bad_conversations_is_one_clear_error_and_leaves_nothing(tmp_path):
    source = tmp_path / "bad.jsonl"
    write_jsonl(source, [BAD["unknown_role"], BAD["assistant_missing"], BAD["assistant_missing"]])
    with pytest.raises(UserError, match=r"none of the 3 conversations.*2 assistant_missing, 1 unknown_role"):
        curate_chat([source], tmp_path / "work")
    assert not (tmp_path / "work" / "chat").exists() or not any((tmp_path / "work" / "chat").iterdir())
    out = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "curate-chat", str(source)],
        env=cli_env(tmp_path / "work"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "assistant_missing" in out.stderr and "Traceback" not in out.stderr


def test_a_line_too_long_is_dropped_without_being_read_whole(tmp_path):
    source = tmp_path / "a.jsonl"
    long = {"messages": [turn("user", "x" * 5000), turn("assistant", "ok")]}
    write_jsonl(source, [long, GOOD[0]])
    chat = curate_chat([source], tmp_path / "work", config=ChatConfig(max_chars=100))
    assert chat.metrics["dropped"] == {"too_long": 1} and chat.metrics["conversations_kept"] == 1


def test_the_cli_prints_the_accounting(tmp_path):
    source = tmp_path / "a.jsonl"
    write_jsonl(source, [*GOOD, BAD["unknown_role"]])
    out = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "curate-chat", str(source), "--val-fraction", "0.3", "--json"],
        env=cli_env(tmp_path / "work"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["conversations_kept"] == len(GOOD) and metrics["dropped"] == {"unknown_role": 1}
    finished, _ = artifact.list_workspace(tmp_path / "work")
    assert [a.kind for a in finished] == ["chat"]
