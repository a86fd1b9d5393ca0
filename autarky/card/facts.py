"""Facts every card document states, read once from the manifests: sizes, steps, metrics, architecture."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath

from autarky.artifact import Artifact
from autarky.card import Lineage, imported, recorded

STAGES = {
    "corpus": "curate",
    "tokenizer": "tokenizer",
    "tokens": "tokenize",
    "model": "train",
    "eval": "eval",
    "chat": "curate-chat",
    "tasks": "eval",  # the built-in suite, made by `eval --corpus`
}


def stage_of(a: Artifact) -> str:
    """The verb that made an artifact."""
    if a.kind == "model" and imported(a):
        return "import"
    if a.kind == "model" and "lora_rank" in a.config:
        return "sft"
    return STAGES.get(a.kind, a.kind)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def short(digest: str | None) -> str:
    return (digest or "?").removeprefix("sha256:")[:12]


def label(a: Artifact) -> str:
    return f"{a.kind}/{a.name}"


@dataclass(frozen=True)
class Metric:
    name: str  # bits_per_byte, acc, …
    value: float
    slice: str  # what it was measured on
    source: str  # the artifact that measured it
    stderr: float | None = None
    chance: float | None = None  # a multiple-choice task's score by guessing


def _leaves(tree, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(tree, bool):
        return
    if isinstance(tree, int | float):
        yield path, float(tree)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, str(key)))


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _task_metrics(task: str, entry: dict, source: str) -> Iterator[Metric]:
    """{metric: value} (with `<metric>_stderr` and the task's `chance` beside them), under `metrics` or bare."""
    values = entry.get("metrics", entry) if isinstance(entry, dict) else {}
    chance = _number(values.get("chance"))
    own = {k: v for k, v in values.items() if not str(k).endswith("_stderr") and k != "chance"}
    for path, value in _leaves(own):
        stderr = _number(values.get(f"{path[0]}_stderr")) if len(path) == 1 else None
        yield Metric(".".join(path), value, task, source, stderr, chance)


def _bpb_metrics(corpus: str, entry, source: str) -> Iterator[Metric]:
    """Overall and per-language bits per byte of one corpus; any other shape, every number in it."""
    if isinstance(entry, dict) and isinstance(entry.get("overall"), dict):
        split = entry.get("split", "val")
        if isinstance(entry["overall"].get("bpb"), int | float):
            yield Metric("bits_per_byte", entry["overall"]["bpb"], f"{corpus} {split}", source)
        for lang, values in (entry.get("by_language") or {}).items():
            if isinstance(values, dict) and isinstance(values.get("bpb"), int | float):
                yield Metric("bits_per_byte", values["bpb"], f"{corpus} {split}, {lang}", source)
        return
    for path, value in _leaves(entry, (corpus,)):
        yield Metric("bits_per_byte", value, " ".join(path), source)


def metrics(lineage: Lineage) -> list[Metric]:
    """Training's held-out loss and bits per byte, then each eval's task metrics and bits per byte."""
    found = []
    model, m = lineage.model, lineage.model.metrics
    held_out = next((f"{label(t)} val split" for t in lineage.model.inputs("tokens")), "held-out split")
    for key, name in (("val_bpb", "bits_per_byte"), ("val_loss", "loss")):
        if isinstance(m.get(key), int | float):
            found.append(Metric(name, m[key], held_out, f"{label(model)} (training)"))
    for evaluation in lineage.evals:
        results = lineage.results.get(evaluation.name, {})
        for task, entry in (results.get("tasks") or {}).items():
            found += _task_metrics(str(task), entry, label(evaluation))
        bpb = results.get("bpb") or {}
        for corpus, entry in bpb.items() if isinstance(bpb, dict) else ():
            found += _bpb_metrics(str(corpus), entry, label(evaluation))
    return found


def counts(data: Artifact) -> tuple[int, int, int, str]:
    """(read, kept, dropped, unit) of a corpus (documents) or a chat corpus (conversations)."""
    unit = "conversations" if data.kind == "chat" else "documents"
    m = data.metrics
    return m.get(f"{unit}_in", 0), m.get(f"{unit}_kept", 0), m.get(f"{unit}_dropped", 0), unit


def pii_applied(data: Artifact) -> bool:
    return "pii" in data.metrics.get("steps", {}) if data.kind == "corpus" else bool(data.config.get("pii"))


def pii_counts(data: Artifact) -> dict[str, int]:
    """{kind: redactions} made by the PII step of a corpus or a chat corpus."""
    if data.kind == "chat":
        return dict(data.metrics.get("redacted") or {})
    stats = data.metrics.get("steps", {}).get("pii", {}).get("stats", {})
    return {k.removeprefix("redacted_"): n for k, n in stats.items() if k.startswith("redacted_")}


def drops(data: Artifact) -> list[tuple[str, str, int]]:
    """(step, reason, count) for every drop, the largest first."""
    dropped = data.metrics.get("dropped") or {}
    rows = [
        (step, reason, n)
        for step, reasons in dropped.items()
        for reason, n in (reasons.items() if isinstance(reasons, dict) else [(step, reasons)])
    ]
    if data.kind == "chat":
        rows = [("curate-chat", reason, n) for _, reason, n in rows]
    return sorted(rows, key=lambda row: -row[2])


def steps_applied(corpus: Artifact) -> list[tuple[str, dict]]:
    """(step, counts) for each curation step that ran, in order, reading included."""
    return [(name, step.get("stats", {})) for name, step in corpus.metrics.get("steps", {}).items()]


def formats(corpus: Artifact) -> dict[str, int]:
    """{file extension: source files}, the commonest first."""
    counts: dict[str, int] = {}
    for s in corpus.manifest.get("sources", []):
        suffix = "".join(PurePath(s["path"]).suffixes[-2:]).lower() or "(none)"
        counts[suffix] = counts.get(suffix, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def training_tokens(lineage: Lineage) -> int | None:
    """Tokens in the train split of every tokens artifact the model came from."""
    counts = [t.metrics.get("train", {}).get("tokens") for t in lineage.of_kind("tokens")]
    return sum(counts) if counts and all(isinstance(n, int) for n in counts) else None


def parameters(lineage: Lineage) -> int | None:
    return recorded(lineage.model, "parameters")


def architecture(config: dict) -> str:
    """One line: the class, depth, width, heads and context of a config.json."""
    if not config:
        return "not recorded (the model has no config.json)"
    name = ", ".join(config.get("architectures") or [config.get("model_type", "?")])
    heads = config.get("num_attention_heads", "?")
    kv = config.get("num_key_value_heads", heads)
    return (
        f"{name}: {config.get('num_hidden_layers', '?')} layers, hidden size {config.get('hidden_size', '?')}, "
        f"{heads} attention heads ({kv} key/value), MLP {config.get('intermediate_size', '?')}, "
        f"vocabulary {config.get('vocab_size', '?')}"
    )


def context(config: dict) -> int | None:
    return config.get("max_position_embeddings")


def producers(artifacts: list[Artifact]) -> list[tuple[str, str, str]]:
    """(kind, name, version) of the software that made the artifacts, each distinct version once."""
    seen: dict[tuple[str, str, str], None] = {}
    for a in artifacts:
        p = a.manifest.get("producer") or {}
        if p.get("autarky"):
            commit = p.get("git_commit")
            seen["application", "autarky", p["autarky"] + (f"+git.{commit[:12]}" if commit else "")] = None
        if p.get("python"):
            seen["platform", "python", p["python"]] = None
        for lib, version in (p.get("libraries") or {}).items():
            seen["library", lib, version] = None
    return list(seen)
