"""training-content-summary.md: the EU AI Office's public summary of training content, filled from the lineage.

It follows the sections of the Commission's template for general-purpose AI models (Article 53(1)(d)
of the AI Act, July 2025): 1 general information (provider, model, modalities and size), 2 the list
of data sources (2.1 public datasets, 2.2 private datasets, 2.3 crawled data, 2.4 user data, 2.5
synthetic data, 2.6 other), 3 data processing (3.1 reservation of rights, 3.2 illegal content, 3.3
other). Sources are filed under section 2 by their corpus tag `source_type`; those without one are
listed for a person to file. The template is the authority: this fills what the lineage knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autarky.artifact import Artifact, write_atomic
from autarky.card import TO_FILL, CardConfig, Lineage, imported_from, tags_of
from autarky.card import facts as f
from autarky.card.readme import table

CATEGORIES = {
    "public": "2.1 Publicly available datasets",
    "licensed": "2.2.1 Datasets commercially licensed by rightsholders or their representatives",
    "private": "2.2.2 Private datasets obtained from other third parties",
    "crawled": "2.3 Data crawled and scraped from online sources",
    "user": "2.4 User data",
    "synthetic": "2.5 Synthetic data",
    "other": "2.6 Other sources of data",
}
CHECK = {True: "[x]", False: "[ ]"}


@dataclass
class Group:
    """The sources of one corpus under one source argument (scope): how many, how large, filed where."""

    corpus: Artifact
    scope: str
    category: str | None
    files: int = 0
    bytes: int = 0
    documents: int = 0


def _scope_of(path: str, scopes: list[str]) -> str:
    """The longest source argument a source path lies under ('' for none)."""
    inside = [s for s in scopes if s and (path == s or path.startswith(s.rstrip("/") + "/"))]
    return max(inside, key=len, default="")


def source_groups(lineage: Lineage) -> list[Group]:
    groups: dict[tuple[str, str], Group] = {}
    for corpus in lineage.training_data:
        types = tags_of(corpus, "source_type")
        scopes = list(corpus.config.get("source_tags", {}))
        for s in corpus.manifest.get("sources", []):
            scope = _scope_of(s["path"], scopes)
            category = types.get(scope, types.get(""))
            key = (corpus.id, scope)
            group = groups.setdefault(key, Group(corpus, scope, category if category in CATEGORIES else None))
            group.files += 1
            group.bytes += s.get("bytes", 0)
            group.documents += s.get("documents", 0)
    return list(groups.values())


def size_range(tokens: int | None) -> str:
    """The template's ranges for text."""
    ranges = {
        "less than 1 billion tokens": tokens is not None and tokens < 10**9,
        "1 billion to 10 trillion tokens": tokens is not None and 10**9 <= tokens <= 10**13,
        "more than 10 trillion tokens": tokens is not None and tokens > 10**13,
    }
    return ", ".join(f"{CHECK[on]} {name}" for name, on in ranges.items())


def dependencies(lineage: Lineage) -> str:
    """The models this one comes from, whose own summaries cover their training content."""
    if origin := imported_from(lineage.model):
        return (
            f"imported from the checkpoint `{origin}`, not trained here: "
            f"its provider's summary covers its training content {TO_FILL}"
        )
    if lineage.base_models:
        base = ", ".join(f"{f.label(b)} (id `{f.short(b.id)}`)" for b in lineage.base_models)
        return f"fine-tuned from {base}; refer to its own summary for its training content"
    return "none: trained from scratch"


def general(lineage: Lineage, config: CardConfig) -> list[str]:
    model = lineage.model
    tokens = f.training_tokens(lineage)
    kept = sum(c.metrics.get("bytes_kept", 0) for c in lineage.corpora)
    documents = sum(c.metrics.get("documents_kept", 0) for c in lineage.corpora)
    languages = lineage.languages
    total = sum(v["bytes"] for v in languages.values()) or 1
    dates = sorted(c.manifest.get("created", "?") for c in lineage.training_data)
    return [
        "## 1. General information",
        "",
        "### 1.1 Provider identification",
        "",
        f"- Provider name and contact details: {config.provider or TO_FILL}{'; contact ' + TO_FILL if config.provider else ''}",
        f"- Authorised representative (a provider established outside the Union): {TO_FILL}",
        "",
        "### 1.2 Model identification",
        "",
        f"- Versioned model name: {model.name}, artifact id `{model.id}`",
        f"- Model dependencies: {dependencies(lineage)}",
        f"- Date of placement on the Union market: {TO_FILL}",
        "",
        "### 1.3 Modalities, overall training data size and other characteristics",
        "",
        f"- Modalities: {CHECK[True]} text, {CHECK[False]} image, {CHECK[False]} audio, {CHECK[False]} video, {CHECK[False]} other",
        f"- Text, training data size: {size_range(tokens)}"
        + (
            f" ({tokens:,} tokens; {documents:,} documents, {f.human_bytes(kept)} of text after curation)"
            if tokens is not None
            else f" {TO_FILL}"
        ),
        f"- Types of content: {TO_FILL} (for example fiction, non-fiction, scientific text, code); source formats: "
        + "; ".join(
            ", ".join(f"{ext} {n}" for ext, n in f.formats(c).items()) for c in lineage.training_data
        ),
        f"- Latest date of data collection: no later than {dates[-1] if dates else TO_FILL} (when the last corpus was "
        "curated); the dates of the source documents themselves are not recorded: " + TO_FILL,
        "- Continuous training on new data: no; a model artifact is fixed once sealed.",
        "- Linguistic characteristics: "
        + (
            ", ".join(f"{lang} {v['bytes'] / total:.1%} of the text" for lang, v in languages.items())
            or TO_FILL
        ),
        "",
    ]


def sources(lineage: Lineage) -> list[str]:
    groups = source_groups(lineage)
    lines = ["## 2. List of data sources", ""]

    def rows(chosen: list[Group]) -> list[tuple]:
        return [
            (
                f.label(g.corpus),
                g.scope or "all sources",
                f"{g.files:,}",
                f.human_bytes(g.bytes),
                f"{g.documents:,}",
            )
            for g in chosen
        ]

    head = ("corpus", "source argument", "files", "size", "documents")
    unfiled = [g for g in groups if g.category is None]
    if unfiled:
        lines += [
            f"{TO_FILL} These sources carry no `source_type` tag; file each under one of 2.1–2.6 "
            "(or curate again with `--tag source_type=public|licensed|private|crawled|user|synthetic|other`):",
            "",
            *table(rows(unfiled), head),
            "",
        ]
    for key, title in CATEGORIES.items():
        chosen = [g for g in groups if g.category == key]
        lines += [f"### {title}", ""]
        if chosen:
            lines += ["Used: yes.", "", *table(rows(chosen), head), ""]
            if key == "crawled":
                lines += [
                    f"Crawler, purpose, behaviour, period of collection and the main domain names: {TO_FILL}",
                    "",
                ]
        else:
            lines += [f"Used: {'no source is tagged so' if not unfiled else TO_FILL}.", ""]
    return lines


def removed(counts: dict) -> int:
    return sum(n for k, n in counts.items() if k.startswith("dropped_"))


def processing(lineage: Lineage) -> list[str]:
    lines = [
        "## 3. Data processing aspects",
        "",
        "### 3.1 Respect of reservation of rights from the text and data mining exception or limitation",
        "",
        "autarky collects nothing itself: it reads only files the operator supplies, with the network cut. "
        f"How the supplied data was obtained, and how reservations of rights (such as robots.txt or other "
        f"machine-readable opt-outs) were respected when it was collected: {TO_FILL}",
        "",
        "### 3.2 Removal of illegal content",
        "",
        "The curation steps that ran, and what each removed:",
        "",
    ]
    for data in lineage.training_data:
        if data.kind == "corpus":
            rows = [(step, f"{c.get('total', 0):,}", f"{removed(c):,}") for step, c in f.steps_applied(data)]
            head = ("step", "documents seen", "documents removed")
        else:
            rows = [(f"{step}: {reason}", f"{n:,}") for step, reason, n in f.drops(data)]
            head = ("step and reason", "conversations removed")
        lines += [f"{f.label(data)}:", "", *table(rows, head), ""]
    lines += [
        f"None of these steps looks for illegal content as such. Measures taken to remove it: {TO_FILL}",
        "",
        "### 3.3 Other information",
        "",
    ]
    for data in lineage.training_data:
        pii = ", ".join(f"{k} {n:,}" for k, n in f.pii_counts(data).items()) or "none found"
        lines.append(
            f"- {f.label(data)}: personal data redacted by pattern before training: {pii}"
            if f.pii_applied(data)
            else f"- {f.label(data)}: personal data was not redacted (the PII step was off)"
        )
    lines += [
        "- Every document read was kept or dropped with a recorded reason; exact and near duplicates removed as above.",
        "- Every source file is named with its sha256 in the corpus manifests, and `autarky lineage --uses FILE` "
        "lists the artifacts a given file went into (for a rights-holder's or a data subject's request).",
        "",
    ]
    return lines


def write_summary(path: Path, lineage: Lineage, config: CardConfig) -> None:
    lines = [
        f"# Public summary of training content: {lineage.model.name}",
        "",
        "Following the European Commission's template for the public summary of training content of "
        "general-purpose AI models (AI Act, Article 53(1)(d), July 2025). Filled from the manifests of the "
        f"model's lineage; each **{TO_FILL}** needs a person before it is published.",
        "",
        *general(lineage, config),
        *sources(lineage),
        *processing(lineage),
    ]
    write_atomic(path, "\n".join(lines))
