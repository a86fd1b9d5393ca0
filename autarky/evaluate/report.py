"""`autarky report MODEL`: one page gathering every stage's figures, from the manifests alone.

The page walks the model's lineage (corpora, tokenizer, tokens, every model on the way) and adds
each eval of the model found in the workspace: curation counts and drops, personal-data
redactions, languages, tokenizer fertility per language, the training curve and figures, and the
evaluation results. It is a `report` artifact (inputs: the model and those evals) holding
`report.md` and its PNGs, the charts copied from the artifacts that drew them, so `verify` covers it
and a re-run with nothing new reuses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autarky.artifact import Artifact, Builder, default_name, list_workspace
from autarky.console import console

REPORTER = "autarky.report/1"
ORDER = ("corpus", "chat", "tokenizer", "tokens", "model")


def ancestry(model: Artifact) -> list[Artifact]:
    """The model and everything upstream, each once, upstream first (in the pipeline's order)."""
    seen: dict[Path, Artifact] = {}
    pending = [model]
    while pending:
        a = pending.pop()
        if a.path not in seen:
            seen[a.path] = a
            pending += a.inputs()
    rank = {kind: i for i, kind in enumerate(ORDER)}
    return sorted(seen.values(), key=lambda a: (rank.get(a.kind, len(ORDER)), a.manifest["created"], a.name))


def evals_of(model: Artifact, workdir: Path) -> list[Artifact]:
    """Every eval in the workspace made from this very model (by id), oldest first."""
    found = [
        a
        for a in list_workspace(workdir)[0]
        if a.kind == "eval"
        and any(i["kind"] == "model" and i["id"] == model.id for i in a.manifest["inputs"])
    ]
    return sorted(found, key=lambda a: (a.manifest["created"], a.name))


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table, numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], int | float) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value).replace("|", "\\|")


def corpus_section(a: Artifact) -> list[str]:
    m = a.metrics
    lines = [f"## Curation: corpus/{a.name}", ""]
    lines += table(
        ["files read", "could not be read", "documents read", "kept", "dropped", "train", "val", "bytes kept"],
        [[m.get("files_read"), m.get("files_failed"), m.get("documents_in"), m.get("documents_kept"),
          m.get("documents_dropped"), (m.get("splits") or {}).get("train"), (m.get("splits") or {}).get("val"),
          m.get("bytes_kept")]],
    )  # fmt: skip
    drops = [[step, reason, n] for step, rs in (m.get("dropped") or {}).items() for reason, n in rs.items()]
    if drops:
        lines += ["Dropped, by step and reason:", ""] + table(["step", "reason", "documents"], drops)
    redactions = [
        [step, key.removeprefix("redacted_"), n]
        for step, s in (m.get("steps") or {}).items()
        for key, n in (s.get("stats") or {}).items()
        if key.startswith("redacted_")
    ]
    if redactions:
        lines += ["Personal data redacted:", ""] + table(["step", "kind", "redactions"], redactions)
    languages = [[lang, v["documents"], v["bytes"]] for lang, v in (m.get("languages") or {}).items()]
    if languages:
        lines += ["Languages kept:", ""] + table(["language", "documents", "bytes"], languages)
    return lines


def tokenizer_section(a: Artifact) -> list[str]:
    m = a.metrics
    lines = [
        f"## Tokenizer: tokenizer/{a.name}",
        "",
        f"{m.get('vocab_size', '?')} tokens; fertility on the val split:",
        "",
    ]
    rows = [
        [lang, v["documents"], v["bytes_per_token"], v["tokens_per_word"]]
        for lang, v in (m.get("val_by_lang") or {}).items()
    ]
    if m.get("val"):
        rows.append(["all", m["val"]["documents"], m["val"]["bytes_per_token"], m["val"]["tokens_per_word"]])
    return lines + table(["language", "documents", "bytes/token", "tokens/word"], rows)


def tokens_section(a: Artifact) -> list[str]:
    m = a.metrics
    rows = [
        [split, m[split]["documents"], m[split]["tokens"], m[split]["bytes_per_token"]]
        for split in ("train", "val")
        if split in m
    ]
    return [f"## Tokens: tokens/{a.name}", ""] + table(["split", "documents", "tokens", "bytes/token"], rows)


def model_section(a: Artifact, charts: dict[str, Path]) -> list[str]:
    m = a.metrics
    scalars = [[k, v] for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    lines = [f"## Training: model/{a.name}", ""] + table(["figure", "value"], scalars)
    if (a.path / "loss.png").is_file():
        chart = f"training-{a.name}.png"
        charts[chart] = a.path / "loss.png"
        lines += [f"![training curve of {a.name}]({chart})", ""]
    return lines


def other_section(a: Artifact) -> list[str]:
    scalars = [[k, v] for k, v in a.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return [f"## {a.kind}/{a.name}", ""] + (table(["figure", "value"], scalars) if scalars else [])


def eval_section(a: Artifact, charts: dict[str, Path]) -> list[str]:
    m = a.metrics
    lines = [f"## Evaluation: eval/{a.name}", ""]
    rows = [
        [corpus, lang, value]
        for corpus, overall in (m.get("bpb") or {}).items()
        for lang, value in {"all": overall, **(m.get("bpb_by_language") or {}).get(corpus, {})}.items()
    ]
    if rows:
        lines += ["Bits per byte on held-out text (lower is better):", ""] + table(
            ["corpus", "language", "bits/byte"], rows
        )
    rows = [
        [task, metric, value]
        for task, metrics in (m.get("tasks") or {}).items()
        for metric, value in metrics.items()
        if not metric.endswith("_stderr")
    ]
    if rows:
        lines += ["Tasks (zero-shot):", ""] + table(["task", "metric", "value"], rows)
    if (a.path / "eval.png").is_file():
        chart = f"eval-{a.name}.png"
        charts[chart] = a.path / "eval.png"
        lines += [f"![evaluation {a.name}]({chart})", ""]
    return lines


def render(model: Artifact, evals: list[Artifact]) -> tuple[str, dict[str, Path]]:
    """report.md's text, and the charts it shows (file name in the report → the artifact file it copies)."""
    p = model.manifest.get("producer") or {}
    lines = [
        f"# Report: model/{model.name}",
        "",
        f"- id `{model.id}`, seal `{model.manifest.get('seal')}`",
        f"- made {model.manifest['created']} by autarky {p.get('autarky')} (commit {p.get('git_commit')}), "
        f"Python {p.get('python')}, torch {(p.get('libraries') or {}).get('torch')}; network: {model.manifest.get('network')}",
        "",
    ]
    charts: dict[str, Path] = {}
    sections = {"corpus": corpus_section, "tokenizer": tokenizer_section, "tokens": tokens_section}
    upstream = ancestry(model)
    lines += ["## Lineage", ""] + table(
        ["kind", "name", "id", "created"],
        [[a.kind, a.name, a.id[7:19], a.manifest["created"]] for a in upstream],
    )
    for a in upstream:
        if a.kind == "model":
            lines += model_section(a, charts)
        else:
            lines += sections.get(a.kind, other_section)(a)
        if a.kind == "corpus":
            for chart in ("drops.svg", "languages.svg"):
                if (a.path / chart).is_file():
                    charts[f"corpus-{a.name}-{chart}"] = a.path / chart
                    lines += [f"![{chart[:-4]} of {a.name}](corpus-{a.name}-{chart})", ""]
    for e in evals:
        lines += eval_section(e, charts)
    if not evals:
        lines += [
            "## Evaluation",
            "",
            f"No eval of this model yet: `autarky eval {model.name} --corpus CORPUS`.",
            "",
        ]
    return "\n".join(lines), charts


def make_report(model: Artifact, workdir: Path, name: str | None = None, force: bool = False) -> Artifact:
    """The report artifact for `model` and every eval of it now in the workspace (reused if unchanged)."""
    evals = evals_of(model, workdir)
    inputs = [model, *evals]
    recipe = {"reporter": REPORTER}
    name = name or default_name(f"report-{model.name}", "report", recipe, inputs)
    builder = Builder(workdir, "report", name, recipe, inputs)
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing report {done.path}")
        return done
    text, charts = render(model, evals)
    with builder:
        (builder.dir / "report.md").write_text(text, encoding="utf-8")
        for target, source in charts.items():
            shutil.copyfile(source, builder.dir / target)
        builder.metrics = {
            "sections": text.count("\n## "),
            "charts": len(charts),
            "evals": [e.name for e in evals],
        }
        return builder.finish()
