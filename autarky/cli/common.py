"""What every verb shares: the Typer app, its help panels, the network callback, small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from autarky import offline
from autarky.console import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="autarky: curate → tokenizer → tokenize → train → generate/chat/serve, offline, every artifact accountable.\n\n"
    "Artifacts live in a workspace (--workdir, or $AUTARKY_WORKDIR, default ./work). Start with [bold]autarky demo[/].",
)

PIPELINE, MODEL, WORKSPACE = "Make artifacts", "Use a model", "Inspect the workspace"
WORKDIR_HELP = "Workspace holding the artifacts ($AUTARKY_WORKDIR, default ./work)."
REACHABLE_VERBS = {"serve"}  # clients outside must reach it, so it stays in the host's network


@app.callback()
def network(
    ctx: typer.Context,
    isolate: bool = typer.Option(
        None,
        "--isolate/--no-isolate",
        help="Run the verb in a fresh network namespace with loopback only, where the kernel allows it "
        "(default: every verb but serve). The in-process guard is on either way.",
    ),
) -> None:
    """Cut the network before any thread starts: a namespace holds only the thread that enters it."""
    if isolate is False or (isolate is None and ctx.invoked_subcommand in REACHABLE_VERBS):
        return
    refused = offline.isolate()
    if refused and isolate:
        raise UserError(f"--isolate: {refused}; --no-isolate runs with the in-process guard alone")


def workdir_option() -> Path:
    return typer.Option(Path(os.environ.get("AUTARKY_WORKDIR", "work")), "--workdir", "-w", help=WORKDIR_HELP)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
