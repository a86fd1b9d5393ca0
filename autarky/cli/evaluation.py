"""Verbs that judge and document a model: eval, card, report."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from autarky import artifact
from autarky.card import CardConfig
from autarky.cli import chain
from autarky.cli.chain import JSON_HELP, input_help
from autarky.cli.common import PIPELINE, WORKSPACE, app, workdir_option
from autarky.console import UserError, console, out
from autarky.evaluate.config import EvalConfig, SuiteConfig
from autarky.options import with_config

# ---------------------------------------------------------------- evaluation and report


def _task_refs(values: list[str], workdir: Path) -> list:
    """Each --tasks value as a tasks artifact when it names one, else as a task file or directory."""
    refs = []
    for value in values:
        named = (Path(value), workdir / value, workdir / "tasks" / value)
        if any((p / artifact.MANIFEST).is_file() for p in named):
            refs.append(artifact.resolve(workdir, value, "tasks"))
        elif Path(value).exists():
            refs.append(Path(value))
        else:
            raise UserError(
                f"--tasks {value}: no tasks artifact, task YAML or directory of them by that name"
            )
    return refs


def _print_eval(result: artifact.Artifact, results: dict) -> None:
    m = result.metrics
    table = Table(
        title=f"eval {result.name}", caption="bits per byte on each corpus's val split; tasks zero-shot"
    )
    for column in ("measure", "group", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for corpus, bpb in m["bpb"].items():
        table.add_row(f"bits/byte {corpus}", "all", f"{bpb:.4f}" if bpb is not None else "-")
        for lang, value in m["bpb_by_language"][corpus].items():
            table.add_row("", lang, f"{value:.4f}" if value is not None else "-")
    for task, metrics in m["tasks"].items():
        for metric, value in metrics.items():
            if not metric.endswith("_stderr"):
                table.add_row(task, metric, f"{value:.4f}")
    out.print(table)
    for sample in results["samples"]:
        out.print(f"[dim]sample:[/] [bold]{escape(sample['prompt'])}[/]{escape(sample['completion'])}")
    out.print(
        f"eval {chain.shown(result.path)}  (results.json, samples/, eval.png)", markup=False, soft_wrap=True
    )


def _print_compare(workdir: Path, plot: Path | None) -> None:
    from autarky.evaluate.stage import compare, plot_compare

    measures, rows = compare(workdir)
    if not rows:
        console.print(
            f"{workdir} holds no eval artifacts yet; [bold]autarky eval MODEL --corpus C[/] makes one"
        )
        return
    table = Table(
        title=f"every evaluated model in {workdir}", caption="bpb: lower is better; tasks: acc or exact match"
    )
    for column in ("model", "eval", *measures):
        table.add_column(column, justify="left" if column in ("model", "eval") else "right")
    for r in rows:
        values = [f"{r['scores'][m]:.4f}" if m in r["scores"] else "-" for m in measures]
        table.add_row(r["model"], r["eval"], *values)
    out.print(table)
    plot = plot or workdir / "eval-compare.png"
    plot_compare(measures, rows, plot)
    out.print(f"chart: {plot}", markup=False, soft_wrap=True)


@app.command("eval", rich_help_panel=PIPELINE)
@with_config(SuiteConfig, "suite_config")
@with_config(EvalConfig)
def eval_command(
    ctx: typer.Context,
    model: str = typer.Argument(None, help=input_help("model", " (not needed with --compare)")),
    corpus: list[str] = typer.Option(
        [],
        "--corpus",
        help="A corpus whose val split is scored for bits per byte, per source and language. Repeatable.",
    ),
    tasks: list[str] = typer.Option(
        [],
        "--tasks",
        help="A tasks artifact, an lm-eval task YAML (with its JSONL) or a directory of them. Repeatable.",
    ),
    suite: bool = typer.Option(
        True,
        "--suite/--no-suite",
        help="Also make the built-in tasks from each --corpus (next sentence, cloze) and score them.",
    ),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Print every evaluated model in the workspace side by side, and chart them to --plot.",
    ),
    plot: Path = typer.Option(
        None, "--plot", help="Where --compare writes its chart (default: <workdir>/eval-compare.png)."
    ),
    name: str = typer.Option(None, "--name", help="Artifact name (default: eval-<model>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " results.json is under results."),
    config: EvalConfig = None,
    suite_config: SuiteConfig = None,
) -> None:
    """Score a model: bits per byte on held-out text, multiple-choice and generation tasks, fixed-prompt samples.

    Tasks are lm-evaluation-harness YAML files read from disk; --corpus also makes a built-in suite
    (Russian and English next-sentence and cloze choice) from that corpus's held-out text.

    Example: [bold]autarky eval latest --corpus latest --limit 100[/]
    """
    if compare:
        _print_compare(workdir, plot)
        return
    from autarky.evaluate.stage import evaluate

    workdir, [judged] = chain.inputs(ctx, workdir, (model, "model"))
    result = evaluate(
        judged,
        workdir,
        corpora=[artifact.resolve(workdir, c, "corpus") for c in corpus],
        tasks=_task_refs(tasks, workdir),
        config=config,
        suite=suite_config if suite else None,
        name=name,
        force=force,
    )
    results = json.loads((result.path / "results.json").read_text())
    if not as_json:
        _print_eval(result, results)
    chain.finish(result, workdir, [["card", judged.name]], as_json, results=results)


@app.command("card", rich_help_panel=PIPELINE)
@with_config(CardConfig)
def card_command(
    ctx: typer.Context,
    model: str = typer.Argument(None, help=input_help("model")),
    name: str = typer.Option(None, "--name", help="Artifact name (default: <model>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    config: CardConfig = None,
) -> None:
    """Write a model card, a CycloneDX ML-BOM and the EU training-content summary from the model's lineage.

    The card's inputs are the model and every eval of it in the workspace; a lineage that does not
    verify gets no card. What no manifest can tell is marked "to fill in", for a person.

    Example: [bold]autarky card latest --provider "Example Ltd" --license apache-2.0[/]
    """
    from autarky.card import card

    workdir, [described] = chain.inputs(ctx, workdir, (model, "model"))
    result = card(described, workdir, config, name=name, force=force)
    if not as_json:
        left = result.metrics.get("to_fill_in", {})
        for f in ("README.md", "bom.cdx.json", "training-content-summary.md"):
            note = f"  [yellow]{left[f]} field(s) for a person to fill in[/]" if left.get(f) else ""
            out.print(f"  {escape(chain.shown(result.path / f))}{note}", soft_wrap=True)
        m = result.metrics
        out.print(
            f"card {chain.shown(result.path)}: {m.get('evals', 0)} eval(s), BOM {m.get('serial_number')}",
            markup=False,
            soft_wrap=True,
        )
    chain.finish(result, workdir, [["serve", described.name]], as_json)


@app.command(rich_help_panel=WORKSPACE)
def report(
    ctx: typer.Context,
    model: str = typer.Argument(None, help=input_help("model")),
    name: str = typer.Option(None, "--name", help="Artifact name (default: report-<model>-<recipe hash>)."),
    workdir: Path = workdir_option(),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact of the same name."),
) -> None:
    """One page on a model from its manifests: curation counts, tokenizer fertility, training curve, evaluations.

    Written as a report artifact (report.md and its PNG charts) and printed.

    Example: [bold]autarky report latest[/]
    """
    from rich.markdown import Markdown

    from autarky.evaluate.report import make_report

    workdir, [described] = chain.inputs(ctx, workdir, (model, "model"))
    result = make_report(described, workdir, name=name, force=force)
    out.print(Markdown((result.path / "report.md").read_text(encoding="utf-8")))
    out.print(f"report {chain.shown(result.path)}  (report.md and its charts)", markup=False, soft_wrap=True)


# --help lists the verbs in the order a user meets them, whatever order they are defined in above.
