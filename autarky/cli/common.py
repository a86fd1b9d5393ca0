"""What every verb shares: the Typer app, its help panels, the network callback, small helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from autarky import __version__, offline
from autarky.console import UserError, console, out

# What a value looks like in help: a kind a user knows, never Python's type (`<int>`, `<list[str]>`).
METAVARS = {"int": "N", "float": "NUMBER"}


class _Argument(TyperArgument):
    """An argument as usage lines write one, `MODEL` or `[MODEL]`, with no type beside it."""

    def display_type_rich(self, ctx: typer.Context) -> None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"


def _plain(params: list) -> list:
    """Help that shows what to type: a flag nothing, a value N, NUMBER, PATH or its flag's name."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument  # the same object, shown differently; it holds no state of its own
            param.metavar = param.metavar or param.name.upper()
        elif isinstance(param, TyperOption) and param.metavar is None:
            element = param.bare_type().removeprefix("list[").removesuffix("]")
            own = param.opts[0].lstrip("-").replace("-", "_").upper()  # --api-key API_KEY, as argparse
            kind = "PATH" if param.type_descriptor.is_path else METAVARS.get(element, own)
            param.metavar = "" if param.is_flag else kind
    return params


class Command(TyperCommand):
    def get_params(self, ctx: typer.Context) -> list:
        return _plain(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: typer.Context) -> list:
        return _plain(super().get_params(ctx))


class App(typer.Typer):
    """The Typer app whose every verb shows its options as a user types them."""

    def command(self, *args, cls: type[TyperCommand] = Command, **kwargs) -> Callable:
        return super().command(*args, cls=cls, **kwargs)


app = App(
    cls=Group,
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="autarky: curate → tokenizer → tokenize → train → generate/chat/serve, offline, every artifact accountable.\n\n"
    "Artifacts live in a workspace (--workdir, or $AUTARKY_WORKDIR, default ./work). Start with [bold]autarky demo[/].",
)

PIPELINE, MODEL, WORKSPACE = "Make artifacts", "Use a model", "Inspect the workspace"
WORKDIR_HELP = "Workspace holding the artifacts ($AUTARKY_WORKDIR, default ./work)."
REACHABLE_VERBS = {"serve"}  # clients outside must reach it, so it stays in the host's network


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autarky {__version__}")
        raise typer.Exit()


@app.callback()
def network(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print autarky's version and exit."
    ),
    isolate: bool = typer.Option(
        None,
        "--isolate/--no-isolate",
        help="Run the verb in a fresh network namespace with loopback only, where the kernel allows it "
        "(default: every verb but serve). The in-process guard is on either way.",
    ),
) -> None:
    """Cut the network before any thread starts: a namespace holds only the thread that enters it.

    Under torchrun (WORLD_SIZE > 1) each process would enter a namespace of its own, where the
    rendezvous and the other ranks are out of reach: the processes stay in the host's network with
    the in-process guard (docs/distributed.md), and only rank 0 prints.
    """
    if torchrun_rank() is not None:
        if torchrun_rank() != 0:
            console.quiet = out.quiet = True
        if isolate:
            raise UserError(
                "--isolate: the processes torchrun starts must reach each other; run torchrun itself "
                "in a namespace (docs/distributed.md) or leave --isolate off"
            )
        return
    if isolate is False or (isolate is None and ctx.invoked_subcommand in REACHABLE_VERBS):
        return
    refused = offline.isolate()
    if refused and isolate:
        raise UserError(f"--isolate: {refused}; --no-isolate runs with the in-process guard alone")


def torchrun_rank() -> int | None:
    """This process's rank among the several torchrun started; None when it runs alone."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    except (KeyError, ValueError):
        return None


def workdir_option() -> Path:
    return typer.Option(Path(os.environ.get("AUTARKY_WORKDIR", "work")), "--workdir", "-w", help=WORKDIR_HELP)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
