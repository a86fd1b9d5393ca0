"""README.md: a model card with the Hugging Face metadata header, written from the model's lineage."""

from __future__ import annotations

import json
from pathlib import Path

from autarky.artifact import Artifact, write_atomic
from autarky.card import TO_FILL, CardConfig, Lineage, imported_from, tags_of
from autarky.card import facts as f

# Licence ids the Hugging Face Hub knows; any other licence is written as `other` with its name.
HF_LICENSES = {
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0",
    "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "mpl-2.0", "openrail",
    "llama2", "llama3", "llama3.1", "llama3.2", "gemma", "unlicense", "pddl", "odc-by", "unknown",
}  # fmt: skip


def yaml_lines(value, indent: int = 0) -> list[str]:
    """Block YAML for the header: mappings, lists and scalars (strings as JSON, which YAML reads as is)."""
    pad, lines = "  " * indent, []
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        lead = f"{pad}{key}:" if key is not None else f"{pad}-"
        if isinstance(item, dict | list) and item:
            nested = yaml_lines(item, indent + 1)
            if key is None and isinstance(item, dict):  # `- first: …` then the rest under it
                lines += [f"{lead} {nested[0].lstrip()}", *nested[1:]]
            else:
                lines += [lead, *nested]
        else:
            lines.append(f"{lead} {json.dumps(item, ensure_ascii=False)}")
    return lines


def header(lineage: Lineage, config: CardConfig) -> dict:
    """The Hugging Face metadata: language, licence, datasets (artifact ids), base model, metrics."""
    meta: dict = {"language": list(lineage.languages) or [TO_FILL]}
    licence = lineage.model_license(config.license) or "unknown"
    meta["license"] = licence.lower() if licence.lower() in HF_LICENSES else "other"
    if meta["license"] == "other":
        meta["license_name"] = licence
    meta.update(library_name="transformers", pipeline_tag="text-generation")
    meta["tags"] = ["autarky", lineage.model_config.get("model_type", "llama")]
    meta["datasets"] = [c.id for c in lineage.training_data]
    base = [imported_from(b) or b.name for b in lineage.base_models]
    if origin := imported_from(lineage.model):
        base.insert(0, origin)
    if base:
        meta["base_model"] = base
    groups: dict[tuple[str, str], list[dict]] = {}
    for m in f.metrics(lineage):
        groups.setdefault((m.slice, m.source), []).append({"type": m.name, "value": round(m.value, 6)})
    results = [
        {
            "task": {"type": "text-generation"},
            "dataset": {"name": slice_, "type": slice_},
            "metrics": values,
            "source": {"name": source},
        }
        for (slice_, source), values in groups.items()
    ]
    if results:
        meta["model-index"] = [{"name": lineage.model.name, "results": results}]
    return meta


def number(value) -> str:
    """Integers with thousands separators, other numbers to four significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def table(rows: list[tuple], head: tuple) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def model_details(lineage: Lineage, config: CardConfig) -> list[str]:
    model, hf = lineage.model, lineage.model_config
    tok = lineage.tokenizer
    tokenizer = (
        f"{f.label(tok)} ({tok.config.get('type', 'tokenizer')}, {tok.metrics.get('vocab_size', '?')} tokens)"
        if tok
        else "the model directory's own"
    )
    params = f.parameters(lineage)
    rows = [
        ("developed by", config.provider or TO_FILL),
        ("model type", "causal language model (decoder-only transformer), text in, text out"),
        ("architecture", f.architecture(hf)),
        ("parameters", f"{params:,}" if isinstance(params, int) else "not recorded"),
        ("context", f"{f.context(hf) or '?'} tokens"),
        ("tokenizer", tokenizer),
        (
            "licence",
            lineage.model_license(config.license) or f"{TO_FILL} (no licence is recorded in the lineage)",
        ),
        ("training data licence", lineage.data_license() or TO_FILL),
        ("made by", f"`autarky {f.stage_of(model)}`, {model.manifest.get('created', '?')}"),
        ("artifact", f"{f.label(model)}, id `{model.id}`"),
        ("seal", f"`{model.manifest.get('seal')}`"),
    ]
    if lineage.base_models:
        rows.insert(
            5, ("based on", ", ".join(f"{f.label(b)} (`{f.short(b.id)}`)" for b in lineage.base_models))
        )
    return ["## Model details", "", *table(rows, ("", "")), ""]


def corpus_section(data: Artifact) -> list[str]:
    """One corpus or chat corpus: sources, what was kept and dropped and why, languages, PII, licence."""
    m = data.metrics
    sources = data.manifest.get("sources", [])
    read, kept, dropped, unit = f.counts(data)
    size = f" ({f.human_bytes(m['bytes_kept'])})" if isinstance(m.get("bytes_kept"), int) else ""
    formats = ", ".join(f"{ext} {n}" for ext, n in f.formats(data).items()) or "none"
    lines = [
        f"### {f.label(data)}",
        "",
        f"id `{data.id}`, made by `autarky {f.stage_of(data)}` {data.manifest.get('created', '?')}. "
        f"{len(sources):,} source files (formats: {formats}); {read:,} {unit} read, {kept:,} kept{size}, "
        f"{dropped:,} dropped.",
        "",
    ]
    if languages := m.get("languages"):
        rows = [(lang, f"{v['documents']:,}", f.human_bytes(v["bytes"])) for lang, v in languages.items()]
        lines += [*table(rows, ("language", "documents", "text")), ""]
    if drops := f.drops(data):
        rows = [(step, reason, f"{n:,}") for step, reason, n in drops]
        lines += [*table(rows, ("step", "reason", f"{unit} dropped")), ""]
    pii = f.pii_counts(data)
    lines.append(
        "- Personal data redacted: " + (", ".join(f"{k} {n:,}" for k, n in pii.items()) or "none found")
        if f.pii_applied(data)
        else "- Personal data: **not redacted** (the PII step was off)."
    )
    licenses = ", ".join(f"{v} ({s or 'all sources'})" for s, v in tags_of(data, "license").items())
    lines.append(f"- Licence tags: {licenses or TO_FILL}")
    lines.append(f"- Every source file, with its sha256, is listed in {f.label(data)}/manifest.json.")
    return [*lines, ""]


def training_data(lineage: Lineage) -> list[str]:
    lines = ["## Training data", ""]
    for model in [lineage.model, *lineage.base_models]:
        if origin := imported_from(model):
            lines += [
                f"{f.label(model)} was imported from the checkpoint `{origin}`, not trained here: its training "
                f"data is for its provider's own card and summary to describe. {TO_FILL}",
                "",
            ]
    if not lineage.training_data:
        return [*lines, f"No corpus is recorded in the lineage. {TO_FILL}", ""]
    tokens = f.training_tokens(lineage)
    if tokens is not None:
        lines += [f"{tokens:,} pretraining tokens.", ""]
    for data in lineage.training_data:
        lines += corpus_section(data)
    return lines


def training_procedure(lineage: Lineage) -> list[str]:
    model, m = lineage.model, lineage.model.metrics
    lines = ["## Training procedure", "", "Each stage, in order (`autarky lineage` prints the tree):", ""]
    rows = [
        (
            f"`autarky {f.stage_of(a)}`",
            f.label(a),
            a.manifest.get("created", "?"),
            a.manifest.get("network", "?"),
        )
        for a in lineage.upstream
    ]
    lines += table(rows, ("stage", "artifact", "finished", "network protection")) + [""]
    results = [(k, number(v)) for k, v in m.items() if isinstance(v, int | float | str)]
    if results:
        lines += ["Results of the run:", "", *table(results, ("measure", "value")), ""]
    settings = [(k, f"`{json.dumps(v, ensure_ascii=False)}`") for k, v in model.config.items()]
    lines += [f"Settings of `autarky {f.stage_of(model)}`:", "", *table(settings, ("setting", "value")), ""]
    producer = model.manifest.get("producer") or {}
    libraries = ", ".join(f"{k} {v}" for k, v in (producer.get("libraries") or {}).items())
    lines += [
        f"Software: autarky {producer.get('autarky', '?')} (commit {producer.get('git_commit') or 'unknown'}), "
        f"Python {producer.get('python', '?')}, {libraries}. Platform: {producer.get('platform', '?')}; "
        f"the accelerator is not recorded: {TO_FILL}.",
        "",
    ]
    return lines


def evaluation(lineage: Lineage) -> list[str]:
    lines = ["## Evaluation", ""]
    rows = [
        (
            m.name,
            f"{m.value:.4g}"
            + (f" ± {m.stderr:.2g}" if m.stderr is not None else "")
            + (f" (chance {m.chance:.3g})" if m.chance is not None else ""),
            m.slice,
            m.source,
        )
        for m in f.metrics(lineage)
    ]
    if rows:
        lines += table(rows, ("metric", "value", "measured on", "by")) + [""]
    if not lineage.evals:
        lines += [
            "No eval artifact of this model is in the workspace: the figures above are training's own "
            f"held-out measure. `autarky eval {lineage.model.name}` adds more; run `autarky card` again after.",
            "",
        ]
    return lines


def uses_and_limits(lineage: Lineage) -> list[str]:
    languages = ", ".join(lineage.languages) or "unknown"
    tokens = f.training_tokens(lineage)
    return [
        "## Intended use and limitations",
        "",
        f"- Intended use: {TO_FILL} (who may use it, for what).",
        f"- Out of scope: {TO_FILL} (uses the provider rules out).",
        f"- Languages: trained on {languages} text only; other languages will be poor.",
        f"- Scale: {tokens:,} training tokens." if tokens is not None else "- Scale: not recorded.",
        "- It continues text; it can state falsehoods fluently and must not be relied on for facts.",
        "- Personal data was redacted by patterns, which miss some; the training data may still hold some.",
        f"- Bias, risks and their mitigation: {TO_FILL}.",
        "",
    ]


def lineage_table(lineage: Lineage) -> list[str]:
    everything = [*lineage.upstream, *lineage.eval_data, *lineage.evals]
    rows = [(f.label(a), f"`{a.id}`", f"`{a.manifest.get('seal')}`") for a in everything]
    return [
        "## Lineage",
        "",
        *table(rows, ("artifact", "id", "seal")),
        "",
        f"`autarky verify model/{lineage.model.name}`, run in the workspace, re-hashes all of it against these seals.",
        "",
    ]


def write_readme(path: Path, lineage: Lineage, config: CardConfig) -> None:
    params = f.parameters(lineage)
    size = f"{params / 1e6:.1f}M-parameter " if isinstance(params, int) else ""
    languages = ", ".join(lineage.languages) or "unknown-language"
    lines = [
        "---",
        *yaml_lines(header(lineage, config)),
        "---",
        "",
        f"# {lineage.model.name}",
        "",
        f"A {size}causal language model on {languages} text, made with autarky. This card is generated from "
        f"the manifests of its lineage; what they cannot tell is marked **{TO_FILL}** for a person to complete.",
        "",
        *model_details(lineage, config),
        *training_data(lineage),
        *training_procedure(lineage),
        *evaluation(lineage),
        *uses_and_limits(lineage),
        *lineage_table(lineage),
    ]
    write_atomic(path, "\n".join(lines))
