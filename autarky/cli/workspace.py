"""Verbs that look after the workspace: list, verify, trace lineage."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from autarky import artifact
from autarky.cli.common import WORKSPACE, app, human_bytes, workdir_option
from autarky.console import UserError, console

# ---------------------------------------------------------------- workspace verbs


@app.command("ls", rich_help_panel=WORKSPACE)
def ls_command(
    workdir: Path = workdir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for programs."),
) -> None:
    """List the workspace's artifacts.

    Example: [bold]autarky ls -w work[/]
    """
    finished, unfinished = artifact.list_workspace(workdir)
    if as_json:
        print(
            json.dumps(
                [{**a.ref(), "path": str(a.path), "created": a.manifest["created"]} for a in finished],
                indent=2,
            )
        )
        return
    if not finished and not unfinished:
        console.print(f"{workdir} holds no artifacts yet; [bold]autarky demo[/] makes a full set.")
        return
    table = Table(title=f"artifacts in {workdir}")
    for column in ("kind", "name", "id", "created", "size", "inputs"):
        table.add_column(column)
    for a in finished:
        inputs = ", ".join(f"{i['kind']}/{i['name']}" for i in a.manifest.get("inputs", []))
        table.add_row(
            a.kind, a.name, a.id[7:19], a.manifest["created"], human_bytes(artifact.artifact_size(a)), inputs
        )
    for d in unfinished:
        table.add_row(d.parent.name, d.name, "[yellow]unfinished[/]", "", "", "")
    console.print(table)


@app.command(rich_help_panel=WORKSPACE)
def verify(path: Path = typer.Argument(..., help="An artifact directory.")) -> None:
    """Re-hash an artifact and everything upstream; name every mismatch and exit 1 if any.

    Example: [bold]autarky verify work/model/demo[/]
    """
    checked, problems = artifact.verify(path)
    for a in checked:
        console.print(f"checked {a.kind}/{a.name} ({len(a.manifest.get('files', {}))} files)")
    if problems:
        for p in problems:
            console.print(f"[red]MISMATCH[/] {p}")
        console.print(f"[red]{len(problems)} problem(s) found[/]")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {len(checked)} artifact(s) match their manifests")
    console.print(
        f"seal {checked[0].manifest.get('seal')}: record it, and the whole lineage can be checked against it"
    )


@app.command(rich_help_panel=WORKSPACE)
def lineage(
    path: Path = typer.Argument(None, help="An artifact directory (not needed with --uses)."),
    show_all: bool = typer.Option(False, "--all", help="List every source file, not the first ten."),
    uses: str = typer.Option(
        None,
        "--uses",
        help="Instead, list every artifact of the workspace made from this source file (a path, or its sha256).",
    ),
    workdir: Path = workdir_option(),
) -> None:
    """Print the tree from an artifact down to the source files it came from, or (--uses) the reverse.

    --uses answers a deletion or personal-data request: every corpus that read the file, and every
    tokenizer, model, eval and other artifact made from those corpora.

    Example: [bold]autarky lineage work/model/demo[/] or [bold]autarky lineage --uses ~/docs/letter.txt[/]
    """
    if uses is None:
        if path is None:
            raise UserError("name an artifact directory, or a source file with --uses")
        console.print(artifact.lineage(path, max_sources=10**9 if show_all else 10))
        return
    what, match = artifact.source_matcher(uses)
    found = artifact.uses(workdir, match)
    if not found:
        console.print(f"no artifact in {workdir} was made from {what}")
        return
    table = Table(title=f"artifacts in {workdir} made from {what}")
    for column in ("kind", "name", "id", "source as recorded", "documents"):
        table.add_column(column)
    for a, hits in found:
        per_source = (a.metrics.get("sources") or {}) if a.kind == "corpus" else {}
        for hit in hits:
            counts = per_source.get(hit.get("path")) or {}
            read = f"{counts['documents']} read, {counts['kept']} kept" if "kept" in counts else ""
            table.add_row(a.kind, a.name, a.id[7:19], str(hit.get("path")), read)
    console.print(table)
