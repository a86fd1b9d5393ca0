"""bom.cdx.json: a CycloneDX 1.6 ML-BOM of a model, its data and the software that made them.

The model is the BOM's subject (`metadata.component`, a `machine-learning-model` with a `modelCard`);
every other artifact of the lineage is a component (corpora and token arrays as `data` with their
files' SHA-256 and, for a corpus, its source files as pedigree ancestors); the software named in the
manifests' `producer` is the formulation's components, and the stages that made each artifact, with
their settings, its workflow. `dependencies` mirror the manifests' inputs. The serial number is
derived from the seals of the model and its evals and the card's settings, so the same lineage
gives the same BOM.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

from autarky import artifact
from autarky.artifact import Artifact, write_atomic
from autarky.card import TO_FILL, CardConfig, Lineage, tags_of
from autarky.card import facts as f

SPEC = "1.6"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:autarky:card")


def serial_number(lineage: Lineage, config: CardConfig) -> str:
    """The same for the same model, evals and settings; different when any of them differs."""
    seals = [a.manifest.get("seal") or a.id for a in (lineage.model, *lineage.evals)]
    key = json.dumps({"seals": seals, "config": asdict(config)}, sort_keys=True)
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, key)}"


def ref(a: Artifact) -> str:
    return f.label(a)


def sha256(digest: str) -> dict:
    return {"alg": "SHA-256", "content": digest.removeprefix("sha256:")}


def props(**values) -> list[dict]:
    """CycloneDX properties in the `autarky:` namespace; values that are not text as JSON."""
    text = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in values.items()}
    return [{"name": f"autarky:{k}", "value": v} for k, v in text.items() if v not in ("", "null")]


def identity(a: Artifact) -> list[dict]:
    m = a.manifest
    return props(id=a.id, seal=m.get("seal"), created=m.get("created"), network=m.get("network"))


def licenses(names: list[str]) -> list[dict]:
    return [{"license": {"name": name}} for name in names]


def files(a: Artifact) -> list[dict]:
    """The artifact's files, each with its SHA-256 as the manifest records it."""
    return [
        {
            "type": "file",
            "name": rel,
            "hashes": [sha256(info["sha256"])],
            "properties": props(bytes=info.get("bytes")),
        }
        for rel, info in sorted(a.manifest["files"].items())
    ]


def software(lineage: Lineage) -> list[dict]:
    """autarky, Python and the libraries that made any artifact of the lineage, as the manifests name them."""
    components = []
    for kind, name, version in f.producers([*lineage.upstream, *lineage.eval_data, *lineage.evals]):
        component = {"type": kind, "bom-ref": f"{name}@{version}", "name": name, "version": version}
        if kind == "library":
            component["purl"] = component["bom-ref"] = f"pkg:pypi/{name}@{quote(version)}"
        components.append(component)
    return components


def software_refs(a: Artifact) -> list[str]:
    return [
        f"{name}@{version}" if kind != "library" else f"pkg:pypi/{name}@{quote(version)}"
        for kind, name, version in f.producers([a])
    ]


def corpus_component(corpus: Artifact, config: CardConfig) -> dict:
    """A corpus or chat corpus: its files, its source files as ancestors, its accounting and PII redactions."""
    m = corpus.metrics
    sources = corpus.manifest.get("sources", [])
    pii = f.pii_counts(corpus)
    read, kept, dropped, unit = f.counts(corpus)
    data = {
        "type": "dataset",
        "name": corpus.name,
        "contents": {
            "properties": props(
                **{f"{unit}_in": read, f"{unit}_kept": kept, f"{unit}_dropped": dropped},
                bytes_kept=m.get("bytes_kept"),
                languages=m.get("languages"),
                dropped=m.get("dropped"),
            )
        },
        "sensitiveData": [f"personal data ({kind}): {n} redacted" for kind, n in pii.items()],
    }
    if config.provider:
        data["governance"] = {"owners": [{"organization": {"name": config.provider}}]}
    ancestors = [
        {
            "type": "file",
            "name": s["path"],
            "hashes": [sha256(s["sha256"])],
            "properties": props(bytes=s.get("bytes")),
        }
        for s in sources
    ]
    component = {
        "type": "data",
        "bom-ref": ref(corpus),
        "name": corpus.name,
        "version": f.short(corpus.id),
        "description": f"{corpus.kind} made by `autarky {f.stage_of(corpus)}` from {len(sources)} source files",
        "data": [data],
        "components": files(corpus),
        "pedigree": {"ancestors": ancestors, "notes": "the source files the corpus was curated from"},
        "properties": identity(corpus),
    }
    if names := sorted(set(tags_of(corpus, "license").values())):
        component["licenses"] = licenses(names)
    return component


def artifact_component(a: Artifact) -> dict:
    """A tokenizer, token arrays, an eval, a base model or any other artifact: its files and identity."""
    data_type = {"tokenizer": "definition", "tokens": "dataset", "tasks": "dataset"}.get(a.kind, "other")
    component = {
        "type": "machine-learning-model" if a.kind == "model" else "data",
        "bom-ref": ref(a),
        "name": a.name,
        "version": f.short(a.id),
        "description": f"{a.kind} made by `autarky {f.stage_of(a)}`",
        "components": files(a),
        "properties": identity(a),
    }
    if a.kind != "model":
        component["data"] = [{"type": data_type, "name": a.name}]
    return component


def model_card(lineage: Lineage) -> dict:
    hf = lineage.model_config
    approach = "supervised" if f.stage_of(lineage.model) == "sft" else "self-supervised"
    datasets = [*lineage.training_data, *[a for a in lineage.eval_data if a.kind != "model"]]
    metrics = [
        {"type": m.name, "value": f"{m.value:.6g}", "slice": f"{m.slice} ({m.source})"}
        for m in f.metrics(lineage)
    ]
    pii = {k: n for c in lineage.training_data for k, n in f.pii_counts(c).items()}
    languages = ", ".join(lineage.languages) or "unknown"
    return {
        "modelParameters": {
            "approach": {"type": approach},
            "task": "text-generation",
            "architectureFamily": "transformer (decoder-only)",
            "modelArchitecture": ", ".join(hf.get("architectures") or [hf.get("model_type", "unknown")]),
            "datasets": [{"ref": ref(d)} for d in datasets],
            "inputs": [{"format": "text"}],
            "outputs": [{"format": "text"}],
        },
        "quantitativeAnalysis": {"performanceMetrics": metrics},
        "considerations": {
            "users": [TO_FILL],
            "useCases": [TO_FILL],
            "technicalLimitations": [
                f"trained on {languages} text only",
                f"context of {f.context(hf) or '?'} tokens",
                "continues text; can state falsehoods fluently",
            ],
            "ethicalConsiderations": [
                {
                    "name": "personal data in the training text",
                    "mitigationStrategy": "pattern-based redaction before training: "
                    + (", ".join(f"{k} {n}" for k, n in pii.items()) or "none found"),
                },
                {"name": f"bias and other risks: {TO_FILL}"},
            ],
        },
    }


def model_component(lineage: Lineage, config: CardConfig) -> dict:
    model, hf = lineage.model, lineage.model_config
    license_name = lineage.model_license(config.license)
    component = {
        "type": "machine-learning-model",
        "bom-ref": ref(model),
        "name": model.name,
        "version": f.short(model.id),
        "description": f"causal language model; {f.architecture(hf)}",
        "components": files(model),
        "modelCard": model_card(lineage),
        "properties": identity(model)
        + props(parameters=f.parameters(lineage), context=f.context(hf), metrics=model.metrics),
    }
    if config.provider:
        component["manufacturer"] = {"name": config.provider}
    if license_name:
        component["licenses"] = licenses([license_name])
    return component


def task(a: Artifact) -> dict:
    """The stage that made `a`, with its settings, as a formulation task."""
    return {
        "bom-ref": f"task:{ref(a)}",
        "uid": a.manifest.get("recipe") or a.id,
        "name": f"autarky {f.stage_of(a)}",
        "taskTypes": ["build"],
        "inputs": [{"resource": {"ref": f"{i['kind']}/{i['name']}"}} for i in a.manifest["inputs"]]
        or [{"parameters": [{"name": "sources", "value": str(len(a.manifest.get("sources", [])))}]}],
        "outputs": [{"type": "artifact", "resource": {"ref": ref(a)}}],
        "timeEnd": a.manifest.get("created"),
        "properties": props(**{f"config.{k}": v for k, v in a.config.items()}),
    }


def formulation(lineage: Lineage, everything: list[Artifact]) -> list[dict]:
    tasks = [task(a) for a in everything]
    return [
        {
            "bom-ref": "formulation",
            "components": software(lineage),
            "workflows": [
                {
                    "bom-ref": f"workflow:{ref(lineage.model)}",
                    "uid": lineage.model.id,
                    "name": f"the autarky stages that made {ref(lineage.model)} and its evaluations",
                    "taskTypes": ["build"],
                    "tasks": tasks,
                    "taskDependencies": [
                        {
                            "ref": f"task:{ref(a)}",
                            "dependsOn": [f"task:{i['kind']}/{i['name']}" for i in a.manifest["inputs"]],
                        }
                        for a in everything
                        if a.manifest["inputs"]
                    ],
                }
            ],
        }
    ]


def build_bom(lineage: Lineage, config: CardConfig) -> dict:
    everything = [*lineage.upstream, *lineage.eval_data, *lineage.evals]
    components = [
        corpus_component(a, config) if a.kind in ("corpus", "chat") else artifact_component(a)
        for a in everything
        if a.path != lineage.model.path
    ]
    dependencies = [
        {
            "ref": ref(a),
            "dependsOn": list(
                dict.fromkeys([f"{i['kind']}/{i['name']}" for i in a.manifest["inputs"]] + software_refs(a))
            ),
        }
        for a in everything
    ]
    producer = artifact.producer()
    metadata = {
        "lifecycles": [{"phase": "build"}],
        "tools": {"components": [{"type": "application", "name": "autarky", "version": producer["autarky"]}]},
        "component": model_component(lineage, config),
        "properties": props(
            card="generated from the manifests of the lineage; fields marked [to fill in] need a person"
        ),
    }
    if config.provider:
        metadata["manufacturer"] = {"name": config.provider}
    return {
        "$schema": f"http://cyclonedx.org/schema/bom-{SPEC}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC,
        "serialNumber": serial_number(lineage, config),
        "version": 1,
        "metadata": metadata,
        "components": components,
        "dependencies": dependencies,
        "formulation": formulation(lineage, everything),
    }


def write_bom(path: Path, lineage: Lineage, config: CardConfig) -> dict:
    bom = build_bom(lineage, config)
    write_atomic(path, json.dumps(bom, indent=2, ensure_ascii=False) + "\n")
    return bom
