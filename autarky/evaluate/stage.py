"""The eval stage: a model and the data it is scored on → an `eval` artifact.

Its inputs are the model, every corpus scored for bits per byte and every `tasks` artifact (the
built-in suite among them); task files read from elsewhere are its `sources`, hashed like a
corpus's, so `verify`, `lineage` and `lineage --uses` reach them too.

`results.json` (schema `autarky.eval/1`), which the model card reads:

    {"schema": "autarky.eval/1",
     "model": {"name", "id"},
     "bpb": {CORPUS_NAME: {"corpus": {"name", "id"}, "split": "val",
                           "overall":     {"bpb", "bytes", "tokens", "documents"},
                           "by_language": {LANG: {"bpb", "bytes", "tokens", "documents"}},
                           "by_source":   {SOURCE_PATH: {"bpb", "bytes", "tokens", "documents"}}}},
     "tasks": {TASK: {"output_type": "multiple_choice" | "generate_until", "language": LANG | null,
                      "from": "tasks/NAME" | FILE, "n": DOCUMENTS,
                      "metrics": {METRIC: VALUE}}},   # acc, acc_stderr, acc_norm, acc_norm_stderr, chance
                                                      # | exact_match, exact_match_stderr
     "samples": [{"prompt", "completion", "tokens"}]}

The manifest's `metrics` hold the same in brief: `{"bpb": {CORPUS: overall bpb}, "bpb_by_language":
{CORPUS: {LANG: bpb}}, "tasks": {TASK: {METRIC: VALUE}}, "seconds": ...}`. Per-document records
are in `samples/TASK.jsonl`; `eval.png` draws the figures.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from autarky.artifact import Artifact, Builder, default_name, sha256_file, write_json
from autarky.console import UserError, console
from autarky.evaluate.config import EvalConfig, SuiteConfig
from autarky.evaluate.tasks import Task, load_tasks

SCHEMA = "autarky.eval/1"
EVALUATOR = "autarky.evaluate/1"  # bumped whenever what a score means changes


def evaluate(
    model: Artifact,
    workdir: Path,
    corpora: Sequence[Artifact] = (),
    tasks: Sequence[Artifact | Path] = (),
    config: EvalConfig | None = None,
    suite: SuiteConfig | None = None,
    name: str | None = None,
    force: bool = False,
) -> Artifact:
    """Score `model` on each corpus's val split (bits per byte), on every task, and on fixed prompts.

    `tasks` are tasks artifacts, task YAML files or directories of them. With `suite`, the built-in
    tasks are made from each corpus (or reused) and scored as well.
    """
    from autarky.data.corpus import shard_paths

    config = config or EvalConfig()
    config.validate()
    if model.kind != "model":
        raise UserError(f"{model.path} is a {model.kind}; autarky eval scores a model")
    for corpus in corpora:
        if corpus.kind != "corpus":
            raise UserError(f"{corpus.path} is a {corpus.kind}; bits per byte is measured on a corpus")
        if not shard_paths(corpus, "val"):
            raise UserError(f"corpus {corpus.name} has no val split to measure bits per byte on")
    corpora = list({c.path: c for c in corpora}.values())  # each once, in the order given
    task_artifacts = [t for t in tasks if isinstance(t, Artifact)]
    if suite is not None:
        task_artifacts += built_in_tasks(corpora, workdir, suite)
    task_artifacts = list({t.path: t for t in task_artifacts}.values())
    file_tasks = [t for p in tasks if not isinstance(p, Artifact) for t in load_tasks(Path(p))]
    loaded = gather_tasks(task_artifacts, file_tasks)
    if not corpora and not loaded and not config.prompts:
        raise UserError("nothing to evaluate: give --corpus, --tasks or a --prompt")
    sources = [
        {"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size}
        for task in file_tasks
        for f in task.files
    ]
    inputs = [model, *corpora, *task_artifacts]
    recipe = {"evaluator": EVALUATOR, **asdict(config), "suite": asdict(suite) if suite else None}
    name = name or default_name(f"eval-{model.name}", "eval", recipe, inputs, sources)
    builder = Builder(workdir, "eval", name, recipe, inputs, sources)
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing finished eval {done.path}")
        return done
    with builder:
        start = time.perf_counter()
        results = run(model, corpora, loaded, config, builder.dir)
        write_json(builder.dir / "results.json", results)
        plot_results(results, builder.dir / "eval.png")
        builder.metrics = {**summary(results), "seconds": round(time.perf_counter() - start, 2)}
        return builder.finish()


def built_in_tasks(corpora: list[Artifact], workdir: Path, suite: SuiteConfig) -> list[Artifact]:
    """The built-in suite of each corpus; one with too little held-out text is passed over, and said so."""
    from autarky.evaluate.suite import TooLittleText, build_suite

    made = []
    for corpus in corpora:
        try:
            made.append(build_suite(corpus, workdir, suite))
        except TooLittleText as e:
            console.print(f"[yellow]no built-in tasks[/]: {e}")
    return made


def gather_tasks(artifacts: list[Artifact], file_tasks: list[Task]) -> list[tuple[str, Task]]:
    """(where it came from, task) for every task, read and checked before the model is loaded."""
    found: list[tuple[str, Task]] = []
    for a in artifacts:
        if a.kind != "tasks":
            raise UserError(
                f"{a.path} is a {a.kind}; --tasks takes a tasks artifact, a task YAML or a directory"
            )
        found += [(f"tasks/{a.name}", t) for t in load_tasks(a.path)]
    found += [(str(t.files[0]), t) for t in file_tasks]
    taken: set[str] = set()
    for i, (origin, task) in enumerate(found):  # the same task made from two corpora: name each apart
        if task.name in taken:
            found[i] = (origin, dataclasses.replace(task, name=f"{task.name}@{Path(origin).name}"))
        taken.add(found[i][1].name)
    return found


def run(
    model: Artifact, corpora: list[Artifact], tasks: list[tuple[str, Task]], config: EvalConfig, out: Path
) -> dict:
    """Load the model once and score everything; per-document records go to `out/samples/`."""
    from autarky.data.corpus import iter_documents
    from autarky.evaluate.score import bpb_by_group, score_generation, score_multiple_choice
    from autarky.machine import best_device
    from autarky.model import load_pretrained
    from autarky.tokenizer import Tokenizer

    net, tokenizer = load_pretrained(model.path, device=best_device()), Tokenizer.load(model.path)
    results: dict = {"schema": SCHEMA, "model": {"name": model.name, "id": model.id}, "bpb": {}, "tasks": {}}
    for corpus in corpora:
        console.print(f"bits per byte on {corpus.name} (val, up to {config.bpb_tokens:,} tokens)")
        documents = iter_documents(corpus, "val", ("text", "lang", "source"))
        scores = bpb_by_group(net, tokenizer, documents, config.bpb_tokens, config.seq_len, config.batch_size)
        results["bpb"][corpus.name] = {
            "corpus": {"name": corpus.name, "id": corpus.id},
            "split": "val",
            **scores,
        }
    (out / "samples").mkdir(exist_ok=True)
    for origin, task in tasks:
        task = task.limited(config.limit)
        console.print(f"task {task.name}: {len(task.items)} documents")
        if task.output_type == "multiple_choice":
            metrics, records = score_multiple_choice(net, tokenizer, task, config.batch_size)
        else:
            metrics, records = score_generation(net, tokenizer, task)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (out / "samples" / f"{task.name}.jsonl").write_text(lines, encoding="utf-8")
        results["tasks"][task.name] = {
            "output_type": task.output_type,
            "language": task.language,
            "from": origin,
            "n": len(task.items),
            "metrics": metrics,
        }
    results["samples"] = prompt_samples(net, tokenizer, config)
    return results


def prompt_samples(net, tokenizer, config: EvalConfig) -> list[dict]:
    """Each fixed prompt's continuation, seeded, so the same model writes the same sample every time."""
    from autarky.generate import SamplingParams, complete

    samples = []
    for prompt in config.prompts:
        params = SamplingParams(
            temperature=config.temperature, max_tokens=config.sample_tokens, seed=config.seed
        )
        done = complete(net, tokenizer, [tokenizer.bos_id, *tokenizer.encode(prompt)], params)
        samples.append({"prompt": prompt, "completion": done.text, "tokens": len(done.token_ids)})
    return samples


def summary(results: dict) -> dict:
    """The manifest's brief: overall and per-language bits per byte per corpus, each task's metrics."""
    return {
        "bpb": {c: r["overall"]["bpb"] for c, r in results["bpb"].items()},
        "bpb_by_language": {
            c: {k: v["bpb"] for k, v in r["by_language"].items()} for c, r in results["bpb"].items()
        },
        "tasks": {t: r["metrics"] for t, r in results["tasks"].items()},
    }


def headline(metrics: dict) -> dict[str, float]:
    """One number per measure, as a comparison table shows it: `bpb:CORPUS`, `TASK` (acc or exact_match)."""
    row = {f"bpb:{c}": v for c, v in (metrics.get("bpb") or {}).items() if v is not None}
    for task, m in (metrics.get("tasks") or {}).items():
        for key in ("acc", "exact_match", "acc_norm"):
            if key in m:
                row[task] = m[key]
                break
    return row


def plot_results(results: dict, path: Path) -> None:
    """Bits per byte per corpus and language beside each task's score against chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bpb = {
        f"{c}\n{lang}": v["bpb"]
        for c, r in results["bpb"].items()
        for lang, v in {"all": r["overall"], **r["by_language"]}.items()
        if v["bpb"] is not None
    }
    tasks = {t: headline({"tasks": {t: r["metrics"]}})[t] for t, r in results["tasks"].items()}
    chance = [results["tasks"][t]["metrics"].get("chance") for t in tasks]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    axes[0].bar(list(bpb), list(bpb.values()), color="tab:blue")
    axes[0].set_title("bits per byte on held-out text (lower is better)")
    axes[1].bar(list(tasks), list(tasks.values()), color="tab:green", label="score")
    axes[1].scatter(
        [t for t, c in zip(tasks, chance, strict=True) if c],
        [c for c in chance if c],
        color="red",
        marker="_",
        s=400,
        label="chance",
    )
    axes[1].set_ylim(0, 1)
    axes[1].set_title("tasks (acc or exact match)")
    if tasks:
        axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def compare(workdir: Path) -> tuple[list[str], list[dict]]:
    """Every eval in the workspace as a row (eval, model, created, then one number per measure), and
    the measures' names, bits per byte first."""
    from autarky.artifact import list_workspace

    rows = []
    for a in list_workspace(workdir)[0]:
        if a.kind == "eval":
            model = next((i["name"] for i in a.manifest["inputs"] if i["kind"] == "model"), "?")
            rows.append(
                {
                    "eval": a.name,
                    "model": model,
                    "created": a.manifest["created"],
                    "scores": headline(a.metrics),
                }
            )
    measures = sorted({m for r in rows for m in r["scores"]}, key=lambda m: (not m.startswith("bpb:"), m))
    return measures, rows


def plot_compare(measures: list[str], rows: list[dict], path: Path) -> None:
    """One small bar chart per measure, one bar per evaluated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(measures), 3) or 1
    lines = -(-len(measures) // columns) or 1
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3 * lines), dpi=100, squeeze=False)
    labels = [f"{r['model']}\n{r['eval']}" for r in rows]
    for ax, measure in zip(axes.flat, measures, strict=False):
        values = [r["scores"].get(measure, float("nan")) for r in rows]
        ax.bar(range(len(rows)), values, color="tab:blue" if measure.startswith("bpb:") else "tab:green")
        ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=30)
        ax.set_title(measure + (" (lower is better)" if measure.startswith("bpb:") else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(measures) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
