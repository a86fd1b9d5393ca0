"""`autarky VERB`: a thin Typer app. It parses, calls a stage, prints; the stages do the work.

common.py holds the app; each module beside it registers one group of verbs.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from autarky import artifact, offline
from autarky.cli import data, evaluation, models, training, workspace  # noqa: F401  (registers the verbs)
from autarky.cli.common import app
from autarky.console import UserError, console

# --help lists the verbs in the order a user meets them, whatever order they are defined in above.
VERB_ORDER = [
    "demo",
    "curate",
    "curate-chat",
    "tokenizer",
    "tokenize",
    "import",
    "train",
    "sft",
    "generate",
    "chat",
    "serve",
    "export",
    "eval",
    "card",
    "report",
    "ls",
    "show",
    "verify",
    "lineage",
    "rm",
    "gc",
]
app.registered_commands.sort(key=lambda c: VERB_ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    """Entry point: guard the network, run the verb; a user mistake is one red sentence and exit 2."""
    offline.install()
    try:
        app()  # standalone mode: click handles --help, usage errors (exit 2) and exit codes itself
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    except UserError as e:
        # one line, however long (the terminal wraps it, never mid-path), and taken as text, not markup
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


__all__ = ["app", "artifact", "main", "offline"]
